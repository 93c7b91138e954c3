"""Accurate FP8 (issue 17): row-wise and block-scaled FP8 against torch's paths, same GPU, same run.

    python benchmarks/bench_fp8_accurate.py [--quick] [--tiles] [--out FILE]

Columns per problem (M tokens, N out_features, K in_features), all -> bf16, no bias:
    bf16        torch.matmul(x, w.t())
    sm_acc      torch._scaled_mm row-wise (sx [M, 1], sw [1, N]), use_fast_accum=False
    sm_fast     the same with use_fast_accum=True
    ao_row      torchao Float8DynamicActivationFloat8WeightConfig(PerRow()) on an nn.Linear (eager;
                includes its activation quantization), when torchao imports
    zq_acc      zqkernels.fp8_gemm accurate (promotion every 128 of K)
    zq_fast     zqkernels.fp8_gemm accumulate="fast"
    zq_block    zqkernels.fp8_block_gemm (1 x 128 / 128 x 128 block scales)
    zq_int8     zqkernels.int8_gemm
--tiles also times every built tile of fp8_rowwise / fp8_blockwise at M >= 1024 (tile tuning).
Method: benchmarks/_common.time_calls (inputs rotated past L2, CUDA graphs, warm-up, median).
Also: relative Frobenius error of each mode against float64 on the dequantized operands (fp16
output) at K = 4096 and 16384 (Gaussian, mean 0.5) and on outlier data (x40 channels, sparse large
weights) against the output-rounding floor; eager host time per call at a tiny shape.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402
import zqkernels  # noqa: E402

F8 = torch.float8_e4m3fn
# (name, N, K): 8192^3 and the Llama-3-8B / 70B projections (merged qkv and gate|up).
SHAPES = [("sq8192", 8192, 8192), ("8b.qkv", 6144, 4096), ("8b.o", 4096, 4096), ("8b.gateup", 28672, 4096),
          ("8b.down", 4096, 14336), ("70b.qkv", 10240, 8192), ("70b.o", 8192, 8192),
          ("70b.gateup", 57344, 8192), ("70b.down", 8192, 28672)]
MS = [1, 16, 128, 1024, 2048, 8192]
QUICK = ["sq8192", "8b.gateup", "8b.down", "70b.down"]


def ao_linear(w: torch.Tensor):
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except Exception as e:  # noqa: BLE001
        return None, cm.first_line(e)
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=torch.bfloat16)
    lin.weight.data.copy_(w)
    try:
        quantize_(lin, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    except Exception as e:  # noqa: BLE001
        return None, cm.first_line(e)
    return lin, None


def problem(M, N, K, dev, copies):
    xs = [torch.randn(M, K, device=dev, dtype=torch.bfloat16) for _ in range(copies)]
    w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02
    wq, sw = zqkernels.quantize_weight(w, fmt="fp8")
    wb, swb = zqkernels.quantize_weight(w, fmt="fp8", block_size=128)
    wi, swi = zqkernels.quantize_weight(w)
    q = []
    for x in xs:
        xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
        xb, sxb = zqkernels.quantize_per_token_group(x, 128)
        xi, sxi = zqkernels.quantize_per_token(x)
        q.append((x, xq, sx, xb, sxb, xi, sxi))
    return w, (wq, sw, wb, swb, wi, swi), q


def columns(w, ws, q, ao):
    wq, sw, wb, swb, wi, swi = ws
    wt = wq.t()
    swr = sw.reshape(1, -1)
    cols = {
        "bf16": [lambda a=a: torch.matmul(a[0], w.t()) for a in q],
        "sm_acc": [lambda a=a: torch._scaled_mm(a[1], wt, a[2].reshape(-1, 1), swr, out_dtype=torch.bfloat16)
                   for a in q],
        "sm_fast": [lambda a=a: torch._scaled_mm(a[1], wt, a[2].reshape(-1, 1), swr, out_dtype=torch.bfloat16,
                                                 use_fast_accum=True) for a in q],
        "zq_acc": [lambda a=a: zqkernels.fp8_gemm(a[1], wq, a[2], sw) for a in q],
        "zq_fast": [lambda a=a: zqkernels.fp8_gemm(a[1], wq, a[2], sw, accumulate="fast") for a in q],
        "zq_block": [lambda a=a: zqkernels.fp8_block_gemm(a[3], wb, a[4], swb) for a in q],
        "zq_int8": [lambda a=a: zqkernels.int8_gemm(a[5], wi, a[6], swi) for a in q],
    }
    if ao is not None:
        cols["ao_row"] = [lambda a=a: ao(a[0]) for a in q]
    return cols


def errors(dev):
    """Relative Frobenius error (fp16 out) vs float64 on the dequantized operands."""
    out = []
    torch.manual_seed(0)
    for K in (4096, 16384):
        for data in ("mean0.5", "outliers"):
            M, N = 512, 1024
            x = torch.randn(M, K, device=dev)
            w = torch.randn(N, K, device=dev) * 0.02
            if data == "mean0.5":
                x = x + 0.5
            else:
                x[:, torch.randperm(K, device=dev)[:8]] *= 40.0
                mask = torch.rand(N, K, device=dev) < 1e-3
                w = torch.where(mask, w * 20.0, w)
            xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
            wq, sw = zqkernels.quantize_weight(w, fmt="fp8")
            xb, sxb = zqkernels.quantize_per_token_group(x, 128)
            wb, swb = zqkernels.quantize_weight(w, fmt="fp8", block_size=128)
            ref = (xq.double() * sx.double().reshape(-1, 1)) @ (wq.double() * sw.double().reshape(-1, 1)).t()
            dxb = xb.double() * sxb.double().repeat_interleave(128, dim=1)
            dwb = wb.double() * swb.double().repeat_interleave(128, 0)[:N].repeat_interleave(128, 1)
            refb = dxb @ dwb.t()
            nrm, nrmb = ref.norm(), refb.norm()
            row = {"K": K, "data": data,
                   "floor_fp16": float((ref.half().double() - ref).norm() / nrm)}
            for name, fn, r, n in (
                ("zq_acc", lambda: zqkernels.fp8_gemm(xq, wq, sx, sw, out_dtype=torch.float16), ref, nrm),
                ("zq_fast", lambda: zqkernels.fp8_gemm(xq, wq, sx, sw, out_dtype=torch.float16, accumulate="fast"),
                 ref, nrm),
                ("sm_acc", lambda: torch._scaled_mm(xq, wq.t(), sx.reshape(-1, 1), sw.reshape(1, -1),
                                                    out_dtype=torch.float16), ref, nrm),
                ("sm_fast", lambda: torch._scaled_mm(xq, wq.t(), sx.reshape(-1, 1), sw.reshape(1, -1),
                                                     out_dtype=torch.float16, use_fast_accum=True), ref, nrm),
                ("zq_block", lambda: zqkernels.fp8_block_gemm(xb, wb, sxb, swb, out_dtype=torch.float16), refb, nrmb),
            ):
                try:
                    row[name] = float((fn().double() - r).norm() / n)
                except Exception as e:  # noqa: BLE001
                    row[name] = cm.first_line(e)
            row["floor_fp16_block"] = float((refb.half().double() - refb).norm() / nrmb)
            out.append(row)
            print("err", row, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tiles", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    rot = cm.device_rotate_bytes(dev)
    doc = {"environment": cm.environment(dev), "copy_GBps": cm.copy_bandwidth(dev) / 1e9, "rows": []}
    print("copy GB/s", round(doc["copy_GBps"]), flush=True)
    doc["errors"] = errors(dev)
    shapes = [s for s in SHAPES if not args.quick or s[0] in QUICK]
    for name, N, K in shapes:
        ao = None
        for M in MS:
            copies = cm.rotation_copies(M * K + N * K, rot)
            w, ws, q = problem(M, N, K, dev, copies)
            if ao is None:
                ao, why = ao_linear(w)
                if ao is None:
                    print("torchao:", why)
            row = {"shape": name, "M": M, "N": N, "K": K}
            for col, calls in columns(w, ws, q, ao).items():
                try:
                    row[col] = cm.time_calls(calls, dev)["us"]
                except Exception as e:  # noqa: BLE001
                    row[col] = cm.first_line(e)
            flops = 2.0 * M * N * K
            for col in list(row):
                if isinstance(row[col], float) and col not in ("M", "N", "K"):
                    row[col + "_tflops"] = flops / row[col] / 1e6
            if isinstance(row.get("zq_acc"), float):
                for peer in ("sm_acc", "zq_fast", "ao_row"):
                    if isinstance(row.get(peer), float):
                        row[f"acc_vs_{peer}"] = row[peer] / row["zq_acc"]
                if isinstance(row.get("sm_acc"), float) and isinstance(row.get("zq_block"), float):
                    row["block_vs_sm_acc"] = row["sm_acc"] / row["zq_block"]
            row["weight_floor_us"] = N * K / (doc["copy_GBps"] * 1e3)
            if args.tiles and M >= 1024:
                tiles = zqkernels.info()["gemm_tiles"]
                C = zqkernels._ext._C
                prev = C._debug_set_fp8_promotion(64)
                try:
                    row["zq_acc_span64"] = cm.time_calls(columns(w, ws, q, None)["zq_acc"], dev)["us"]
                    row["zq_block_span64"] = cm.time_calls(columns(w, ws, q, None)["zq_block"], dev)["us"]
                finally:
                    C._debug_set_fp8_promotion(prev)
                for recipe, fn in (("fp8_rowwise", lambda a, t: zqkernels.fp8_gemm(a[1], ws[0], a[2], ws[1])),
                                   ("fp8_rowwise_fastacc",
                                    lambda a, t: zqkernels.fp8_gemm(a[1], ws[0], a[2], ws[1], accumulate="fast")),
                                   ("fp8_blockwise", lambda a, t: zqkernels.fp8_block_gemm(a[3], ws[2], a[4], ws[3]))):
                    for t in tiles.get(f"sm90_{recipe}", []):
                        if t.startswith("swap"):
                            continue
                        with zqkernels.ops.gemm_options(tile=t):
                            try:
                                row[f"{recipe}:{t}"] = cm.time_calls([lambda a=a: fn(a, t) for a in q], dev)["us"]
                            except Exception as e:  # noqa: BLE001
                                row[f"{recipe}:{t}"] = cm.first_line(e)
            doc["rows"].append(row)
            print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                           if not k.endswith("_tflops")), flush=True)
            del q
    # Eager host time per call (tiny shape, back to back, one sync).
    x = torch.randn(16, 256, device=dev, dtype=torch.bfloat16)
    w = torch.randn(256, 256, device=dev, dtype=torch.bfloat16)
    xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
    wq, sw = zqkernels.quantize_weight(w, fmt="fp8")
    xb, sxb = zqkernels.quantize_per_token_group(x, 128)
    wb, swb = zqkernels.quantize_weight(w, fmt="fp8", block_size=128)
    fns = {"fp8_gemm": lambda: zqkernels.fp8_gemm(xq, wq, sx, sw),
           "fp8_block_gemm": lambda: zqkernels.fp8_block_gemm(xb, wb, sxb, swb),
           "torch._scaled_mm": lambda: torch._scaled_mm(xq, wq.t(), sx.reshape(-1, 1), sw.reshape(1, -1),
                                                        out_dtype=torch.bfloat16),
           "quantize_per_token_group": lambda: zqkernels.quantize_per_token_group(x, 128),
           "quantize_per_token": lambda: zqkernels.quantize_per_token(x, dtype=F8)}
    host = {k: v["s"] * 1e6 for k, v in cm.back_to_back(fns, cm.sync_for(dev)).items()}
    doc["host_us"] = host
    print("host us", host)
    out = args.out or f"benchmarks/results/fp8_accurate_{cm.gpu_slug(cm.device_name(dev))}.json"
    cm.write_json(out, doc)
    print("wrote", out)


if __name__ == "__main__":
    main()
