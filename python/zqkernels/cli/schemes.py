"""--scheme -> quantize_ configs: the only place the CLI maps a scheme name to configs.

The interface is kept small so that it can later be backed by the scheme registry
(``zqkernels.schemes``): SCHEME_HELP (the names and their help text), GROUPED (the schemes that
take --group-size), DEFAULT_GROUP_SIZE, ``check_options`` (which options apply to a scheme) and
``configs`` (quantize_'s config and module_configs). Their ValueError (and a config's TypeError)
carries a message for the user: the CLI prints it as its one-line error.
"""

from __future__ import annotations

from typing import Any, Optional

#: --scheme -> what it is (the help text); "w4/8" is ZeroQuant's mixed W4/8 preset.
SCHEME_HELP: dict[str, str] = {
    "w8a8": "int8 per-token activations x int8 per-channel weights (W8A8Config; fused blocks)",
    "fp8": "FP8 E4M3 activations and per-channel weights (FP8Config)",
    "w4a8": "int4 group-wise weights, integer group scales x int8 activations (W4A8Config)",
    "w4a8-floatscale": "int4 group-wise weights, float group scales x int8 activations (W4A8Config(scale='float'))",
    "w4a8-fp": "FP4 E2M1 group-wise weights x FP8 activations (W4A8FPConfig)",
    "w8a8-group": "int8 group-wise weights x int8 activations (W8A8GroupConfig)",
    "w4/8": "ZeroQuant's W4/8 mixed preset: w4a8 in the MLP (*.mlp.*), w8a8 elsewhere",
}
#: the schemes --group-size applies to
GROUPED = ("w4a8", "w4a8-floatscale", "w4a8-fp", "w8a8-group", "w4/8")
DEFAULT_GROUP_SIZE = 128
_LEVELED = ("w8a8", "w4/8")  # --level: the fused blocks' GEMM precisions


def check_options(scheme: str, group_size_given: bool, level: Optional[str]) -> None:
    """Raise ValueError for an unknown scheme, or --group-size / --level where they do not apply."""
    if scheme not in SCHEME_HELP:
        raise ValueError(f"--scheme must be one of {', '.join(SCHEME_HELP)}; got {scheme!r}")
    if group_size_given and scheme not in GROUPED:
        raise ValueError(f"--group-size applies to the grouped schemes ({', '.join(GROUPED)}), not {scheme!r}")
    if level is not None and scheme not in _LEVELED:
        raise ValueError(f"--level applies to w8a8 and w4/8 (fused blocks), not {scheme!r}")


def configs(scheme: str, group_size: Optional[int], level: Optional[str]) -> tuple[Any, Optional[dict[str, Any]]]:
    """(config, module_configs) for ``quantize_`` / ``gptq``; group_size: None is per channel; level:
    None is int8. A config's own ValueError / TypeError (e.g. a group size it does not support)
    propagates."""
    from .. import nn as zn

    level = level or "int8"
    if scheme == "w8a8":  # fused blocks, with LoRC too (one factor pair per merged GEMM)
        return zn.W8A8Config(level=level), None
    if scheme == "fp8":
        return zn.FP8Config(), None
    if scheme in ("w4a8", "w4a8-floatscale"):
        return zn.W4A8Config(group_size=group_size, scale="int" if scheme == "w4a8" else "float"), None
    if scheme == "w4a8-fp":
        return zn.W4A8FPConfig(group_size=group_size), None
    if scheme == "w8a8-group":
        return zn.W8A8GroupConfig(group_size=group_size), None
    if scheme == "w4/8":  # ZEROQUANT_W4_8 with this group size / level
        w8 = zn.W8A8Config(level=level)
        return w8, {"*.mlp.*": zn.W4A8Config(group_size=group_size), "*": w8}
    raise ValueError(f"--scheme must be one of {', '.join(SCHEME_HELP)}; got {scheme!r}")
