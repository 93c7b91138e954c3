"""--scheme -> quantize_ configs: the only place the CLI maps a scheme name to a config, read from the
scheme registry (``zqkernels.schemes.SCHEMES``): a registered scheme is a --scheme value with its own
description as help, takes --group-size when it has a group_size option, and --level (the fused
blocks' GEMM precisions) like every scheme. One preset is not a single scheme: "w4/8", ZeroQuant's
mixed W4/8 (w4a8 in the MLP, w8a8 elsewhere).

ValueError (and a scheme's TypeError) carries a message for the user: the CLI prints it as its
one-line error.
"""

from __future__ import annotations

from typing import Any, Optional

from ..schemes import SCHEMES, get_scheme

#: presets that combine schemes -> their help
PRESETS: dict[str, str] = {"w4/8": "ZeroQuant's W4/8 mixed preset: w4a8 in the MLP (*.mlp.*), w8a8 elsewhere"}
#: --scheme -> what it is (the help text)
SCHEME_HELP: dict[str, str] = {**{name: cls.description for name, cls in sorted(SCHEMES.items())}, **PRESETS}
#: the schemes --group-size applies to
GROUPED = tuple(name for name, cls in sorted(SCHEMES.items()) if "group_size" in cls.option_names) + ("w4/8",)
DEFAULT_GROUP_SIZE = 128


def check_options(scheme: str, group_size_given: bool) -> None:
    """Raise ValueError for an unknown scheme, or --group-size where it does not apply."""
    if scheme not in SCHEME_HELP:
        raise ValueError(f"--scheme must be one of {', '.join(SCHEME_HELP)}; got {scheme!r}")
    if group_size_given and scheme not in GROUPED:
        raise ValueError(f"--group-size applies to the grouped schemes ({', '.join(GROUPED)}), not {scheme!r}")


def configs(scheme: str, group_size: Optional[int], level: Optional[str]) -> tuple[Any, Optional[dict[str, Any]]]:
    """(config, module_configs) for ``quantize_`` / ``gptq``; group_size: None is per channel; level:
    None is "int8" (every GEMM of a fused block quantized). A scheme's own ValueError / TypeError
    (e.g. a group size it does not support) propagates."""
    from .. import nn as zn

    level = level or "int8"
    check_options(scheme, False)
    if scheme == "w4/8":  # ZEROQUANT_W4_8 with this group size / level
        w8 = zn.SchemeConfig("w8a8", level=level)
        return w8, {"*.mlp.*": zn.SchemeConfig(get_scheme("--scheme w4/8", "w4a8", group_size=group_size)), "*": w8}
    options = {"group_size": group_size} if scheme in GROUPED else {}
    return zn.SchemeConfig(get_scheme(f"--scheme {scheme}", scheme, **options), level=level), None
