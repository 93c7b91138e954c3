"""benchmarks/_llm_sides.py: the side syntax of bench_llm.py / profile_llm.py (scheme, config options,
lm_head, decode attention) parsed as documented."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import _llm_sides as sides  # noqa: E402


def test_side_options():
    from zqkernels.nn import W4A8Config, W8A8Config

    cfg, head = sides.zq_config("w4a8@alpha=16+lm_head=w8+attn=kernel")
    assert isinstance(cfg, W4A8Config) and cfg.alpha == 16 and cfg.group_size == 128 and head == "w8"
    cfg, head = sides.zq_config("w8a8")
    assert isinstance(cfg, W8A8Config) and head == "skip"
    assert sides.side_attention("w8a8@lm_head=w8+attn=kernel") == "kernel"
    assert sides.side_attention("w8a8@lm_head=w8") is None and sides.side_attention("bf16") is None


def test_modes():
    assert sides.split_mode("w4a8-fp-eager") == ("w4a8-fp", "eager")
    modes = sides.all_modes(["bf16", "w8a8", "ao-int8"], default=True)
    assert "bf16-ro" in modes and "w8a8-ro" not in modes and "ao-int8-compile" in modes
    assert "ao-int8-eager" not in modes


def test_git_commit_takes_zq_commit(monkeypatch):
    """benchmarks/_common.git_commit: ZQ_COMMIT (set when the device's copy has stale git metadata)
    wins over git; without it, a short hash (with -dirty) or "unknown"."""
    import _common

    monkeypatch.setenv("ZQ_COMMIT", "c0ffee1")
    assert _common.git_commit() == "c0ffee1"
    monkeypatch.delenv("ZQ_COMMIT")
    got = _common.git_commit()
    assert got == "unknown" or len(got.split("-")[0]) >= 7


def test_profile_critical_path():
    """profile_llm's span attribution: overlapping (PDL) kernels count only past the frontier, idle
    time goes to the kernel after it, and exposed + gap add up to the span."""
    import profile_llm

    spans = [(0.0, 10.0, "gemm"), (8.0, 12.0, "norm"), (15.0, 16.0, "add"), (15.5, 20.0, "gemm"), (16.0, 18.0, "x")]
    exposed, gap, span = profile_llm.critical_path(spans)
    assert span == 20.0
    assert exposed == {"gemm": 10.0 + 4.0, "norm": 2.0, "add": 1.0, "x": 0.0}
    assert gap == {"gemm": 0.0, "norm": 0.0, "add": 3.0, "x": 0.0}
    assert sum(exposed.values()) + sum(gap.values()) == span
    assert profile_llm.critical_path([]) == ({}, {}, 0.0)
