"""--scheme -> quantize_ configs: the only place the CLI maps a scheme name to a config, read from the
scheme registry (``zqkernels.schemes.SCHEMES``): a registered scheme is a --scheme value with its own
description as help, takes --group-size when it has a group_size option, takes --FLAG for each of its
options with a small fixed set of values (CHOICE_OPTIONS: --scale-policy), and --level (the fused
blocks' GEMM precisions) like every scheme. One preset is not a single scheme: "w4/8", ZeroQuant's
mixed W4/8 (w4a8 in the MLP, w8a8 elsewhere).

Without --group-size a grouped scheme gets group_size "auto" (``schemes.grouped.AUTO``): each layer
the largest of 128 / 64 / 32 its shape takes, resolved by the scheme object (``for_layer``).

ValueError (and a scheme's TypeError) carries a message for the user: the CLI prints it as its
one-line error.
"""

from __future__ import annotations

from typing import Any, Optional

from ..schemes import SCHEMES, get_scheme
from ..schemes.grouped import AUTO
from ..schemes.w4a8_fp import POLICIES

#: presets that combine schemes -> their help
PRESETS: dict[str, str] = {"w4/8": "ZeroQuant's W4/8 mixed preset: w4a8 in the MLP (*.mlp.*), w8a8 elsewhere"}
#: --scheme -> what it is (the help text)
SCHEME_HELP: dict[str, str] = {**{name: cls.description for name, cls in sorted(SCHEMES.items())}, **PRESETS}
#: scheme options with a small fixed set of values, each exposed as --OPTION-NAME {values} for the
#: schemes whose option_names have it (the values: the scheme module's own list; default: the scheme's)
CHOICE_OPTIONS: dict[str, tuple[str, ...]] = {"scale_policy": POLICIES}
#: the schemes --group-size applies to
GROUPED = tuple(name for name, cls in sorted(SCHEMES.items()) if "group_size" in cls.option_names) + ("w4/8",)
DEFAULT_GROUP_SIZE = AUTO  # per layer: the largest of 128 / 64 / 32 it takes
#: --lm-head values -> what they do (the help). quantize_ leaves a Linear named lm_head (and one whose
#: weight is an input embedding's) in float unless a module_configs pattern selects it: these do.
LM_HEAD: dict[str, str] = {
    "skip": "lm_head stays in float (default)",
    "w8": "lm_head gets per-channel int8 weights with per-token int8 activations (the w8a8 scheme), whatever --scheme is",
    "scheme": "lm_head gets the model's scheme (for w4/8: its w8a8 part)",
}
#: the module names --lm-head selects (fnmatch, as quantize_'s own default-float rule: the last name part)
LM_HEAD_PATTERNS = ("lm_head", "*.lm_head")


def flag(option: str) -> str:
    """The command-line flag of a scheme option: "scale_policy" -> "--scale-policy"."""
    return "--" + option.replace("_", "-")


def taking(option: str) -> tuple[str, ...]:
    """The --scheme values that take `option` (a CHOICE_OPTIONS key): the registered schemes with it."""
    return tuple(name for name, cls in sorted(SCHEMES.items()) if option in cls.option_names)


def option_default(option: str) -> Any:
    """The default value of `option` (the first scheme taking it, built without options), or None."""
    for name in taking(option):
        try:
            return SCHEMES[name]().options().get(option)
        except (ValueError, TypeError):
            continue
    return None


def check_options(scheme: str, group_size_given: bool, given: Optional[dict[str, Any]] = None) -> None:
    """Raise ValueError for an unknown scheme, or --group-size / a CHOICE_OPTIONS flag where it does
    not apply. given: {option: value or None (not given)} of CHOICE_OPTIONS."""
    if scheme not in SCHEME_HELP:
        raise ValueError(f"--scheme must be one of {', '.join(SCHEME_HELP)}; got {scheme!r}")
    if group_size_given and scheme not in GROUPED:
        raise ValueError(f"--group-size applies to the grouped schemes ({', '.join(GROUPED)}), not {scheme!r}")
    for option, value in (given or {}).items():
        if value is None:
            continue
        if option not in CHOICE_OPTIONS:
            raise ValueError(f"{flag(option)}: not a scheme option the command line takes")
        schemes = taking(option)
        if scheme not in schemes:
            raise ValueError(f"{flag(option)} applies to the schemes with a {option} option ({', '.join(schemes)}), "
                             f"not {scheme!r}")
        if value not in CHOICE_OPTIONS[option]:
            raise ValueError(f"{flag(option)} must be one of {', '.join(CHOICE_OPTIONS[option])}; got {value!r}")


def configs(
    scheme: str, group_size: Any, level: Optional[str], options: Optional[dict[str, Any]] = None
) -> tuple[Any, Optional[dict[str, Any]]]:
    """(config, module_configs) for ``quantize_`` / ``gptq``; group_size: an int, None (per channel)
    or "auto" (per layer); level: None is "int8" (every GEMM of a fused block quantized); options:
    CHOICE_OPTIONS values (None: the scheme's default). A scheme's own ValueError / TypeError (e.g. a
    group size it does not support) propagates."""
    from .. import nn as zn

    level = level or "int8"
    options = {k: v for k, v in (options or {}).items() if v is not None}
    check_options(scheme, False, options)
    if scheme == "w4/8":  # ZEROQUANT_W4_8 with this group size / level
        w8 = zn.SchemeConfig("w8a8", level=level)
        return w8, {"*.mlp.*": zn.SchemeConfig(get_scheme("--scheme w4/8", "w4a8", group_size=group_size)), "*": w8}
    if scheme in GROUPED:
        options["group_size"] = group_size
    return zn.SchemeConfig(get_scheme(f"--scheme {scheme}", scheme, **options), level=level), None


def auto_group_sizes(config: Any, module_configs: Optional[dict[str, Any]]) -> tuple[int, ...]:
    """The group sizes the configs' "auto" schemes try, largest first (() when none is "auto")."""
    out: set[int] = set()
    for c in [config, *(module_configs or {}).values()]:
        s = c.scheme_object() if c is not None else None
        if getattr(s, "auto", False):
            out.update(s.auto_candidates())
    return tuple(sorted(out, reverse=True))


def group_size_report(model: Any, candidates: tuple[int, ...]) -> Optional[str]:
    """One line: how many quantized GEMMs got each of `candidates` (group_size "auto"), and why the
    smaller ones did not take the larger sizes; None when `candidates` is empty."""
    if not candidates:
        return None
    from ..nn import QLinear

    by_g: dict[int, list[int]] = {g: [] for g in candidates}
    for m in model.modules():
        qs = getattr(m, "qscheme", None) if isinstance(m, QLinear) else None
        g = getattr(qs, "group_size", None)
        if "group_size" in getattr(qs, "option_names", ()) and isinstance(g, int) and g in by_g:
            by_g[g].append(m.in_features)
    parts = []
    for g, ks in by_g.items():
        why = []
        for k in sorted(set(ks)):
            bigger = [c for c in candidates if c > g]
            odd = next((c for c in bigger if k % c != 0), None)
            if bigger:
                why.append(f"{k} % {odd} != 0" if odd is not None else f"{k}: the scheme's layout rules")
        n = len(ks)
        parts.append(f"{g} for {n} GEMM{'s' if n != 1 else ''}" + (f" (in_features {', '.join(why)})" if why else ""))
    return "group size auto (the largest of " + " / ".join(map(str, candidates)) + " each layer takes): " + ", ".join(parts)


def lm_head_configs(choice: str, config: Any) -> dict[str, Any]:
    """module_configs entries for --lm-head `choice` ({} for "skip"); config: the model's config
    (``configs(...)[0]``), which "scheme" gives lm_head."""
    if choice not in LM_HEAD:
        raise ValueError(f"--lm-head must be one of {', '.join(LM_HEAD)}; got {choice!r}")
    if choice == "skip":
        return {}
    from .. import nn as zn

    cfg = zn.SchemeConfig("w8a8") if choice == "w8" else config
    return {p: cfg for p in LM_HEAD_PATTERNS}
