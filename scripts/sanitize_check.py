"""Every kernel once, on small awkward shapes, against the reference: the workload that
scripts/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck).

Covers quantize_per_token (each input dtype, both the register path and the two-pass path), the
fused row ops (register, element and streaming paths, the few-rows cluster path, residual outputs), every
GEMM kernel of the registry (each tile and output type, with bias, per-tensor scales and a row-
strided xq; int8 output with a static out_scale, a float32 bias and gelu), and the PDL probe
followed by a GEMM. Exits non-zero on a mismatch; the sanitizer's own exit code reports memory
errors and races. Run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that out-of-bounds accesses are not hidden inside the caching allocator's blocks.
"""

from __future__ import annotations

import sys

import torch
import zqkernels
from zqkernels import _ext
from zqkernels.reference import int8_gemm_ref, quantize_per_token_ref

OUT = {0: torch.bfloat16, 1: torch.float16, 2: torch.float32, 3: torch.int8}  # gemm_kernels() output codes


def main() -> int:
    torch.manual_seed(0)
    C = _ext._C
    dev = "cuda"
    bad = 0
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for M, K in ((3, 4096), (5, 100), (2, 40000)):
            x = torch.randn(M, K, device=dev, dtype=dtype)
            xq, sx = zqkernels.quantize_per_token(x)
            rq, rs = quantize_per_token_ref(x.cpu())
            if not (torch.equal(xq.cpu(), rq) and torch.equal(sx.cpu(), rs)):
                print(f"quantize mismatch {dtype} M={M} K={K}")
                bad += 1
    # Fused row ops: register path, element path (K % 8 != 0) and streaming path (wide rows), with
    # residual outputs (also in place).
    from zqkernels.reference import row_quant_ref

    # K = 14336: the few-rows cluster path (8 CTAs a row, distributed shared memory); 4096 with the
    # cluster sizes forced (2 and 4 CTAs), then back to the library's choice.
    for K, ctas in ((1000, -1), (1001, -1), (40000, -1), (14336, -1), (4096, 2), (4096, 4)):
        C._debug_set_row_cluster(ctas)
        x = torch.randn(3, K, device=dev, dtype=torch.bfloat16)
        r = torch.randn(3, K, device=dev, dtype=torch.bfloat16)
        w, b = torch.rand(K, device=dev), torch.randn(K, device=dev)
        outs = {
            "rmsnorm": zqkernels.rmsnorm_quant(x, w),
            "add_layernorm normed": zqkernels.add_layernorm_quant(x, r.clone(), w, b, residual_out="normed", inplace=True),
            "add_rmsnorm sum": zqkernels.add_rmsnorm_quant(x, r, w),
            "gelu_tanh": zqkernels.bias_gelu_quant(x, b, "tanh"),
            "silu_mul": zqkernels.silu_mul_quant(torch.cat([x, r], 1)),
        }
        refs = {
            "rmsnorm": row_quant_ref("rmsnorm", x.cpu(), None, w.cpu(), None, 1e-6),
            "add_layernorm normed": row_quant_ref("layernorm", x.cpu(), r.cpu(), w.cpu(), b.cpu(), 1e-5, "normed"),
            "add_rmsnorm sum": row_quant_ref("rmsnorm", x.cpu(), r.cpu(), w.cpu(), None, 1e-6, "sum"),
            "gelu_tanh": row_quant_ref("gelu_tanh", x.cpu(), None, None, b.cpu()),
            "silu_mul": row_quant_ref("silu_mul", torch.cat([x, r], 1).cpu()),
        }
        for name, got in outs.items():
            d = (got[0].cpu().int() - refs[name][0].int()).abs().max()
            if int(d) > 1:
                print(f"fused {name} K={K} cluster {ctas}: codes differ by {int(d)}")
                bad += 1
    C._debug_set_row_cluster(-1)
    cc = torch.cuda.get_device_capability()
    for arch, recipe, tile, code, _ in C.gemm_kernels():
        if arch == "sm90" and cc != (9, 0):
            continue
        out_dtype = OUT[code]
        int8_out = out_dtype == torch.int8
        # int8 output: N % 16 == 0 (16-byte rows for sm90's TMA store), a float32 bias, a static out_scale
        shapes = ((5, 32, 48), (70, 144, 272)) if int8_out else ((5, 24, 48), (70, 136, 272))
        for M, N, K in shapes:
            xbuf = torch.randint(-128, 128, (M, K + 16), dtype=torch.int8, device=dev)
            xq = xbuf[:, :K]
            wq = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=dev)
            sx = torch.rand(M, device=dev) * 1e-2
            sw = torch.rand(1, device=dev) * 1e-2
            bias = torch.randn(N, device=dev)
            if int8_out:
                act = "gelu"
                y64 = int8_gemm_ref(xq, wq, sx, sw, bias, torch.float64, activation=act)
                out_scale = max(float(y64.abs().max()), 1e-6) / 100  # largest |y| at 100 codes
                y = zqkernels.int8_gemm(xq, wq, sx, sw, bias, out_dtype, backend=arch, tile=tile, activation=act,
                                        out_scale=out_scale)
                ref = int8_gemm_ref(xq, wq, sx, sw, bias, out_dtype, activation=act, out_scale=out_scale)
                d = int((y.int() - ref.int()).abs().max()) if y.numel() else 0
                if d > 1:
                    print(f"gemm mismatch {arch}/{tile}/{out_dtype} M={M} N={N} K={K}: codes differ by {d}")
                    bad += 1
                continue
            bias = bias.to(out_dtype)
            y = zqkernels.int8_gemm(xq, wq, sx, sw, bias, out_dtype, backend=arch, tile=tile)
            ref = int8_gemm_ref(xq, wq, sx, sw, bias, out_dtype)
            err = float((y.double() - ref.double()).norm() / ref.double().norm())
            if err > 1e-2:
                print(f"gemm mismatch {arch}/{tile}/{out_dtype} M={M} N={N} K={K}: rel err {err:.3g}")
                bad += 1
    # PDL: a late producer, then a GEMM that must wait for it.
    M, N, K = 16, 256, 512
    xq = torch.randint(-127, 128, (M, K), dtype=torch.int8, device=dev)
    wq = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=dev)
    sx = torch.rand(M, device=dev)
    sw = torch.rand(N, device=dev)
    dst = torch.zeros_like(xq)
    stream = torch.cuda.current_stream().cuda_stream
    C._debug_delayed_copy(xq.data_ptr(), dst.data_ptr(), dst.numel(), 20, 0, stream)
    y = zqkernels.int8_gemm(dst, wq, sx, sw)
    ref = int8_gemm_ref(xq, wq, sx, sw)
    if float((y.double() - ref.double()).norm() / ref.double().norm()) > 1e-2:
        print("PDL probe: the GEMM read the producer's output before it was written")
        bad += 1
    torch.cuda.synchronize()
    print(f"sanitize_check: {len(C.gemm_kernels())} GEMM kernels, quantize, PDL probe: {bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
