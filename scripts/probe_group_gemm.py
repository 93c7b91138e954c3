"""The group-scaled int8 wgmma GEMM (src/cuda/sm90_group_mainloop.cuh) on the GPU: a quick
correctness pass against an exact CPU computation, then timings against the peers.

    python scripts/probe_group_gemm.py [--check-only] [--quick] [--out FILE]

Correctness: INT4 (w4a8_gemm path="convert") and INT8 group weights (the kernel directly), integer
and float scales, g in 32 / 64 / 128 / 256 / per channel, K a multiple of g but not of 128, N not a
multiple of 128, M from 1 to 1000; the integer variant against an int64 computation (it may differ
only by fp32 rounding of its flushes and the output rounding), the float one within fp32 error.

Timings (benchmarks/_common.time_calls: rotated inputs, CUDA graphs, medians), per (M, N, K), us:
bf16 torch.matmul, torch._int_mm, torch._scaled_mm FP8 row-wise, our int8_gemm (per channel), the
group GEMM on int8 weights with integer / float scales (g = 128), w4a8_gemm int scales on the
convert path (int4_to_int8 + group GEMM), on the mixed path (sm90_w4a8_mainloop.cuh, int and float
scales) and on the stream path, and int4_to_int8 alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common as cm  # noqa: E402
import zqkernels  # noqa: E402
from zqkernels.ops.gemm_cuda import group_gemm_cuda, int4_to_int8_cuda  # noqa: E402
from zqkernels.reference import unpack_int4  # noqa: E402

BF = torch.bfloat16


def exact(xq, codes, sx, sw, sg, g):
    """float64 [M, N] of sx * sw * sum_j sg[:, j] * P_j, P_j exact (int64 on the CPU)."""
    x = xq.cpu().long()
    w = codes.cpu().long()
    M, K = x.shape
    G = K // g
    P = torch.einsum("mjk,njk->mnj", x.view(M, G, g), w.view(-1, G, g))  # int64
    s = sg.cpu()
    if s.dtype == torch.int32:
        acc = (P * s.long().unsqueeze(0)).sum(-1).double()
    else:
        acc = (P.double() * s.double().unsqueeze(0)).sum(-1)
    return acc * sx.cpu().double().view(-1, 1) * sw.cpu().double().view(1, -1)


def check(dev) -> list[str]:
    bad = []
    torch.manual_seed(0)
    cases = [(N, K, g) for N, K in ((272, 576), (256, 4096)) for g in (32, 64, 128, 256, None)
             if g is None or K % g == 0]
    for N, K, g in cases:
        w = torch.randn(N, K, device=dev) * 0.05
        for scale in ("int", "float"):
            wq, sw, sg = zqkernels.quantize_weight(w, bits=4, group_size=g, scale=scale)
            codes = unpack_int4(wq.cpu(), N, K)
            gg = K // sg.shape[1]
            ms = int(sg.max()) if scale == "int" else None
            for M in (1, 5, 64, 200, 1000):
                x = torch.randn(M, K, device=dev)
                x[0, :7] *= 40  # an outlier channel
                xq, sx = zqkernels.quantize_per_token(x)
                ref = exact(xq, codes, sx, sw, sg, gg)
                for mx in (None, ms):
                    out = zqkernels.w4a8_gemm(xq, wq, sx, sw, sg, out_dtype=torch.float32, path="convert",
                                              max_scale=mx).double().cpu()
                    err = ((out - ref).abs() / (ref.abs().max() + 1e-30)).max().item()
                    ok = err < (1e-6 if scale == "int" else 2e-6)
                    line = f"w4 N={N} K={K} g={g} {scale} M={M} max_scale={mx}: rel err {err:.2e}"
                    print(("ok   " if ok else "FAIL ") + line, flush=True)
                    if not ok:
                        bad.append(line)
            # INT8 weights through the kernel directly (scales: int in [1, 511] / float ratios)
            w8 = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=dev)
            G = K // gg
            sg8 = (torch.randint(1, 512, (N, G), dtype=torch.int32, device=dev) if scale == "int"
                   else torch.rand(N, G, device=dev) + 0.01)
            sw8 = torch.rand(N, device=dev) * 1e-3
            for M in (3, 130, 777):
                xq = torch.randint(-128, 128, (M, K), dtype=torch.int8, device=dev)
                sx = torch.rand(M, device=dev) * 1e-2
                ref = exact(xq, w8, sx, sw8, sg8, gg)
                out = group_gemm_cuda("probe", xq, w8, sx, sw8, sg8, None, torch.float32, 0,
                                      511 if scale == "int" else None, 128).double().cpu()
                err = ((out - ref).abs() / (ref.abs().max() + 1e-30)).max().item()
                ok = err < 2e-6
                line = f"w8 N={N} K={K} g={gg} {scale} M={M}: rel err {err:.2e}"
                print(("ok   " if ok else "FAIL ") + line, flush=True)
                if not ok:
                    bad.append(line)
    # adversarial: all -128 activations x all -8 codes, the largest scale, K = 16384
    N, K, g = 128, 16384, 128
    codes = torch.full((N, K), -8, dtype=torch.int8)
    from zqkernels.reference import pack_int4
    wq = pack_int4(codes).to(dev)
    sg = torch.full((N, K // g), 2**15, dtype=torch.int32, device=dev)
    sw = torch.full((N,), 1e-9, device=dev)
    xq = torch.full((130, K), -128, dtype=torch.int8, device=dev)
    sx = torch.ones(130, device=dev)
    ref = exact(xq, codes, sx, sw, sg, g)
    out = zqkernels.w4a8_gemm(xq, wq, sx, sw, sg, out_dtype=torch.float32, path="convert").double().cpu()
    err = ((out - ref).abs() / ref.abs().max()).max().item()
    line = f"adversarial K={K} s=2^15: rel err {err:.2e} (exact total {ref[0, 0].item() / 1e-9:.3e})"
    print(("ok   " if err < 1e-6 else "FAIL ") + line, flush=True)
    if err >= 1e-6:
        bad.append(line)
    return bad


def bench(dev, quick: bool) -> list[dict]:
    rows = []
    shapes = [(4096, 4096), (24576, 14336)] if not quick else [(8192, 8192)]
    ms = [16, 32, 64, 128, 256, 1024, 2048, 4096, 8192] if not quick else [64, 256, 2048]
    g = 128
    for N, K in shapes:
        ncopy = 2
        W = []
        for _ in range(ncopy):
            w = torch.randn(N, K, device=dev) * 0.02
            wq4, sw4, sg4 = zqkernels.quantize_weight(w, bits=4, group_size=g, scale="int", alpha=1024)
            _, _, sg4f = zqkernels.quantize_weight(w, bits=4, group_size=g, scale="float")
            w8 = int4_to_int8_cuda(wq4, K)
            wq8, sw8 = zqkernels.quantize_weight(w)
            wb = w.to(BF)
            w8f = w.to(torch.float8_e4m3fn)
            W.append(dict(wq4=wq4, sw4=sw4, sg4=sg4, sg4f=sg4f, w8=w8, wq8=wq8, sw8=sw8, wb=wb, w8f=w8f))
        for M in ms:
            X = []
            for _ in range(ncopy):
                x = torch.randn(M, K, device=dev)
                xq, sx = zqkernels.quantize_per_token(x)
                X.append(dict(x=x.to(BF), xq=xq, sx=sx, xf=x.to(torch.float8_e4m3fn),
                              sxf=torch.ones(M, 1, device=dev), swf=torch.ones(1, N, device=dev)))
            variants = {
                "bf16": lambda a, b: torch.matmul(a["x"], b["wb"].t()),
                "int_mm": lambda a, b: torch._int_mm(a["xq"], b["wq8"].t()) if M > 16 else None,
                "fp8_rowwise": lambda a, b: torch._scaled_mm(a["xf"], b["w8f"].t(), a["sxf"], a["swf"], out_dtype=BF),
                "int8_gemm": lambda a, b: zqkernels.int8_gemm(a["xq"], b["wq8"], a["sx"], b["sw8"]),
                "group_int_w8": lambda a, b: group_gemm_cuda("probe", a["xq"], b["w8"], a["sx"], b["sw4"], b["sg4"],
                                                             None, BF, 0, 1024, 8),
                "group_float_w8": lambda a, b: group_gemm_cuda("probe", a["xq"], b["w8"], a["sx"], b["sw4"],
                                                               b["sg4f"], None, BF, 0, None, 8),
                "w4a8_int_convert": lambda a, b: zqkernels.w4a8_gemm(a["xq"], b["wq4"], a["sx"], b["sw4"], b["sg4"],
                                                                     max_scale=1024, path="convert"),
                "w4a8_float_convert": lambda a, b: zqkernels.w4a8_gemm(a["xq"], b["wq4"], a["sx"], b["sw4"],
                                                                       b["sg4f"], path="convert"),
                "w4a8_int_mixed": lambda a, b: zqkernels.w4a8_gemm(a["xq"], b["wq4"], a["sx"], b["sw4"], b["sg4"],
                                                                   max_scale=1024, path="mixed"),
                "w4a8_float_mixed": lambda a, b: zqkernels.w4a8_gemm(a["xq"], b["wq4"], a["sx"], b["sw4"],
                                                                     b["sg4f"], path="mixed"),
                "int4_to_int8": lambda a, b: int4_to_int8_cuda(b["wq4"], K),
            }
            if M <= 256:
                variants["w4a8_int_stream"] = lambda a, b: zqkernels.w4a8_gemm(
                    a["xq"], b["wq4"], a["sx"], b["sw4"], b["sg4"], max_scale=1024, path="stream")
            row = {"M": M, "N": N, "K": K, "g": g}
            for name, fn in variants.items():
                if name == "int_mm" and M <= 16:
                    continue
                fns = [lambda a=a, b=b, fn=fn: fn(a, b) for a, b in zip(X, W)]
                try:
                    t = cm.time_calls(fns, dev)
                    row[name] = round(t["us"], 1)
                except Exception as e:  # noqa: BLE001
                    row[name] = f"error: {cm.first_line(e)}"
            flops = 2 * M * N * K
            for name in ("group_int_w8", "int8_gemm", "bf16", "w4a8_int_mixed", "w4a8_float_mixed"):
                if isinstance(row.get(name), float):
                    row[f"{name}_tflops"] = round(flops / row[name] / 1e6, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def tiles(dev) -> list[dict]:
    """Tile experiments (a build with -DZQ_EXPERIMENT_TILES=ON): the plain int8 GEMM and the group
    GEMM on the same CTA shapes, to separate the tile's cost from the group scales'."""
    rows = []
    for M, N, K in ((2048, 24576, 14336), (8192, 8192, 8192), (1024, 4096, 4096)):
        w = torch.randn(N, K, device=dev) * 0.02
        wq4, sw4, sg4 = zqkernels.quantize_weight(w, bits=4, group_size=128, scale="int", alpha=1024)
        _, _, sg4f = zqkernels.quantize_weight(w, bits=4, group_size=128, scale="float")
        w8 = int4_to_int8_cuda(wq4, K)
        wq8, sw8 = zqkernels.quantize_weight(w)
        xq, sx = zqkernels.quantize_per_token(torch.randn(M, K, device=dev))
        row = {"M": M, "N": N, "K": K}
        cands = {f"int8_gemm/{t}": (lambda t=t: zqkernels.int8_gemm(xq, wq8, sx, sw8, tile=t))
                 for t in ("128x128x128_coop", "128x128x128_c2x1_pp", "128x256x128_c2x1_coop")}
        for t in ("128x128x128_coop", "128x128x128_c2x1_coop"):
            cands[f"group_int/{t}"] = lambda t=t: group_gemm_cuda("probe", xq, w8, sx, sw4, sg4, None, BF, 0, 1024, 8, t)
            cands[f"group_float/{t}"] = lambda t=t: group_gemm_cuda("probe", xq, w8, sx, sw4, sg4f, None, BF, 0, None, 8, t)
        built = zqkernels.info()["gemm_tiles"]
        for t in built.get("sm90_w4a8_mixed_int", []):
            cands[f"w4a8_mixed_int/{t}"] = lambda t=t: group_gemm_cuda("probe", xq, wq4, sx, sw4, sg4, None, BF, 0, 1024,
                                                                       8, t, int4=True)
        _, sw16, sg16 = zqkernels.quantize_weight(w, fmt="int4", scale="int", group_size=128, alpha=16)
        for t in built.get("sm90_w4a8_mixed_fused", []):
            cands[f"w4a8_mixed_fused/{t}"] = lambda t=t: group_gemm_cuda("probe", xq, wq4, sx, sw16, sg16, None, BF, 0, 16,
                                                                         8, t, int4=True)
        for t in built.get("sm90_w4a8_mixed_float", []):
            cands[f"w4a8_mixed_float/{t}"] = lambda t=t: group_gemm_cuda("probe", xq, wq4, sx, sw4, sg4f, None, BF, 0,
                                                                         None, 8, t, int4=True)
        for name, fn in cands.items():
            try:
                t = cm.time_calls([fn], dev)
                row[name] = round(2 * M * N * K / t["us"] / 1e6, 1)  # TFLOPS
            except Exception as e:  # noqa: BLE001
                row[name] = f"error: {cm.first_line(e)}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", action="store_true", help="only the tile experiments (TFLOPS)")
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda", 0)
    if args.tiles:
        rows = tiles(dev)
        if args.out:
            cm.write_json(args.out, {"environment": cm.environment(dev), "tiles": rows})
        return 0
    bad = check(dev)
    print(f"correctness: {len(bad)} failures", flush=True)
    rows = [] if args.check_only else bench(dev, args.quick)
    if args.out:
        cm.write_json(args.out, {"environment": cm.environment(dev), "failures": bad, "rows": rows})
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
