"""Where a whole-model step spends its GPU time: bench_llm.py's Llama-3-8B-shaped model, one case, each
side's kernels under the torch profiler, summed per kernel and per kind (GEMM, attention, RoPE / cache,
norm + quant, elementwise, copies), against the bytes the step must read (issue 19: "as fast as the bytes
allow" needs to know which kernels are not moving bytes).

    python benchmarks/profile_llm.py --case "decode b1 ctx1024" --sides bf16,w8a8,w4a8 [--json FILE]
    python benchmarks/profile_llm.py --dry-run          # CPU smoke test (tiny model, no kernels)

Each side runs ``--steps`` eager steps (``--graph``: replays of a CUDA graph of one step) after a
warm-up, profiled with CUDA activity; kernel durations are the device's (the eager host overhead is not
in them). Under PDL a kernel starts before its predecessor ends, so durations overlap and their sum
exceeds the step: "exposed" is the part of a kernel past every earlier kernel's end and "gap" the idle
time before it, which together add up to the step's span (``critical_path``). ``us/step`` per kernel = its total / steps; the
floor is the weights read once (decoder + lm_head; embedding rows are negligible) plus the KV cache at
the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_llm as bl  # noqa: E402
from _common import capture_graph, environment, write_json  # noqa: E402

#: kernel name patterns -> kind (first match wins); names are CUTLASS / cuBLAS / flash / torch / ours
KINDS = [
    ("gemm", r"gemm|Gemm|GEMM|cutlass|sm90_xmma|wgmma|gemv|splitK|_int_mm|matmul|ampere_|sm80_xmma"),
    ("attention", r"flash|fmha|attention|Attention|sdpa|efficient"),
    ("rope/cache", r"rope|Rope|index_copy|index_put|scatter"),
    ("norm+quant", r"rms|Rms|norm|Norm|quant|Quant|row_op|RowOp|silu_mul|swiglu"),
    ("reduce", r"reduce|Reduce|softmax|Softmax"),
    ("copy", r"copy|Copy|memcpy|Memcpy|memset|fill|cat_|CatArray"),
    ("elementwise", r"elementwise|vectorized|unrolled|Elementwise"),
]


def kind_of(name: str) -> str:
    for kind, pat in KINDS:
        if re.search(pat, name):
            return kind
    return "other"


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer (each storage once)."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def critical_path(spans: list[tuple[float, float, str]]) -> tuple[dict[str, float], dict[str, float], float]:
    """What each kernel adds to the stream's span, from (start, end, name) in us: in start order, a
    kernel's exposed time is the part of it past every earlier kernel's end, and the idle time before
    it (no kernel running) is its gap (launch latency, a host stall, a dependency wait before the
    kernel started). Under PDL a kernel starts before its predecessor ends, so its own duration
    overstates it; exposed + gap summed over all kernels is the span from the first start to the last
    end. Returns ({name: exposed}, {name: gap}, span)."""
    exposed: dict[str, float] = {}
    gap: dict[str, float] = {}
    if not spans:
        return exposed, gap, 0.0
    spans = sorted(spans)
    frontier = spans[0][0]
    for start, end, name in spans:
        gap[name] = gap.get(name, 0.0) + max(0.0, start - frontier)
        exposed[name] = exposed.get(name, 0.0) + max(0.0, end - max(frontier, start))
        frontier = max(frontier, end)
    return exposed, gap, frontier - spans[0][0]


def profile_side(runner: torch.nn.Module, ids: torch.Tensor, steps: int, cuda: bool,
                 graph: bool = False) -> dict[str, Any]:  # fmt: skip
    """Kernel times of ``steps`` calls (eager, or ``graph``: replays of a CUDA graph of one call,
    back to back), summed per kernel name, and each kernel's share of the span (``critical_path``)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        step = lambda: runner(ids)  # noqa: E731
        if graph and cuda:
            g, _ = capture_graph(step, ids.device)
            step = g.replay
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            for _ in range(steps):
                step()
            if cuda:
                torch.cuda.synchronize()
    kernels: dict[str, list[float]] = {}
    spans: list[tuple[float, float, str]] = []
    for ev in prof.events():
        if cuda and ev.device_type == torch.autograd.DeviceType.CUDA:
            kernels.setdefault(ev.name, []).append(ev.device_time if hasattr(ev, "device_time") else ev.cuda_time)
            spans.append((float(ev.time_range.start), float(ev.time_range.end), ev.name))
    exposed, gap, span = critical_path(spans)
    rows = sorted(({"name": n, "kind": kind_of(n), "calls_per_step": len(v) / steps, "us_per_step": sum(v) / steps,
                    "exposed_us_per_step": exposed.get(n, 0.0) / steps, "gap_us_per_step": gap.get(n, 0.0) / steps}
                   for n, v in kernels.items()), key=lambda r: -r["us_per_step"])  # fmt: skip
    kinds: dict[str, float] = {}
    kinds_path: dict[str, float] = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0.0) + r["us_per_step"]
        kinds_path[r["kind"]] = kinds_path.get(r["kind"], 0.0) + r["exposed_us_per_step"] + r["gap_us_per_step"]
    launches = sum(r["calls_per_step"] for r in rows)
    return {"kernels": rows, "kinds": kinds, "kinds_on_path": kinds_path, "us_per_step": sum(kinds.values()),
            "span_us_per_step": span / steps if steps else 0.0, "launches_per_step": launches,
            "mode": "graph" if graph and cuda else "eager"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="decode b1 ctx1024", help="a bench_llm case name (see bench_llm --list)")
    p.add_argument("--sides", type=bl._list, default=["bf16", "w8a8", "w4a8"], help="bf16 and zqkernels schemes")
    p.add_argument("--layers", type=int, default=None, help="N decoder layers instead of 32")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--graph", action="store_true",
                   help="profile replays of a CUDA graph of one step (what the graph mode times) instead of eager steps")
    p.add_argument("--top", type=int, default=14, help="kernels listed per side")
    p.add_argument("--copy-tbs", type=float, default=3.0, help="copy bandwidth for the floor, TB/s (default 3.0)")
    p.add_argument("--decode-attention", choices=("auto", "gqa", "packed", "kernel", "hf"), default=None,
                   help="fused blocks' one-token attention (nn.blocks_base.DECODE_ATTENTION; default: the library's)")
    p.add_argument("--json", default=None)
    p.add_argument("--dry-run", action="store_true", help="CPU: tiny model, no kernel times")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("profile_llm: needs a CUDA GPU (or --dry-run)", file=sys.stderr)
        return 2
    unknown = [s for s in args.sides if s != "bf16" and s.partition("@")[0] not in bl.ZQ]
    if unknown:
        print(f"profile_llm: --sides: unknown {unknown}; expected bf16 or one of {bl.ZQ}", file=sys.stderr)
        return 2
    cases = [c for c in bl.all_cases(args.dry_run) if c.name == args.case or args.dry_run and c.kind == "decode"]
    if not cases:
        print(f"profile_llm: --case {args.case!r}: expected one of {[c.name for c in bl.all_cases()]}",
              file=sys.stderr)  # fmt: skip
        return 2
    case = cases[0]
    from zqkernels.nn import blocks_base

    if args.decode_attention is not None:
        blocks_base.DECODE_ATTENTION = args.decode_attention
    dev = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    bf16 = bl.build_bf16(dev, args.dry_run, args.layers)
    out: dict[str, Any] = {"environment": environment(dev), "case": case.name, "layers": args.layers, "sides": {}}
    for side in args.sides:
        dec, head, _, summary = bl.build_side(side, bf16)
        ids, kw = bl.case_inputs(case, bf16.config, dev)
        runner = bl.LMRunner(dec, head, last_only=True, **kw)
        res = profile_side(runner, ids, args.steps, not args.dry_run, args.graph)
        wb = weight_bytes(dec) - dec.embed_tokens.weight.untyped_storage().nbytes() + weight_bytes(head)
        cache = kw.get("cache")
        kvb = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers) if cache is not None else 0
        floor_us = (wb + kvb) / (args.copy_tbs * 1e12) * 1e6
        res.update({"conversion": summary, "weight_bytes": wb, "kv_bytes": kvb, "floor_us": floor_us})
        out["sides"][side] = res
        print(f"\n== {side} ({case.name}, {res['mode']}): {res['us_per_step']:.0f} us of kernels per step, "
              f"span {res['span_us_per_step']:.0f} us, "
              f"{res['launches_per_step']:.0f} launches; floor {floor_us:.0f} us "
              f"(weights {wb / 1e9:.2f} GB + KV {kvb / 1e9:.3f} GB at {args.copy_tbs} TB/s)")  # fmt: skip
        tot = res["us_per_step"] or 1.0
        print("   " + "  ".join(f"{k} {v:.0f} ({100 * v / tot:.0f}%)" for k, v in
                                sorted(res["kinds"].items(), key=lambda kv: -kv[1])))  # fmt: skip
        print("   on the span (exposed + gap before): " + "  ".join(
            f"{k} {v:.0f}" for k, v in sorted(res["kinds_on_path"].items(), key=lambda kv: -kv[1])))
        print("   kernel us/step  calls  exposed    gap  kind        name")
        for r in res["kernels"][: args.top]:
            print(f"   {r['us_per_step']:8.1f} us {r['calls_per_step']:5.0f}x {r['exposed_us_per_step']:8.1f} "
                  f"{r['gap_us_per_step']:6.1f}  {r['kind']:<11} {r['name'][:100]}")
        if side != "bf16":
            del dec, head, runner
        gc.collect()
        if not args.dry_run:
            torch.cuda.empty_cache()
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
