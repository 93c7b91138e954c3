"""``python -m zqkernels bench``: a quick W8A8 benchmark on the GPU (under a minute).

A few LLaMA-7B layer shapes; per shape, microseconds per call of ``int8_gemm`` (int8 operands and
scales in, bf16 out), a ``QLinear`` forward (per-token quantization + GEMM, bf16 in and out),
``torch.matmul`` in bf16 and ``torch._int_mm`` (int32 out, no scales). Each column cycles through
enough independent copies of its inputs to push them out of L2 and is timed as CUDA-graph replays
(median). The full benchmark (more shapes, FP8 row-wise and unfused peers, correctness checks,
per-tile timings, JSON with provenance) is ``benchmarks/bench_w8a8.py`` in the source tree.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any, Callable, Optional

import torch

from . import QLinear, info, int8_gemm

# (M, N, K): decode and prefill token counts on the attention (4096x4096) and fused gate+up
# (22016x4096) projections, and the square compute-bound problem.
SHAPES = [(16, 4096, 4096), (128, 4096, 4096), (2048, 4096, 4096), (16, 22016, 4096), (2048, 22016, 4096)]
SHAPES += [(8192, 8192, 8192)]
COLUMNS = ("int8_gemm", "QLinear", "bf16", "_int_mm")
REPS = 30


def graph_us(calls: list[Callable[[], Any]], reps: int = REPS) -> float:
    """Median microseconds per call: one CUDA graph holding one call of each fn (one per input
    copy), warmed up, then replayed ``reps`` times between CUDA events."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (handles, heuristics, allocations)
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        keep = [c() for c in calls]  # outputs stay alive: each call writes its own buffer
    graph.replay()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)
    ]
    for a, b in events:
        a.record()
        graph.replay()
        b.record()
    torch.cuda.synchronize()
    del keep
    return statistics.median(a.elapsed_time(b) for a, b in events) * 1e3 / len(calls)


def _copies(bytes_per_call: int) -> int:
    """Independent input sets per column: enough to exceed 2.4x the L2 (at least 120 MB)."""
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 50 * 2**20
    return max(2, min(64, math.ceil(max(120e6, 2.4 * l2) / bytes_per_call)))


def _int8(shape: tuple[int, int], dev: str) -> torch.Tensor:
    return torch.randint(-127, 128, shape, dtype=torch.int8, device=dev)


def _scales(n: int, dev: str) -> torch.Tensor:
    return torch.rand(n, device=dev).add_(0.5).mul_(1e-2)


def measure(M: int, N: int, K: int) -> dict[str, Any]:
    """One shape: us per call of every column (``_int_mm`` absent for M <= 16, where torch refuses)."""
    dev = "cuda"
    row: dict[str, Any] = {"M": M, "N": N, "K": K}
    n = _copies(M * K + N * K)
    ops = [(_int8((M, K), dev), _int8((N, K), dev), _scales(M, dev), _scales(N, dev)) for _ in range(n)]
    row["int8_gemm"] = graph_us([lambda o=o: int8_gemm(*o) for o in ops])
    if M > 16:
        row["_int_mm"] = graph_us([lambda o=o: torch._int_mm(o[0], o[1].t()) for o in ops])
    del ops
    n = _copies(2 * M * K + 2 * N * K)
    xw = [
        (
            torch.randn(M, K, dtype=torch.bfloat16, device=dev),
            torch.randn(N, K, dtype=torch.bfloat16, device=dev),
        )
    ]
    xw += [tuple(torch.randn_like(t) for t in xw[0]) for _ in range(n - 1)]
    row["bf16"] = graph_us([lambda x=x, w=w: torch.matmul(x, w.t()) for x, w in xw])
    xq_lins = []
    for x, w in xw[: _copies(2 * M * K + N * K)]:
        lin = torch.nn.Linear(K, N, bias=False, dtype=torch.bfloat16, device=dev)
        lin.weight.copy_(w)
        xq_lins.append((x, QLinear.from_linear(lin)))
    del xw
    row["QLinear"] = graph_us([lambda x=x, q=q: q(x) for x, q in xq_lins])
    del xq_lins
    torch.cuda.empty_cache()
    return row


def _cell(v: Optional[float], fmt: str, width: int) -> str:
    return (format(v, fmt) if v else "-").rjust(width)


def run(
    out_json: Optional[str] = None, shapes: Optional[list] = None, print_fn=print
) -> list[dict[str, Any]]:
    """Measure ``shapes`` (default SHAPES) on cuda:0 and print the table; needs a GPU and the kernels."""
    gpu = torch.cuda.get_device_name(0)
    print_fn(f"zqkernels {info()['version']} W8A8 quick benchmark on {gpu}, torch {torch.__version__}")
    print_fn(
        "us per call, median of CUDA-graph replays, inputs rotated past L2; x: speedup, > 1 = ours faster"
    )
    print_fn(
        f"{'M':>5} {'N':>6} {'K':>6} |"
        + "".join(f"{c:>10}" for c in COLUMNS)
        + " | gemm TOPS  gemm:_int_mm  QLinear:bf16"
    )
    rows = []
    with torch.inference_mode():
        for M, N, K in shapes or SHAPES:
            r = measure(M, N, K)
            g, i8, q, b = (r.get(c) for c in ("int8_gemm", "_int_mm", "QLinear", "bf16"))
            r["gemm_tops"] = 2 * M * N * K / g / 1e6
            r["gemm_vs_int_mm"] = i8 / g if i8 else None
            r["qlinear_vs_bf16"] = b / q
            rows.append(r)
            print_fn(
                f"{M:>5} {N:>6} {K:>6} |"
                + "".join(_cell(r.get(c), ".1f", 10) for c in COLUMNS)
                + f" | {r['gemm_tops']:9.0f} {_cell(r['gemm_vs_int_mm'], '.2f', 12)}x"
                + f" {_cell(r['qlinear_vs_bf16'], '.2f', 12)}x"
            )
    print_fn("The full benchmark (FP8 and unfused peers, checks, more shapes): benchmarks/bench_w8a8.py")
    if out_json:
        doc = {"device": gpu, "torch": torch.__version__, "zqkernels": info()["version"], "rows": rows}
        with open(out_json, "w") as f:
            json.dump(doc, f, indent=1)
        print_fn(f"JSON: {out_json}")
    return rows
