"""Tuning probe: every int8 GEMM tile of every arch, straight through zqkernels._C.

Checks each tile (kernels with bf16 output of recipe int8_rowwise, named "arch/tile", e.g.
"sm90/128x256x128_c2x1_coop") against a float64 reference on random data, then times it on the
benchmark shape grid (inputs rotated past L2, CUDA-graph replays, median) next to torch._int_mm,
torch._scaled_mm FP8 row-wise and bf16 torch.matmul from the same run. For M <= 256 it also times
the sm90 dispatched (auto) tile with programmatic dependent launch on and off (auto_pdl1 /
auto_pdl0). Its output picks the dispatch tables in src/cuda/gemm_dispatch.cpp; the tiles are the
rows of cmake/gemm_tiles.cmake, where tiles no dispatch table names (EXPERIMENT) are only built
with -DZQ_EXPERIMENT_TILES=ON. The product benchmark is benchmarks/bench_w8a8.py.

    python scripts/probe_gemm.py [--json out.json] [--backend sm90] [--quick]
        [--configs sm90/swap_64x16x256_pp,...] [--interleave sm90/A,sm90/B] [--swizzle-sweep]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

try:
    from zqkernels import _C
except ImportError:  # a bare CMake build tree on PYTHONPATH
    import _C

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import time_graph  # noqa: E402  (the benchmarks' one timer)

L2_BYTES = 50 * 2**20
RECIPE = "int8_rowwise"
OUT_BF16 = 0  # out_dtype codes of _C: 0 bf16, 1 fp16, 2 fp32
# The sm90 large-M tiles the scheduler swizzle/raster sweep times.
SWEEP_TILES = ("sm90/128x256x128_c2x1_coop", "sm90/128x128x128_c2x1_pp")


def compiled_archs() -> list[str]:
    """Archs with int8_rowwise bf16 kernels in this build, sm90 first."""
    have = {k[0] for k in _C.gemm_kernels() if k[1] == RECIPE and k[3] == OUT_BF16}
    return [a for a in ("sm90", "sm80") if a in have] + sorted(have - {"sm90", "sm80"})


def runnable_archs(dev) -> list[str]:
    """compiled_archs() less sm90 on a GPU other than compute capability 9.0 (sm90a code)."""
    cc = torch.cuda.get_device_capability(dev)
    return [a for a in compiled_archs() if a != "sm90" or cc == (9, 0)]


def arch_tiles(arch: str) -> list[tuple[int, str, bool]]:
    """(kernel id, "arch/tile", dispatched) of every bf16-output int8_rowwise kernel of `arch`."""
    return [
        (kid, f"{a}/{tile}", dispatched)
        for kid, (a, recipe, tile, out_code, dispatched) in enumerate(_C.gemm_kernels())
        if a == arch and recipe == RECIPE and out_code == OUT_BF16
    ]


def find_kernel(name: str, default_arch: str = "sm90") -> int:
    """Kernel id of "arch/tile" (a bare tile name means `default_arch`); exits if not built."""
    arch, tile = name.split("/", 1) if "/" in name else (default_arch, name)
    kid = _C.gemm_find(arch, RECIPE, tile, OUT_BF16)
    if kid < 0:
        have = ", ".join(n for a in compiled_archs() for _, n, _ in arch_tiles(a))
        sys.exit(
            f"probe_gemm: no kernel {arch}/{tile} (bf16) in this build (experiment tiles need "
            f"-DZQ_EXPERIMENT_TILES=ON); built: {have}"
        )
    return kid


def workspace(kid, M, N, K, dev):
    n = _C.gemm_workspace_size(kid, M, N, K, dev.index)
    return torch.empty(n, dtype=torch.uint8, device=dev) if n else None


def rand_int8(shape, kind, dev):
    """uniform: every int8 value equally likely (worst case for power); gauss: a Gaussian
    quantized symmetrically per row, i.e. what QLinear really feeds the GEMM (|q| ~ 30 typical)."""
    if kind == "uniform":
        return torch.randint(-127, 128, shape, dtype=torch.int8, device=dev)
    x = torch.randn(shape, device=dev)
    s = x.abs().amax(-1, keepdim=True) / 127
    return torch.round(x / s).clamp(-127, 127).to(torch.int8)


def large_inputs(M, N, K, kind, dev):
    """Two input sets (2 x the operands of a large problem is already far past L2) for the
    large-M experiments: activations, weights, scales, outputs."""
    xs = [rand_int8((M, K), kind, dev) for _ in range(2)]
    wl = [rand_int8((N, K), kind, dev) for _ in range(2)]
    sx = torch.rand(M, device=dev) + 0.5
    sw = torch.rand(N, device=dev) + 0.5
    outs = [torch.empty(M, N, dtype=torch.bfloat16, device=dev) for _ in range(2)]
    return xs, wl, sx, sw, outs


def ref(xq, wq, sx, sw):
    acc = xq.double() @ wq.double().t()
    return (acc * sx.double()[:, None] * sw.double()[None, :]).to(torch.bfloat16)


def call(kid, xq, wq, sx, sw, out, ws):
    """One launch of kernel `kid`: out[M, N] (bf16) = (xq[M, K] @ wq[N, K]^T) * sx[:, None] * sw[None, :]."""
    M, K = xq.shape
    N = wq.shape[0]
    _C.gemm_run(
        kid,
        xq.data_ptr(),
        xq.stride(0),
        wq.data_ptr(),
        wq.stride(0),
        sx.data_ptr(),
        sw.data_ptr(),
        0,
        out.data_ptr(),
        M,
        N,
        K,
        ws.data_ptr() if ws is not None else 0,
        ws.numel() if ws is not None else 0,
        xq.device.index,
        torch.cuda.current_stream().cuda_stream,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--backend", "--arch", dest="backend", action="append", help="sm90 | sm80 (repeatable)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data", default="gauss", choices=["gauss", "uniform"])
    ap.add_argument(
        "--configs",
        default="",
        help='comma-separated tiles to time, "arch/tile" or a bare tile name (default all)',
    )
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument(
        "--interleave",
        default="",
        help='comma-separated tiles ("arch/tile"; a bare name means sm90): time them round-robin '
        "on the large problems",
    )
    ap.add_argument(
        "--swizzle-sweep",
        action="store_true",
        help=f"time {' and '.join(SWEEP_TILES)} on the large problems under each scheduler swizzle/raster",
    )
    ap.add_argument("--problems", default="", help="M,N,K;M,N,K;... instead of the benchmark grid")
    args = ap.parse_args()
    dev = torch.device("cuda", torch.cuda.current_device())
    backends = args.backend or runnable_archs(dev)
    Ms = [1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    if args.quick:
        Ms = [16, 64, 256, 2048, 8192]
    NKs = [(4096, 4096), (22016, 4096), (4096, 11008)]
    problems = [(M, N, K) for (N, K) in NKs for M in Ms] + [(8192, 8192, 8192)]
    if args.problems:
        problems = [tuple(int(v) for v in p.split(",")) for p in args.problems.split(";") if p]
    wanted = [c for c in args.configs.split(",") if c]
    rows = []
    torch.manual_seed(0)

    # Correctness of every tile on awkward shapes first.
    bad = 0
    for be in backends if not args.no_check else []:
        for kid, name, dispatched in arch_tiles(be):
            for M, N, K in [(1, 4104, 4112), (37, 24, 16), (128, 4096, 4096), (1000, 264, 1040)]:
                xq = torch.randint(-127, 128, (M, K), dtype=torch.int8, device=dev)
                wq = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=dev)
                sx = torch.rand(M, device=dev) * 1e-2 + 1e-3
                sw = torch.rand(N, device=dev) * 1e-2 + 1e-3
                out = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device=dev)
                ws = workspace(kid, M, N, K, dev)
                call(kid, xq, wq, sx, sw, out, ws)
                torch.cuda.synchronize()
                r = ref(xq, wq, sx, sw).float()
                err = ((out.float() - r).norm() / r.norm()).item()
                ok = err < 1e-2 and not out.isnan().any().item()
                bad += not ok
                tag = "" if dispatched else " (experiment)"
                print(f"check {name}{tag} M={M} N={N} K={K}: rel err {err:.2e} {'ok' if ok else 'FAIL'}")

    if args.interleave:
        tiles = [t for t in args.interleave.split(",") if t]
        ids = {t: find_kernel(t) for t in tiles}
        for M, N, K in [(8192, 8192, 8192), (8192, 22016, 4096), (8192, 4096, 11008), (4096, 4096, 4096)]:
            xs, wl, sx, sw, outs = large_inputs(M, N, K, args.data, dev)
            wsp = {t: workspace(kid, M, N, K, dev) for t, kid in ids.items()}
            res = {t: [] for t in tiles}
            for _ in range(5):  # round-robin so every tile sees the same thermal history
                for t in tiles:
                    fns = [
                        lambda i=i, kid=ids[t], ws=wsp[t]: call(kid, xs[i], wl[i], sx, sw, outs[i], ws)
                        for i in range(2)
                    ]
                    res[t].append(2 * M * N * K / time_graph(fns, reps=8) / 1e12)
            cells = [f"{t}={statistics.median(v):5.0f}T[{min(v):.0f}-{max(v):.0f}]" for t, v in res.items()]
            print(f"interleave M={M} N={N} K={K}: " + "  ".join(cells), flush=True)
        return

    if args.swizzle_sweep:
        ids = {t: find_kernel(t) for t in SWEEP_TILES}
        try:
            for M, N, K in [
                (8192, 8192, 8192),
                (8192, 22016, 4096),
                (4096, 4096, 11008),
                (2048, 22016, 4096),
            ]:
                xs, wl, sx, sw, outs = large_inputs(M, N, K, args.data, dev)
                cells = []
                for t, kid in ids.items():
                    wsp = workspace(kid, M, N, K, dev)
                    for sz, ra in [(0, 0), (2, 0), (4, 0), (8, 0), (4, 1), (4, 2), (8, 2)]:
                        _C._debug_set_scheduler(sz, ra)
                        fns = [
                            lambda i=i, kid=kid, ws=wsp: call(kid, xs[i], wl[i], sx, sw, outs[i], ws)
                            for i in range(2)
                        ]
                        tm = time_graph(fns, reps=10)
                        cells.append(f"{t.split('/')[-1]}/s{sz}r{ra}={2 * M * N * K / tm / 1e12:5.0f}T")
                print(f"swizzle M={M} N={N} K={K}: " + " ".join(cells), flush=True)
        finally:
            _C._debug_set_scheduler(0, 0)  # the defaults
        return

    # The PDL on/off comparison times the sm90 dispatched tile (PDL applies to the sm90 kernels).
    pdl_arch = "sm90" if "sm90" in runnable_archs(dev) else None
    if pdl_arch is None:
        print("note: no sm90 kernels runnable here: no auto_pdl1/auto_pdl0 comparison", flush=True)

    for M, N, K in problems:
        per_call = M * K + N * K + 2 * M * N
        copies = max(2, math.ceil(2 * L2_BYTES / per_call))
        copies = min(copies, 64)
        xs = [rand_int8((M, K), args.data, dev) for _ in range(copies)]
        ws_ = [rand_int8((N, K), args.data, dev) for _ in range(copies)]
        sx = torch.rand(M, device=dev) + 0.5
        sw = torch.rand(N, device=dev) + 0.5
        outs = [torch.empty(M, N, dtype=torch.bfloat16, device=dev) for _ in range(copies)]
        row = {"M": M, "N": N, "K": K}
        for be in backends:
            for kid, name, _dispatched in arch_tiles(be):
                if wanted and name not in wanted and name.split("/", 1)[1] not in wanted:
                    continue
                wsp = workspace(kid, M, N, K, dev)
                fns = [
                    lambda i=i, kid=kid, wsp=wsp: call(kid, xs[i], ws_[i], sx, sw, outs[i], wsp)
                    for i in range(copies)
                ]
                try:
                    row[name] = time_graph(fns)
                except RuntimeError as e:
                    row[name] = None
                    print("  fail", name, str(e)[:200])
        pdl_line = ""
        if pdl_arch is not None and M <= 256:
            tile = _C.gemm_select(pdl_arch, RECIPE, OUT_BF16, M, N, K)
            if tile is None:
                sys.exit(f"probe_gemm: no {pdl_arch} {RECIPE} bf16 dispatch table")
            auto = f"{pdl_arch}/{tile}"
            kid = find_kernel(auto)
            row["auto_tile"] = auto
            wsp = workspace(kid, M, N, K, dev)
            fns = [
                lambda i=i, kid=kid, wsp=wsp: call(kid, xs[i], ws_[i], sx, sw, outs[i], wsp)
                for i in range(copies)
            ]
            pdl_before = _C._debug_pdl()
            try:
                for pdl in (True, False):
                    _C._debug_set_pdl(pdl)
                    try:
                        row[f"auto_pdl{int(pdl)}"] = time_graph(fns)
                    except RuntimeError as e:
                        row[f"auto_pdl{int(pdl)}"] = None
                        print(f"  fail {auto} pdl={int(pdl)}", str(e)[:200])
            finally:
                _C._debug_set_pdl(pdl_before)
            on, off = row["auto_pdl1"], row["auto_pdl0"]
            pdl_line = (
                f"  pdl {auto}: auto_pdl1={'fail' if on is None else f'{on * 1e6:.1f}us'}"
                f" auto_pdl0={'fail' if off is None else f'{off * 1e6:.1f}us'}"
            )
            if on and off:
                pdl_line += f" (off/on {off / on:.3f})"
        if M > 16:
            wts = [w.t() for w in ws_]
            row["int_mm"] = time_graph([lambda i=i: torch._int_mm(xs[i], wts[i]) for i in range(copies)])
        # fp8 operands from the same values (int8 magnitudes <= 127 are exact... up to e4m3's 3-bit
        # mantissa): the same data distribution, hence the same power draw, as the int8 runs.
        xf = [x.to(torch.float8_e4m3fn) for x in xs]
        wf = [w.to(torch.float8_e4m3fn) for w in ws_]
        sa = torch.rand(M, 1, device=dev) + 0.5
        sb = torch.rand(1, N, device=dev) + 0.5
        row["fp8row"] = time_graph(
            [
                lambda i=i: torch._scaled_mm(
                    xf[i], wf[i].t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16
                )
                for i in range(copies)
            ]
        )
        xb = [torch.randn(M, K, dtype=torch.bfloat16, device=dev) for _ in range(min(copies, 8))]
        wb = [torch.randn(N, K, dtype=torch.bfloat16, device=dev) for _ in range(min(copies, 8))]
        row["bf16"] = time_graph([lambda i=i: torch.matmul(xb[i], wb[i].t()) for i in range(len(xb))])
        rows.append(row)
        flops = 2 * M * N * K
        cells = []
        best = None
        for k, v in row.items():
            if k in ("M", "N", "K", "auto_tile") or v is None:
                continue
            cells.append(f"{k}={v * 1e6:7.1f}us/{flops / v / 1e12:6.0f}T")
            if "/" in k and (best is None or v < row[best]):
                best = k
        print(f"M={M:5d} N={N:5d} K={K:5d} best={best} | " + "  ".join(cells), flush=True)
        if pdl_line:
            print(pdl_line, flush=True)
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    print("tile check failures:", bad)


if __name__ == "__main__":
    main()
