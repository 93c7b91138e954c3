"""FP8 and W4A8-FP benchmark (docs/FP8.md): zqkernels against torch's own paths, same GPU, same run.

    python benchmarks/bench_fp8.py              # the grid below (~3 min on an H100)
    python benchmarks/bench_fp8.py --quick      # fewer shapes and M
    python benchmarks/bench_fp8.py --shapes 22016x4096 --ms 1,16

Columns per problem (M tokens, N out_features, K in_features), all -> bf16, no bias:
    bf16        torch.matmul(x, w.t())
    fp8row      torch._scaled_mm(xq, wq.t(), sx [M,1], sw [1,N]) (FP8 row-wise, cuBLAS)
    int_mm      torch._int_mm (int32 out, no scales; M > 16)
    zq_int8     zqkernels.int8_gemm
    zq_fp8      zqkernels.fp8_gemm, accumulate="accurate" (default)
    zq_fp8fast  zqkernels.fp8_gemm, accumulate="fast"
    w4fp_pow2   zqkernels.w4a8_fp_gemm, power-of-two group scales (m2), g = 128, path "auto"
    w4fp_float  the same with float group scales (policy "free"): the baseline of the constraint
    w4fp_pow2_s / w4fp_float_s   path "stream" forced (M <= 1024 only): the fused kernel itself
    w4i_int / w4i_float  zqkernels.w4a8_gemm: INT4 weights (g = 128) with integer / float group scales
Method as benchmarks/bench_w8a8.py (_common.time_calls): inputs rotated past L2, CUDA graphs,
warm-up, median. GB/s = bytes of weights (+ group scales) read once per call / time.
Also: FP8 accumulation error (accurate vs fast) against an fp64 reference at K = 4096 and 16384,
and eager host time per call at a tiny shape (back-to-back calls, one sync) next to torch's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402
import zqkernels  # noqa: E402
from zqkernels.reference import fp8_gemm_ref  # noqa: E402

F8 = torch.float8_e4m3fn
SHAPES = [(4096, 4096), (22016, 4096), (4096, 11008), (24576, 14336), (8192, 8192)]
MS = [1, 4, 16, 64, 128, 256, 1024, 2048, 8192]
QUICK_SHAPES = [(22016, 4096), (24576, 14336), (8192, 8192)]
QUICK_MS = [1, 16, 64, 256, 2048, 8192]


def inputs(M, N, K, dev):
    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02
    xq8, sx8 = zqkernels.quantize_per_token(x, dtype=F8)
    wq8, sw8 = zqkernels.quantize_weight(w, fmt="fp8")
    xi, sxi = zqkernels.quantize_per_token(x)
    wi, swi = zqkernels.quantize_weight(w)
    g = 128 if K % 128 == 0 else 64
    p2 = zqkernels.quantize_weight(w, fmt="fp4", group_size=g, scale="m2")
    fl = zqkernels.quantize_weight(w, fmt="fp4", group_size=g, scale="free")
    i4 = zqkernels.quantize_weight(w, bits=4, group_size=g, scale="int")
    f4 = zqkernels.quantize_weight(w, bits=4, group_size=g, scale="float")
    return dict(x=x, w=w, xq8=xq8, sx8=sx8, wq8=wq8, sw8=sw8, xi=xi, sxi=sxi, wi=wi, swi=swi, p2=p2, fl=fl,
                i4=i4, i4max=int(i4[2].max()), f4=f4)


def columns(M, N, K):
    cols = {
        "bf16": (lambda d: torch.matmul(d["x"], d["w"].t()), 2 * N * K),
        "fp8row": (lambda d: torch._scaled_mm(d["xq8"], d["wq8"].t(), d["sx8"][:, None], d["sw8"][None, :],
                                              out_dtype=torch.bfloat16), N * K),
        "zq_int8": (lambda d: zqkernels.int8_gemm(d["xi"], d["wi"], d["sxi"], d["swi"]), N * K),
        "zq_fp8": (lambda d: zqkernels.fp8_gemm(d["xq8"], d["wq8"], d["sx8"], d["sw8"]), N * K),
        "zq_fp8fast": (lambda d: zqkernels.fp8_gemm(d["xq8"], d["wq8"], d["sx8"], d["sw8"], accumulate="fast"), N * K),
    }
    if M > 16:
        cols["int_mm"] = (lambda d: torch._int_mm(d["xi"], d["wi"].t()), N * K)
    g = 128 if K % 128 == 0 else 64
    wbytes = N * K // 2 + N * (K // g) + 4 * N
    for name, key, extra in (("w4fp_pow2", "p2", 0), ("w4fp_float", "fl", 3 * N * (K // g))):
        cols[name] = (lambda d, k=key: zqkernels.w4a8_fp_gemm(d["xq8"], d[k][0], d["sx8"], d[k][1], d[k][2]),
                      wbytes + extra)
        if M <= 1024 and name.startswith("w4fp"):
            cols[name + "_s"] = (lambda d, k=key: zqkernels.w4a8_fp_gemm(d["xq8"], d[k][0], d["sx8"], d[k][1],
                                                                         d[k][2], path="stream"), wbytes + extra)
    # W4A8 with integer / float group scales (docs/W4A8.md): INT8 activations, INT4 weights.
    ibytes = N * K // 2 + 4 * N * (K // g) + 4 * N
    cols["w4i_int"] = (lambda d: zqkernels.w4a8_gemm(d["xi"], d["i4"][0], d["sxi"], d["i4"][1], d["i4"][2],
                                                     max_scale=d["i4max"]), ibytes)
    cols["w4i_float"] = (lambda d: zqkernels.w4a8_gemm(d["xi"], d["f4"][0], d["sxi"], d["f4"][1], d["f4"][2]), ibytes)
    return cols


def bench_problem(M, N, K, dev, rot_bytes):
    one = inputs(M, N, K, dev)
    per_call = sum(t.numel() * t.element_size() for t in (one["x"], one["w"]))
    n = cm.rotation_copies(per_call, rot_bytes, max_copies=8)
    copies = [one] + [inputs(M, N, K, dev) for _ in range(n - 1)]
    ref = (one["x"].double() @ one["w"].double().t())
    row = {"M": M, "N": N, "K": K, "copies": n}
    for name, (fn, wbytes) in columns(M, N, K).items():
        try:
            out = fn(one)
            if name != "int_mm":
                err = float((out.double() - ref).norm() / ref.norm())
                row[name + "_err"] = err
            t = cm.time_calls([lambda d=d: fn(d) for d in copies], dev)
            us = t["us"]
            row[name] = {"us": us, "tflops": 2 * M * N * K / us / 1e6, "gbs": wbytes / us / 1e3, "method": t["method"]}
        except Exception as e:  # noqa: BLE001 - a column that cannot run says why
            row[name] = {"error": cm.error_text(e)}
    del copies
    torch.cuda.empty_cache()
    return row


def accumulation_error(dev):
    """fp8_gemm accurate vs fast against fp64, on Gaussian activations / weights quantized to FP8."""
    out = []
    for K in (4096, 16384):
        M, N = 1024, 1024
        x = torch.randn(M, K, device=dev) + 0.5  # a mean: partial sums grow with K, as in real layers
        w = torch.randn(N, K, device=dev) * 0.02 + 0.01
        xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
        wq, sw = zqkernels.quantize_weight(w, fmt="fp8")
        ref = fp8_gemm_ref(xq, wq, sx, sw, None, torch.float32).double()
        rec = {"K": K}
        for acc in ("accurate", "fast"):
            y = zqkernels.fp8_gemm(xq, wq, sx, sw, None, torch.bfloat16, accumulate=acc).double()
            yf = zqkernels.fp8_gemm(xq, wq, sx, sw, None, torch.float16, accumulate=acc).double()
            rec[acc] = {
                "rel_fro_bf16": float((y - ref).norm() / ref.norm()),
                "max_rel_fp16": float(((yf - ref).abs() / ref.abs().clamp_min(1e-3)).max()),
                "rel_fro_fp16": float((yf - ref).norm() / ref.norm()),
            }
        out.append(rec)
    return out


def host_overhead(dev):
    M, N, K = 4, 256, 256
    d = inputs(M, N, K, dev)
    sync = cm.sync_for(dev)
    fns = {
        "zq_fp8_gemm": lambda: zqkernels.fp8_gemm(d["xq8"], d["wq8"], d["sx8"], d["sw8"]),
        "torch_scaled_mm": lambda: torch._scaled_mm(d["xq8"], d["wq8"].t(), d["sx8"][:, None], d["sw8"][None, :],
                                                    out_dtype=torch.bfloat16),
        "zq_w4a8_fp_gemm": lambda: zqkernels.w4a8_fp_gemm(d["xq8"], d["p2"][0], d["sx8"], d["p2"][1], d["p2"][2]),
        "torch_matmul": lambda: torch.matmul(d["x"], d["w"].t()),
        "zq_quantize_fp8": lambda: zqkernels.quantize_per_token(d["x"], dtype=F8),
        "torch_quantize_fp8": lambda: (d["x"].float() * (448.0 / d["x"].abs().amax(1, keepdim=True).float())).to(F8),
    }
    res = cm.back_to_back(fns, sync)
    return {k: v["s"] * 1e6 for k, v in res.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shapes", default=None)
    ap.add_argument("--ms", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda", 0)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    ms = QUICK_MS if args.quick else MS
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.ms:
        ms = [int(v) for v in args.ms.split(",")]
    rot = cm.device_rotate_bytes(dev)
    copy_gbs = cm.copy_bandwidth(dev) / 1e9
    doc = {"environment": cm.environment(dev), "copy_GBps": copy_gbs, "rows": []}
    print(f"copy bandwidth {copy_gbs:.0f} GB/s")
    doc["accumulation"] = accumulation_error(dev)
    for r in doc["accumulation"]:
        print(f"K={r['K']}: accurate {r['accurate']}  fast {r['fast']}")
    doc["host_us"] = host_overhead(dev)
    print("eager host us/call:", {k: round(v, 2) for k, v in doc["host_us"].items()})
    names = ["bf16", "fp8row", "int_mm", "zq_int8", "zq_fp8", "zq_fp8fast", "w4fp_pow2", "w4fp_float",
             "w4fp_pow2_s", "w4fp_float_s", "w4i_int", "w4i_float"]
    print(f"{'M':>5} {'N':>6} {'K':>6} " + " ".join(f"{n:>12}" for n in names) + "   (us; w4fp: GB/s)")
    for N, K in shapes:
        for M in ms:
            row = bench_problem(M, N, K, dev, rot)
            doc["rows"].append(row)
            cells = []
            for n in names:
                v = row.get(n)
                if not v:
                    cells.append(f"{'-':>12}")
                elif "error" in v:
                    cells.append(f"{'ERR':>12}")
                elif n.startswith("w4"):
                    cells.append(f"{v['us']:7.1f}/{v['gbs']:4.0f}")
                else:
                    cells.append(f"{v['us']:12.1f}")
            print(f"{M:5d} {N:6d} {K:6d} " + " ".join(cells), flush=True)
            for n in names:
                v = row.get(n)
                if v and "error" in v:
                    print(f"   {n}: {v['error']}")
    out = args.out or (Path(__file__).resolve().parent / "results" /
                       f"fp8_{cm.gpu_slug(cm.device_name(dev))}_{cm.git_commit()}{'_quick' if args.quick else ''}.json")
    cm.write_json(out, doc)
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
