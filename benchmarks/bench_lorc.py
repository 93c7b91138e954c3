"""What LoRC costs at inference: QLinear forward with and without rank-r factors (issue 9 item 3).

LoRC adds ``(x @ A) @ B`` ([K, r] and [r, N] bf16 factors) to the quantized GEMM's output, today as
two small torch GEMMs (``torch.addmm`` onto the output). This measures that cost, to decide whether
fusing the rank-r update into the GEMM's output write is worthwhile:

- device time per forward (CUDA graph replay, inputs rotated past L2, median), QLinear w8a8 and
  w4a8 (g128) with rank 0 / 8 / 32, bf16 activations, against torch.matmul bf16 of the same shape;
- eager host time per call (back-to-back calls at M = 1, one sync), rank 0 against rank 8.

``python benchmarks/bench_lorc.py [--out DIR]`` writes ``lorc_<commit>_<gpu>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402
import zqkernels as zq  # noqa: E402

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]  # (N, K)
MS = [1, 16, 128, 1024, 4096]
RANKS = [0, 8, 32]


def qlinear(scheme: str, N: int, K: int, rank: int, dev: torch.device) -> torch.nn.Module:
    lin = torch.nn.Linear(K, N, bias=False, dtype=torch.bfloat16, device=dev)
    kw = {"group_size": 128} if scheme == "w4a8" else {}
    q = zq.QLinear.from_linear(lin, scheme=scheme, **kw)
    if rank:
        wd = lin.weight.float() + 0.01 * torch.randn_like(lin.weight.float())  # any float weight: time only
        q.add_lorc(wd, rank)
    return q


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    rot = c.device_rotate_bytes(dev)
    rows = []
    shapes = SHAPES[:1] if args.quick else SHAPES
    ms = [1, 128, 4096] if args.quick else MS
    with torch.inference_mode():
        for N, K in shapes:
            mods = {(s, r): qlinear(s, N, K, r, dev) for s in ("w8a8", "w4a8") for r in RANKS}
            w = torch.randn(N, K, dtype=torch.bfloat16, device=dev)
            for M in ms:
                copies = c.rotation_copies(M * K * 2 + N * K, rot)
                xs = [torch.randn(M, K, dtype=torch.bfloat16, device=dev) for _ in range(copies)]
                t_bf16 = c.time_calls([lambda x=x: torch.matmul(x, w.t()) for x in xs], dev)["us"]
                row = {"M": M, "N": N, "K": K, "bf16_us": t_bf16}
                for (s, r), q in mods.items():
                    row[f"{s}_r{r}_us"] = c.time_calls([lambda x=x, q=q: q(x) for x in xs], dev)["us"]
                for s in ("w8a8", "w4a8"):
                    base = row[f"{s}_r0_us"]
                    for r in RANKS[1:]:
                        row[f"{s}_r{r}_overhead"] = row[f"{s}_r{r}_us"] / base - 1
                rows.append(row)
                print(f"M={M:5d} N={N} K={K}: bf16 {t_bf16:8.1f} | " + " | ".join(
                    f"{s} r0 {row[f'{s}_r0_us']:7.1f} r8 {row[f'{s}_r8_overhead'] * 100:+5.1f}% "
                    f"r32 {row[f'{s}_r32_overhead'] * 100:+5.1f}%" for s in ("w8a8", "w4a8")), flush=True)
        # eager host time per call, M = 1, small layer
        x = torch.randn(1, 256, dtype=torch.bfloat16, device=dev)
        q0, q8 = qlinear("w8a8", 256, 256, 0, dev), qlinear("w8a8", 256, 256, 8, dev)
        w = torch.randn(256, 256, dtype=torch.bfloat16, device=dev)
        host = c.back_to_back({"torch.matmul bf16": lambda: torch.matmul(x, w.t()), "QLinear w8a8 r0": lambda: q0(x),
                               "QLinear w8a8 r8": lambda: q8(x)}, c.sync_for(dev))
    host_us = {k: v["s"] * 1e6 for k, v in host.items()}
    print("eager host us/call (M=1, 256x256):", {k: round(v, 1) for k, v in host_us.items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = c.gpu_slug(c.device_name(dev))
    doc = {"env": c.environment(dev), "commit": c.git_commit(), "rows": rows, "eager_host_us": host_us,
           "method": "CUDA graph replay, inputs rotated past L2, median; eager: back_to_back at M=1"}
    c.write_json(out / f"lorc_{c.git_commit()}_{name}{'_quick' if args.quick else ''}.json", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
