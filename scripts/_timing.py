"""Timing helper shared by the tuning probes in scripts/ (the product benchmark has its own, in
python/zqkernels/_bench.py, with rotation bookkeeping and eager fallbacks)."""

from __future__ import annotations

import statistics

import torch


def time_graph(fns, reps: int = 30) -> float:
    """Capture one call of each fn into a CUDA graph (typically one per rotated input set) and
    return the median time per call in seconds over `reps` replays, after warm-up."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up outside the capture
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    for _ in range(2):
        g.replay()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / len(fns))
    return statistics.median(times)
