"""Runs every built tile of fp8_rowwise / fp8_blockwise on a few awkward problems, one subprocess per
(recipe, tile), and reports which pass against float64 (crash triage; scripts/, not a test)."""

from __future__ import annotations

import subprocess
import sys

CHILD = r'''
import sys, torch, zqkernels
from zqkernels.ops import gemm_options
recipe, tile = sys.argv[1], sys.argv[2]
F8 = torch.float8_e4m3fn
worst = 0.0
for M, N, K in [(1, 256, 256), (37, 520, 1024), (300, 512, 1024), (130, 384, 384)]:
    g = torch.Generator(device="cuda").manual_seed(M)
    xq = (torch.randn(M, K, device="cuda", generator=g) * 8).to(F8)
    wq = (torch.randn(N, K, device="cuda", generator=g) * 8).to(F8)
    bias = torch.randn(N, device="cuda").to(torch.bfloat16)
    if recipe == "fp8_blockwise":
        sx = torch.rand(M, K // 128, device="cuda") * 0.01 + 1e-3
        sw = torch.rand(-(-N // 128), K // 128, device="cuda") * 0.01 + 1e-3
        dx = xq.double() * sx.double().repeat_interleave(128, 1)
        dw = wq.double() * sw.double().repeat_interleave(128, 0)[:N].repeat_interleave(128, 1)
        with gemm_options(tile=tile):
            y = zqkernels.fp8_block_gemm(xq, wq, sx, sw, bias, activation="silu")
    else:
        sx = torch.rand(M, device="cuda") + 0.5
        sw = torch.rand(N, device="cuda") * 1e-3
        dx = xq.double() * sx.double()[:, None]
        dw = wq.double() * sw.double()[:, None]
        with gemm_options(tile=tile):
            y = zqkernels.fp8_gemm(xq, wq, sx, sw, bias, activation="silu")
    ref = torch.nn.functional.silu(dx @ dw.t() + bias.double())
    torch.cuda.synchronize()
    e = float((y.double() - ref).norm() / ref.norm())
    worst = max(worst, e)
print(f"{worst:.2e}")
'''


def main() -> None:
    import zqkernels

    tiles = zqkernels.info()["gemm_tiles"]
    for recipe in ("fp8_rowwise", "fp8_blockwise"):
        for tile in tiles.get(f"sm90_{recipe}", []):
            p = subprocess.run([sys.executable, "-c", CHILD, recipe, tile], capture_output=True, text=True, timeout=300)
            last = (p.stdout.strip().splitlines() or [""])[-1]
            err = "" if p.returncode == 0 else (p.stderr.strip().splitlines() or ["?"])[-1][:160]
            print(f"{recipe:14s} {tile:26s} rc={p.returncode} worst_rel={last} {err}", flush=True)


if __name__ == "__main__":
    main()
