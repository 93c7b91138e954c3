"""Host overhead per call: eager launch cost of zqkernels' ops and QLinear against torch's own.

At decode sizes a kernel runs for a few microseconds, so what Python, argument checks and the
dispatcher cost per call decides whether a layer is fast. This times each op eagerly at a tiny
shape (M=32, N=K=256: torch._int_mm needs M > 16, so every op uses 32), as wall time of
``--calls`` back-to-back calls with one synchronize at the end, divided by the calls; the median
of ``--repeats`` rounds, after a warm-up; rows are timed round-robin (one sample per row per round) and ratios are medians of per-round ratios, so host drift hits every row alike. The GPU work per call is far below the host cost, so
this is host time (a row whose kernels were slower than its host path would show the kernel time).

    python benchmarks/bench_overhead.py [--json FILE] [--calls 2000] [--repeats 5] [--device cuda]

Rows: torch._int_mm, torch.matmul bf16, nn.Linear bf16 forward (under torch.no_grad() and under
torch.inference_mode()), zqkernels.quantize_per_token, zqkernels.int8_gemm, QLinear forward (both
modes). Functional ops run in the default (grad-enabled) mode, as a user calls them. Ratios and
targets: int8_gemm / _int_mm <= 1.3, quantize_per_token / _int_mm <= 1.3, QLinear / nn.Linear
<= 1.5 under each mode. Exit status 0 when it ran (targets are reported, not enforced; --strict:
1 when a target is missed), 2 on bad usage or a missing device.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, first_line, write_json  # noqa: E402

M, N, K = 32, 256, 256

# (ratio name, numerator row, denominator row, target: numerator / denominator <= target)
RATIOS = [
    ("int8_gemm / _int_mm", "zq.int8_gemm", "torch._int_mm", 1.3),
    ("quantize_per_token / _int_mm", "zq.quantize_per_token", "torch._int_mm", 1.3),
    ("QLinear / nn.Linear (no_grad)", "QLinear no_grad", "nn.Linear bf16 no_grad", 1.5),
    ("QLinear / nn.Linear (inference_mode)", "QLinear inference_mode", "nn.Linear bf16 inference_mode", 1.5),
]


def host_us_per_call(
    fn: Callable[[], Any], mode: Callable[[], Any], sync: Callable[[], None], calls: int, repeats: int
) -> dict[str, Any]:
    """Median over ``repeats`` of (wall time of ``calls`` calls + one sync) / calls, in us."""
    samples = []
    with mode():
        for _ in range(max(50, calls // 10)):  # warm-up: caches, allocator, lazy init
            fn()
        sync()
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            samples.append((time.perf_counter() - t0) * 1e6 / calls)
    return {"us": statistics.median(samples), "us_min": min(samples), "samples_us": samples}


def build_rows(zq: Any, dev: torch.device) -> list[tuple[str, Callable[[], Any], Callable[[], Any]]]:
    """(name, zero-argument call, grad-mode context factory) per row."""
    g = torch.Generator(device=dev).manual_seed(0)
    xb = torch.randn(M, K, dtype=torch.bfloat16, device=dev, generator=g)
    lin = torch.nn.Linear(K, N, bias=True, dtype=torch.bfloat16, device=dev).eval()
    xq = torch.randint(-127, 128, (M, K), dtype=torch.int8, device=dev, generator=g)
    wq = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=dev, generator=g)
    wq_t = wq.t()
    sx = torch.rand(M, device=dev, generator=g).add_(0.5).mul_(1e-2)
    sw = torch.rand(N, device=dev, generator=g).add_(0.5).mul_(1e-2)
    wb_t = lin.weight.detach().t()
    with torch.no_grad():
        qlin = zq.QLinear.from_linear(lin)
    plain, no_grad, inference = contextlib.nullcontext, torch.no_grad, torch.inference_mode
    return [
        ("torch._int_mm", lambda: torch._int_mm(xq, wq_t), plain),
        ("torch.matmul bf16", lambda: torch.matmul(xb, wb_t), plain),
        ("nn.Linear bf16 no_grad", lambda: lin(xb), no_grad),
        ("nn.Linear bf16 inference_mode", lambda: lin(xb), inference),
        ("zq.quantize_per_token", lambda: zq.quantize_per_token(xb), plain),
        ("zq.int8_gemm", lambda: zq.int8_gemm(xq, wq, sx, sw), plain),
        ("QLinear no_grad", lambda: qlin(xb), no_grad),
        ("QLinear inference_mode", lambda: qlin(xb), inference),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    ap.add_argument("--calls", type=int, default=2000, help="back-to-back calls per sample (default 2000)")
    ap.add_argument("--repeats", type=int, default=9, help="rounds; medians are reported (default 9)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: the reference path")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a ratio misses its target")
    args = ap.parse_args(argv)
    if args.calls < 1 or args.repeats < 1:
        ap.error("--calls and --repeats must be positive")
    try:
        import zqkernels as zq
    except ImportError as e:
        print(
            f"bench_overhead: cannot import zqkernels ({e}); install it first: pip install .", file=sys.stderr
        )
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench_overhead: no CUDA device visible; --device cpu times the reference path", file=sys.stderr
        )
        return 2
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    env = environment(dev)
    print(
        f"zqkernels {zq.__version__} (commit {env['commit']}) | torch {env['torch']} | {env['device']}\n"
        f"eager host time per call at M={M} N={N} K={K}: {args.calls} back-to-back calls, one sync, "
        f"median of {args.repeats}"
    )
    # Round-robin: every round times each row once, so slow drift of the host (frequency, other
    # load) hits all rows alike; ratios are taken per round (paired) and their median reported.
    rows = build_rows(zq, dev)
    results: dict[str, Any] = {}
    live = []
    for name, fn, mode in rows:
        try:
            with mode():
                for _ in range(max(50, args.calls // 10)):  # warm-up: caches, allocator, lazy init
                    fn()
            sync()
            live.append((name, fn, mode))
            results[name] = {"samples_us": []}
        except Exception as e:  # noqa: BLE001 - a row that cannot run is reported, the rest still runs
            results[name] = {"us": None, "error": f"{type(e).__name__}: {first_line(e)}"}
    for _ in range(args.repeats):
        for name, fn, mode in live:
            r = host_us_per_call(fn, mode, sync, args.calls, 1)
            results[name]["samples_us"].append(r["us"])
    print(f"{'op':<32} {'us/call':>8} {'min':>8}")
    for name, _fn, _mode in rows:
        r = results[name]
        if r.get("error"):
            print(f"{name:<32} {'-':>8} {'-':>8}  {r['error']}")
            continue
        r["us"], r["us_min"] = statistics.median(r["samples_us"]), min(r["samples_us"])
        print(f"{name:<32} {r['us']:8.2f} {r['us_min']:8.2f}")

    ratios, missed = [], 0
    print(f"\n{'ratio (median of per-round ratios)':<38} {'value':>6} {'target':>7}")
    for label, num, den, target in RATIOS:
        a, b = results[num].get("samples_us"), results[den].get("samples_us")
        value = statistics.median(x / y for x, y in zip(a, b)) if a and b else None
        ok = value is not None and value <= target
        missed += not ok
        ratios.append({"ratio": label, "numerator": num, "denominator": den, "value": value,
                       "target": target, "meets_target": ok})  # fmt: skip
        shown = f"{value:6.2f}" if value is not None else "     -"
        print(f"{label:<38} {shown} {'<= ' + str(target):>7}  {'ok' if ok else 'MISSED'}")

    if args.json:
        settings = {"M": M, "N": N, "K": K, "calls": args.calls, "repeats": args.repeats}
        header = {**env, "zqkernels_version": zq.__version__, "settings": settings}
        write_json(args.json, {"header": header, "rows": results, "ratios": ratios})
        print(f"JSON: {args.json}")
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
