"""The sides and modes of bench_llm.py (and profile_llm.py): which quantized copies of the model run,
with which options, and the mode ids <side>-<tag> their timings are filed under.

    bf16                        the model itself
    w8a8 / fp8 / w4a8 / w4a8-fp quantize_ with that scheme's config; options after '@', joined by '+':
                                config fields ('w4a8@alpha=16+group_size=64'), lm_head=w8 / <scheme>
                                (lm_head quantized too; default bf16), attn=<mode> (the fused blocks'
                                decode attention, nn.blocks_base.DECODE_MODES; default the library's)
    ao-int8 / ao-fp8            torchao's int8 / FP8 dynamic quantization of the decoder, compiled
"""

from __future__ import annotations

from typing import Any

ZQ = ("w8a8", "fp8", "w4a8", "w4a8-fp")
AO = ("ao-int8", "ao-fp8")
TAGS = ("eager", "graph", "compile", "ro")


def side_options(side: str) -> tuple[str, dict[str, Any]]:
    """'w4a8@alpha=16+lm_head=w8' -> ('w4a8', {'alpha': 16, 'lm_head': 'w8'}): digits become ints."""
    name, _, opts = side.partition("@")
    return name, {k: int(v) if v.isdigit() else v for k, v in (o.split("=", 1) for o in opts.split("+") if o)}


def zq_config(side: str) -> tuple[Any, str]:
    """(quantize_ config, lm_head choice) of a zqkernels side: 'w4a8', or with options
    'w4a8@alpha=16+group_size=64'; the option lm_head=w8 / scheme quantizes lm_head too (the CLI's
    --lm-head choices; default skip: bf16)."""
    from zqkernels.nn import FP8Config, W4A8Config, W4A8FPConfig, W8A8Config

    name, kw = side_options(side)
    lm_head = str(kw.pop("lm_head", "skip"))
    kw.pop("attn", None)  # side_attention's
    cls = {"w8a8": W8A8Config, "fp8": FP8Config, "w4a8": W4A8Config, "w4a8-fp": W4A8FPConfig}[name]
    return (cls(**{"group_size": 128, **kw}) if name == "w4a8" else cls(**kw)), lm_head


def side_attention(side: str) -> str | None:
    """The fused blocks' one-token attention of a zqkernels side ('w8a8@attn=kernel': one of
    nn.blocks_base.DECODE_MODES; None: the library's default), set while that side runs."""
    attn = side_options(side)[1].get("attn")
    return None if attn is None else str(attn)


def side_tags(side: str) -> tuple[str, ...]:
    return ("compile", "ro") if side in AO else TAGS


def all_modes(sides: list[str], default: bool = False) -> list[str]:
    """Mode ids <side>-<tag>; default: without the zqkernels / torchao -ro modes."""
    return [f"{s}-{t}" for s in sides for t in side_tags(s) if not (default and t == "ro" and s != "bf16")]


def split_mode(mode: str) -> tuple[str, str]:
    """'w4a8-fp-eager' -> ('w4a8-fp', 'eager')."""
    side, _, tag = mode.rpartition("-")
    return side, tag
