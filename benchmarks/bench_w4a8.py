"""W4A8 GEMM benchmark (issue 18): every W4A8 variant next to bf16, FP8 and W8A8, same GPU, same run.

    python benchmarks/bench_w4a8.py                       # 8 shapes x 11 M (~7-8 min on an H100)
    python benchmarks/bench_w4a8.py --quick               # 8b.gateup, 70b.down x 6 M (~1.5-2.5 min)
    python benchmarks/bench_w4a8.py --shapes 8b.qkv,8b.o,8b.gateup,8b.down --host
    python benchmarks/bench_w4a8.py --shapes 8b.o,14336x4096 --ms 1,64,2048 --out r.json
    python benchmarks/bench_w4a8.py --dry-run             # CPU smoke test (reference ops, no timing claims)

Columns per problem (M tokens, N out_features, K in_features; all -> bf16, no bias), each on the
same random data (x ~ N(0, 1), w ~ N(0, 0.02^2), one weight per shape, one x per M, every format
quantized from those):
    bf16            torch.matmul(x_bf16, w_bf16.t())
    sm_fp8          torch._scaled_mm row-wise: x e4m3 [M, K], w e4m3 [N, K].t(), scale_a [M, 1],
                    scale_b [1, N] (float32) -> bf16 (cuBLAS); the error text if it raises
    int_mm          torch._int_mm(xq, wq.t()) -> int32, no scales (M > 16 only)
    int8            zqkernels.int8_gemm (W8A8, per-channel weights, per-token activations)
    fp8             zqkernels.fp8_gemm (accumulate="accurate", the default)
    w4i1024_<path>  zqkernels.w4a8_gemm, INT4 weights, integer group scales g = 128, alpha = 1024,
                    max_scale = 1024; path stream (M <= 256 only) / mixed / convert / auto (the default)
    w4i16_<path>    the same with alpha = 16, max_scale = 16 (small integer scales: the library may
                    dispatch another kernel for max_scale <= 16; timed through the public API)
    w4zp_<path>     w4a8_gemm on the zero-point format (quantize_weight(fmt="int4", scale="zp"), scheme
                    w4a8-zp), paths stream (M <= 256 only) / mixed / auto
    w4i16_sk, w4zp_sk, w4fp4_sk  alpha 16 / zero points / FP4 on the mixed path with the stream-K tile
                    swap_128x64x128_coop_sk forced (gemm_options(tile=...)): the K loop over every SM
    w4f_<path>      w4a8_gemm with float group scales (scale="float"), paths mixed / auto
    w4fp4_<path>    zqkernels.w4a8_fp_gemm: FP4 weights (quantize_weight(fmt="fp4", group_size=128),
                    power-of-two scales "m2") x FP8 activations (quantize_per_token(x, e4m3)), path
                    stream (M <= 256 only) / mixed / convert / auto
    w4fp4f_<path>   the same with float ratios (scale="free"), paths mixed / auto
Per cell (JSON): us (median), tflops (2MNK / time), wbytes (bytes of the format's weight tensors:
codes + scales), x_bf16 / x_int8 (speedups: bf16's / int8_gemm's time over this column's, > 1 =
faster), for M <= 64 TBps (effective weight bandwidth, wbytes / time) and frac_copy (TBps over the
copy bandwidth measured at the start of the same run), err (relative Frobenius error of the first
min(M, 64) output rows against the bf16 column's: a sanity check, ~0.1 expected for 4-bit weights;
> 0.5 prints BAD and sets exit status 1), copies (L2 rotation), spread, method.
Printed: one line per (shape, M) with us per column, then a per-M "fastest format" table over all
shapes (time summed over the shapes, i.e. a model made of one of each projection; candidates: every
column except int_mm, which has no scales). --host adds eager host time per call (tiny shapes, back
to back, one sync; _common.back_to_back) of each op next to torch._int_mm / torch.matmul.
Method: benchmarks/_common.time_calls (weights AND activations rotated past L2, CUDA graphs, warm-up,
median). Shapes are built one at a time (all formats of one shape alive, then freed).
Exit status: 0; 1 when a zqkernels column raised or failed its sanity check; 2 on bad usage or
without a CUDA GPU (unless --dry-run); 3 when the CUDA context broke (partial JSON written).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

F8 = torch.float8_e4m3fn
GROUP = 128
# Llama-3-8B / 70B projections (merged qkv and gate|up): name -> (N, K).
SHAPES = {
    "8b.qkv": (6144, 4096), "8b.o": (4096, 4096), "8b.gateup": (28672, 4096), "8b.down": (4096, 14336),
    "70b.qkv": (10240, 8192), "70b.o": (8192, 8192), "70b.gateup": (57344, 8192), "70b.down": (8192, 28672),
}
MS = [1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 8192]
QUICK_SHAPES = ["8b.gateup", "70b.down"]
QUICK_MS = [1, 16, 64, 256, 1024, 2048]
DRY_SHAPES = {"tiny": (256, 512)}
DRY_MS = [1, 32, 300]
STREAM_MAX_M = 256  # path "stream" is forced only up to this M
BW_MAX_M = 64  # effective weight bandwidth reported up to this M
CHECK_ROWS = 64  # sanity check on the first rows of each output
BAD_ERR = 0.5

# Weight formats, quantized once per shape from the same bf16 w: key -> quantize_weight kwargs
# (None: w itself), and the activation each format's columns take.
WFORMATS: dict[str, dict[str, Any] | None] = {
    "bf16": None,
    "fp8": {"fmt": "fp8"},
    "int8": {},
    "i4a1024": {"fmt": "int4", "scale": "int", "group_size": GROUP, "alpha": 1024},
    "i4a16": {"fmt": "int4", "scale": "int", "group_size": GROUP, "alpha": 16},
    "i4f": {"fmt": "int4", "scale": "float", "group_size": GROUP},
    "i4zp": {"fmt": "int4", "scale": "zp", "group_size": GROUP},
    "fp4": {"fmt": "fp4", "group_size": GROUP},
    "fp4f": {"fmt": "fp4", "group_size": GROUP, "scale": "free"},
}
ACT_OF = {"bf16": "bf16", "fp8": "fp8", "int8": "int8", "i4a1024": "int8", "i4a16": "int8", "i4f": "int8",
          "i4zp": "int8", "fp4": "fp8", "fp4f": "fp8"}


class Col:
    """One timed column: fn(acts, weights) -> output; post(out, acts, weights, rows) -> float32 rows
    comparable with bf16's output (the sanity check)."""

    def __init__(self, name: str, label: str, wkey: str, fn: Callable, *, when: Callable[[int], bool] | None = None,
                 ours: bool = True, w4: bool = False, desc: str = "", post: Callable | None = None) -> None:
        self.name, self.label, self.wkey, self.fn = name, label, wkey, fn
        self.when = when or (lambda M: True)
        self.ours, self.w4, self.desc = ours, w4, desc
        self.post = post or (lambda out, a, W, r: out[:r].float())


def columns() -> list[Col]:
    import zqkernels as zq

    bf = torch.bfloat16
    cols = [
        Col("bf16", "bf16", "bf16", lambda a, W: torch.matmul(a["x"], W[0].t()), ours=False,
            desc="torch.matmul(x_bf16, w_bf16.t())"),
        Col("sm_fp8", "smfp8", "fp8",
            lambda a, W: torch._scaled_mm(a["x8"], W[0].t(), scale_a=a["sx8c"], scale_b=W[2], out_dtype=bf),
            ours=False, desc="torch._scaled_mm FP8 row-wise (scale_a [M,1], scale_b [1,N]) -> bf16"),
        Col("int_mm", "intmm", "int8", lambda a, W: torch._int_mm(a["xi"], W[0].t()), when=lambda M: M > 16,
            ours=False, desc="torch._int_mm int8 -> int32, no scales (M > 16)",
            post=lambda out, a, W, r: out[:r].float() * a["sxi"][:r, None] * W[1][None, :]),
        Col("int8", "int8", "int8", lambda a, W: zq.int8_gemm(a["xi"], W[0], a["sxi"], W[1]),
            desc="zqkernels.int8_gemm (W8A8 per channel)"),
        Col("fp8", "fp8", "fp8", lambda a, W: zq.fp8_gemm(a["x8"], W[0], a["sx8"], W[1]),
            desc="zqkernels.fp8_gemm (accurate)"),
    ]
    for alpha, tag in ((1024, "1k"), (16, "16")):
        for path in ("stream", "mixed", "convert", "auto"):
            cols.append(Col(
                f"w4i{alpha}_{path}", f"i{tag}.{path[0]}", f"i4a{alpha}",
                lambda a, W, s=alpha, p=path: zq.w4a8_gemm(a["xi"], W[0], a["sxi"], W[1], W[2], max_scale=s, path=p),
                when=(lambda M: M <= STREAM_MAX_M) if path == "stream" else None, w4=True,
                desc=f"zqkernels.w4a8_gemm int scales g={GROUP} alpha={alpha} max_scale={alpha} path={path}"))
    for path in ("stream", "mixed", "auto"):  # the zero-point format (scheme w4a8-zp)
        cols.append(Col(
            f"w4zp_{path}", f"zp.{path[0]}", "i4zp",
            lambda a, W, p=path: zq.w4a8_gemm(a["xi"], W[0], a["sxi"], W[1], W[2], path=p),
            when=(lambda M: M <= STREAM_MAX_M) if path == "stream" else None, w4=True,
            desc=f"zqkernels.w4a8_gemm zero-point format (int16 sz) g={GROUP} path={path}"))
    # The mixed mainloop's stream-K tile (few weight tiles at N <= 8192: the K loop over every SM).
    sk = "swap_128x64x128_coop_sk"
    for name, label, wkey, scale in (("w4i16_sk", "i16.k", "i4a16", 16), ("w4zp_sk", "zp.k", "i4zp", None)):
        cols.append(Col(
            name, label, wkey,
            lambda a, W, s=scale: _with_tile(sk, zq.w4a8_gemm, a["xi"], W[0], a["sxi"], W[1], W[2], max_scale=s,
                                            path="mixed"),
            w4=True, desc=f"zqkernels.w4a8_gemm {wkey} g={GROUP} path=mixed tile={sk}"))
    cols.append(Col(
        "w4fp4_sk", "fp4.k", "fp4",
        lambda a, W: _with_tile(sk, zq.w4a8_fp_gemm, a["x8"], W[0], a["sx8"], W[1], W[2], path="mixed"),
        w4=True, desc=f"zqkernels.w4a8_fp_gemm FP4 (m2 scales, g={GROUP}) path=mixed tile={sk}"))
    for path in ("mixed", "auto"):
        cols.append(Col(
            f"w4f_{path}", f"if.{path[0]}", "i4f",
            lambda a, W, p=path: zq.w4a8_gemm(a["xi"], W[0], a["sxi"], W[1], W[2], path=p), w4=True,
            desc=f"zqkernels.w4a8_gemm float scales g={GROUP} path={path}"))
    for wkey, policy, paths in (("fp4", "m2", ("stream", "mixed", "convert", "auto")), ("fp4f", "free", ("mixed", "auto"))):
        for path in paths:
            cols.append(Col(
                f"w4{wkey}_{path}", f"{wkey}.{path[0]}", wkey,
                lambda a, W, p=path: zq.w4a8_fp_gemm(a["x8"], W[0], a["sx8"], W[1], W[2], path=p),
                when=(lambda M: M <= STREAM_MAX_M) if path == "stream" else None, w4=True,
                desc=f"zqkernels.w4a8_fp_gemm FP4 weights ({policy} scales, g={GROUP}) x FP8, path={path}"))
    return cols


def _with_tile(tile: str, fn, *args, **kw):
    from zqkernels.ops import gemm_options

    with gemm_options(tile=tile):
        return fn(*args, **kw)


def nbytes(ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def build_weights(N: int, K: int, dev: torch.device, rot: int, seed: int,
                  max_copies: int = cm.MAX_COPIES) -> dict[str, dict[str, Any]]:
    """Every weight format of one shape, each with enough clones to rotate past L2 on its own
    (the most any M needs): key -> {copies: [tuple, ...], bytes} or {error}."""
    import zqkernels as zq

    torch.manual_seed(seed)
    w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02
    out: dict[str, dict[str, Any]] = {}
    for key, kw in WFORMATS.items():
        try:
            W = (w,) if kw is None else tuple(zq.quantize_weight(w, **kw))
            wb = nbytes(W)
            copies = [W] + [tuple(t.clone() for t in W) for _ in range(cm.rotation_copies(wb, rot, max_copies) - 1)]
            if key == "fp8":  # + _scaled_mm's scale_b [1, N] (a view: not counted twice)
                copies = [(c[0], c[1], c[1].reshape(1, -1)) for c in copies]
            out[key] = {"copies": copies, "bytes": wb}
        except Exception as e:  # noqa: BLE001 - a format that cannot be built says why
            out[key] = {"error": cm.error_text(e)}
            cm.ensure_alive(dev, f"quantize_weight {key}")
    return out


def act_bytes(M: int, K: int) -> dict[str, int]:
    return {"bf16": 2 * M * K, "int8": M * K + 4 * M, "fp8": M * K + 4 * M}


def build_acts(M: int, K: int, dev: torch.device, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """n copies (clones: the same values) of one x in every activation format."""
    import zqkernels as zq

    torch.manual_seed(seed + 1 + M)
    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    xi, sxi = zq.quantize_per_token(x)
    x8, sx8 = zq.quantize_per_token(x, F8)
    base = {"x": x, "xi": xi, "sxi": sxi, "x8": x8, "sx8": sx8}
    copies = [base] + [{k: v.clone() for k, v in base.items()} for _ in range(n - 1)]
    for a in copies:
        a["sx8c"] = a["sx8"].reshape(-1, 1)
    return copies


def bench_row(shape: str, N: int, K: int, M: int, W: dict, cols: list[Col], dev: torch.device, rot: int,
              target_s: float, copy_tbps: float, seed: int, min_reps: int = cm.MIN_REPS) -> dict[str, Any]:
    ab = act_bytes(M, K)
    todo = [c for c in cols if c.when(M)]
    need = {}
    for c in todo:
        wf = W[c.wkey]
        if "error" not in wf:
            need[c.name] = min(len(wf["copies"]), cm.rotation_copies(wf["bytes"] + ab[ACT_OF[c.wkey]], rot))
    acts = build_acts(M, K, dev, max(need.values(), default=1), seed)
    rows = min(M, CHECK_ROWS)
    row: dict[str, Any] = {"shape": shape, "N": N, "K": K, "M": M}
    ref = None
    for c in todo:
        wf = W[c.wkey]
        if "error" in wf:
            row[c.name] = {"error": f"quantize_weight ({c.wkey}): {wf['error']}"}
            continue
        n = need[c.name]
        calls = [lambda a=acts[i], w=wf["copies"][i], f=c.fn: f(a, w) for i in range(n)]
        try:
            out = calls[0]()
            got = c.post(out, acts[0], wf["copies"][0], rows)
            del out
            err = None
            if c.name == "bf16":
                ref = got
            elif ref is not None:
                err = float((got - ref).norm() / ref.norm().clamp_min(1e-30))
            del got
            t = cm.time_calls(calls, dev, target_s=target_s, min_reps=min_reps)
        except Exception as e:  # noqa: BLE001 - one failure is recorded, the run goes on
            row[c.name] = {"error": cm.error_text(e)}
            cm.ensure_alive(dev, f"{c.name} at {shape} M={M}")
            continue
        us = t["us"]
        wb = wf["bytes"] if c.name != "int_mm" else wf["copies"][0][0].numel()
        cell: dict[str, Any] = {"us": us, "tflops": 2.0 * M * N * K / us / 1e6, "wbytes": wb, "err": err,
                                "copies": n, "spread": t["spread"], "method": t["method"]}
        if t["note"]:
            cell["note"] = t["note"]
        if M <= BW_MAX_M:
            cell["TBps"] = wb / us / 1e6
            cell["frac_copy"] = cell["TBps"] / copy_tbps if copy_tbps > 0 else None
        row[c.name] = cell
    for c in todo:
        cell = row.get(c.name, {})
        if "us" not in cell:
            continue
        for peer in ("bf16", "int8"):
            p = row.get(peer, {})
            if c.name != peer and c.name != "int_mm" and "us" in p:
                cell[f"x_{peer}"] = p["us"] / cell["us"]
    w4 = [c.name for c in todo if c.w4 and "us" in row.get(c.name, {})]
    if w4:
        row["best_w4a8"] = min(w4, key=lambda k: row[k]["us"])
    del acts
    return row


def fmt_us(v: float) -> str:
    return f"{v:7.1f}" if v < 9999.5 else f"{v:7.0f}"


def ratio_text(cell: dict[str, Any], M: int) -> str:
    s = f"x{cell.get('x_bf16', float('nan')):.2f}/bf16 x{cell.get('x_int8', float('nan')):.2f}/int8"
    if M <= BW_MAX_M and "TBps" in cell:
        s += f" {cell['TBps']:.2f}TB/s"
    return s


def print_header(cols: list[Col], copy_tbps: float) -> None:
    print(f"us per call (median); copy bandwidth {copy_tbps:.2f} TB/s; ratio = peer time / W4A8 time (> 1 faster)")
    print("labels: " + ", ".join(f"{c.label}={c.name}" for c in cols))
    print(f"{'shape':>10} {'M':>5} " + " ".join(f"{c.label:>7}" for c in cols)
          + " | i1k.a (auto): vs bf16 / int8 [weight TB/s] | best W4A8")


def print_row(row: dict[str, Any], cols: list[Col]) -> None:
    cells = []
    for c in cols:
        v = row.get(c.name)
        cells.append(f"{'-':>7}" if v is None else f"{'ERR':>7}" if "error" in v else fmt_us(v["us"]))
    M = row["M"]
    tail = ""
    auto = row.get("w4i1024_auto", {})
    if "us" in auto:
        tail += " | " + ratio_text(auto, M)
    best = row.get("best_w4a8")
    if best:
        lab = next(c.label for c in cols if c.name == best)
        tail += f" | {lab} " + ratio_text(row[best], M)
    print(f"{row['shape']:>10} {M:5d} " + " ".join(cells) + tail, flush=True)
    for c in cols:
        v = row.get(c.name)
        if v and "error" in v:
            print(f"{'':17}{c.name}: {v['error']}")
        elif v and v.get("err") is not None and v["err"] > BAD_ERR:
            print(f"{'':17}{c.name}: BAD output, rel. error {v['err']:.3g} vs bf16")


def fastest_table(rows: list[dict[str, Any]], cols: list[Col]) -> list[dict[str, Any]]:
    """Per M, over all shapes: the format with the least total time (summed over the shapes)."""
    cands = [c for c in cols if c.name != "int_mm"]
    w4 = {c.name for c in cols if c.w4}
    out = []
    for M in sorted({r["M"] for r in rows}):
        rs = [r for r in rows if r["M"] == M]
        totals = {}
        for c in cands:
            if all("us" in r.get(c.name, {}) for r in rs):
                totals[c.name] = sum(r[c.name]["us"] for r in rs)
        wins = Counter()
        for r in rs:
            have = [c.name for c in cands if "us" in r.get(c.name, {})]
            if have:
                wins[min(have, key=lambda k: r[k]["us"])] += 1
        ent: dict[str, Any] = {"M": M, "shapes": [r["shape"] for r in rs], "total_us": totals,
                               "wins": dict(wins.most_common())}
        if totals:
            f = min(totals, key=totals.get)
            ent["fastest"] = f
            ent["fastest_x_bf16"] = totals["bf16"] / totals[f] if "bf16" in totals else None
        t4 = {k: v for k, v in totals.items() if k in w4}
        if t4:
            b = min(t4, key=t4.get)
            ent["best_w4a8"] = b
            ent["best_w4a8_x_bf16"] = totals["bf16"] / t4[b] if "bf16" in totals else None
            ent["best_w4a8_x_int8"] = totals["int8"] / t4[b] if "int8" in totals else None
        if "w4i1024_auto" in totals:
            ent["auto_x_bf16"] = totals["bf16"] / totals["w4i1024_auto"] if "bf16" in totals else None
            ent["auto_x_int8"] = totals["int8"] / totals["w4i1024_auto"] if "int8" in totals else None
        out.append(ent)
    return out


def print_fastest(table: list[dict[str, Any]]) -> None:
    def x(v):
        return f"{v:6.2f}" if isinstance(v, float) else f"{'-':>6}"

    print("\nfastest format per M (time summed over the shapes; x = bf16's or int8_gemm's total / its total)")
    print(f"{'M':>5} {'fastest':>15} {'x_bf16':>6} | {'best W4A8':>15} {'x_bf16':>6} {'x_int8':>6} | "
          f"{'w4i1024_auto':>12}: {'x_bf16':>6} {'x_int8':>6} | fastest per shape (count)")
    for e in table:
        wins = " ".join(f"{k}:{v}" for k, v in e["wins"].items())
        print(f"{e['M']:5d} {e.get('fastest', '-'):>15} {x(e.get('fastest_x_bf16'))} | "
              f"{e.get('best_w4a8', '-'):>15} {x(e.get('best_w4a8_x_bf16'))} {x(e.get('best_w4a8_x_int8'))} | "
              f"{'':>12}  {x(e.get('auto_x_bf16'))} {x(e.get('auto_x_int8'))} | {wins}", flush=True)


def host_times(dev: torch.device, dry: bool) -> dict[str, Any]:
    """Eager host time per call (us; back-to-back calls, one sync per round) at tiny shapes: M = 32
    (w4a8 auto -> stream) and 128 (-> mixed), N = K = 256; our ops next to torch's."""
    import zqkernels as zq

    N = K = 256
    out: dict[str, Any] = {"N": N, "K": K}
    kw = {"rounds": 2, "target_round_s": 0.005, "warmup_s": 0.01} if dry else {}
    for M in (32, 128):
        torch.manual_seed(M)
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02
        xi, sxi = zq.quantize_per_token(x)
        x8, sx8 = zq.quantize_per_token(x, F8)
        wi, swi = zq.quantize_weight(w)
        w8, sw8 = zq.quantize_weight(w, fmt="fp8")
        i1k = zq.quantize_weight(w, **WFORMATS["i4a1024"])
        i16 = zq.quantize_weight(w, **WFORMATS["i4a16"])
        i4f = zq.quantize_weight(w, **WFORMATS["i4f"])
        i4z = zq.quantize_weight(w, **WFORMATS["i4zp"])
        fp4 = zq.quantize_weight(w, **WFORMATS["fp4"])
        sx8c, sw8r = sx8.reshape(-1, 1), sw8.reshape(1, -1)
        fns = {
            "torch.matmul": lambda: torch.matmul(x, w.t()),
            "torch._int_mm": lambda: torch._int_mm(xi, wi.t()),
            "torch._scaled_mm": lambda: torch._scaled_mm(x8, w8.t(), scale_a=sx8c, scale_b=sw8r,
                                                         out_dtype=torch.bfloat16),
            "int8_gemm": lambda: zq.int8_gemm(xi, wi, sxi, swi),
            "fp8_gemm": lambda: zq.fp8_gemm(x8, w8, sx8, sw8),
            "w4a8_gemm int a1024": lambda: zq.w4a8_gemm(xi, i1k[0], sxi, i1k[1], i1k[2], max_scale=1024),
            "w4a8_gemm int a16": lambda: zq.w4a8_gemm(xi, i16[0], sxi, i16[1], i16[2], max_scale=16),
            "w4a8_gemm float": lambda: zq.w4a8_gemm(xi, i4f[0], sxi, i4f[1], i4f[2]),
            "w4a8_gemm zero point": lambda: zq.w4a8_gemm(xi, i4z[0], sxi, i4z[1], i4z[2]),
            "w4a8_fp_gemm": lambda: zq.w4a8_fp_gemm(x8, fp4[0], sx8, fp4[1], fp4[2]),
        }
        res: dict[str, Any] = {}
        ok = {}
        for k, f in fns.items():
            try:
                f()
                ok[k] = f
            except Exception as e:  # noqa: BLE001
                res[k] = {"error": cm.error_text(e)}
                cm.ensure_alive(dev, f"host {k}")
        for k, v in cm.back_to_back(ok, cm.sync_for(dev), **kw).items():
            res[k] = {"us": v["s"] * 1e6, "spread": v["spread"]}
        for k, v in res.items():
            for peer in ("torch._int_mm", "torch.matmul"):
                if "us" in v and "us" in res.get(peer, {}) and k != peer:
                    v[f"vs_{peer.split('.')[-1]}"] = v["us"] / res[peer]["us"]
        out[f"M{M}"] = res
        print(f"\neager host us per call, M={M} N={N} K={K} (ratio: over torch._int_mm's)")
        for k, v in res.items():
            if "us" in v:
                r = v.get("vs__int_mm")
                print(f"  {k:>22} {v['us']:8.2f}" + (f"  x{r:.2f}" if r is not None else ""))
            else:
                print(f"  {k:>22} {v['error']}")
    return out


def parse_shapes(text: str | None, dry: bool) -> list[tuple[str, int, int]]:
    known = {**SHAPES, **DRY_SHAPES}
    if not text:
        return [(k, *v) for k, v in (DRY_SHAPES if dry else SHAPES).items()]
    out = []
    for s in text.split(","):
        s = s.strip()
        if s in known:
            out.append((s, *known[s]))
        elif re.fullmatch(r"\d+x\d+", s):
            n, k = (int(v) for v in s.split("x"))
            out.append((s, n, k))
        elif s:
            raise ValueError(f"unknown shape {s!r}: one of {', '.join(known)} or NxK")
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"shapes {','.join(QUICK_SHAPES)}; M {','.join(map(str, QUICK_MS))}")
    ap.add_argument("--shapes", default=None,
                    help=f"comma list of shape names ({','.join(SHAPES)}) or NxK (default: all)")
    ap.add_argument("--ms", default=None, help=f"comma list of M (default {','.join(map(str, MS))})")
    ap.add_argument("--out", default=None,
                    help="JSON path (default benchmarks/results/w4a8_<gpu>_<commit>[_quick].json; "
                         "--dry-run writes only with --out)")
    ap.add_argument("--host", action="store_true", help="also eager host time per call at tiny shapes")
    ap.add_argument("--target-s", type=float, default=cm.TARGET_S,
                    help=f"measuring time per timing (default {cm.TARGET_S} s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU smoke test: tiny shape, reference ops, no timing claims (no GPU needed)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_w4a8: needs a CUDA GPU (torch.cuda.is_available() is False); --dry-run checks the script "
              "on CPU", file=sys.stderr)
        return 2
    try:
        import zqkernels as zq
    except ImportError as e:
        print(f"bench_w4a8: cannot import zqkernels ({e}); install it first: pip install .", file=sys.stderr)
        return 2
    try:
        shapes = parse_shapes(args.shapes, args.dry_run)
        if args.quick and not args.shapes:
            shapes = [(k, *SHAPES[k]) for k in QUICK_SHAPES]
        ms = [int(v) for v in args.ms.split(",") if v.strip()] if args.ms else (
            DRY_MS if args.dry_run else QUICK_MS if args.quick else MS)
    except ValueError as e:
        print(f"bench_w4a8: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        dev = torch.device("cpu")
        rot, target_s, max_copies, min_reps = 2**20, min(args.target_s, 0.005), 2, 3
        copy_bps = cm.copy_bandwidth(dev, nbytes=8 * 2**20, reps=5)
    else:
        dev = torch.device("cuda", torch.cuda.current_device())
        rot, target_s, max_copies, min_reps = cm.device_rotate_bytes(dev), args.target_s, cm.MAX_COPIES, cm.MIN_REPS
        copy_bps = cm.copy_bandwidth(dev)
    copy_tbps = copy_bps / 1e12
    cols = columns()
    t0 = time.perf_counter()
    try:
        info = zq.info()
    except Exception as e:  # noqa: BLE001
        info = {"error": cm.error_text(e)}
    doc: dict[str, Any] = {
        "benchmark": "bench_w4a8 (issue 18)", "environment": cm.environment(dev), "git_commit": cm.git_commit(),
        "zqkernels_info": info, "dry_run": args.dry_run, "args": vars(args),
        "copy_GBps": copy_bps / 1e9, "copy_TBps": copy_tbps, "rotate_bytes": rot, "group_size": GROUP,
        "columns": {c.name: c.desc for c in cols}, "complete": False, "rows": [],
    }
    out = args.out
    if out is None and not args.dry_run:
        out = (Path(__file__).resolve().parent / "results" /
               f"w4a8_{cm.gpu_slug(cm.device_name(dev))}_{cm.git_commit()}{'_quick' if args.quick else ''}.json")
    print(f"{doc['environment']['device']}, torch {torch.__version__}, commit {doc['git_commit']}; "
          f"shapes {','.join(s[0] for s in shapes)}; M {','.join(map(str, ms))}", flush=True)
    print_header(cols, copy_tbps)
    failed = False
    try:
        for si, (name, N, K) in enumerate(shapes):
            ts = time.perf_counter()
            W = build_weights(N, K, dev, rot, args.seed + 1000 * si, max_copies)
            for key, wf in W.items():
                if "error" in wf:
                    print(f"   {name}: quantize_weight {key}: {wf['error']}")
            for M in ms:
                row = bench_row(name, N, K, M, W, cols, dev, rot, target_s, copy_tbps, args.seed, min_reps)
                doc["rows"].append(row)
                print_row(row, cols)
                for c in cols:
                    v = row.get(c.name)
                    if c.ours and v and ("error" in v or (v.get("err") or 0) > BAD_ERR):
                        failed = True
            del W
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            print(f"   ({name}: {time.perf_counter() - ts:.0f} s)", flush=True)
            if out:
                cm.write_json(out, doc)
        doc["fastest"] = fastest_table(doc["rows"], cols)
        print_fastest(doc["fastest"])
        if args.host:
            doc["host_us"] = host_times(dev, args.dry_run)
    except RuntimeError as e:
        if "CUDA context unusable" not in str(e):
            raise
        doc["aborted"] = cm.error_text(e)
        print("ABORTED:", doc["aborted"], file=sys.stderr)
        if out:
            cm.write_json(out, doc)
            print("wrote (partial)", out)
        return 3
    doc["complete"] = True
    doc["elapsed_s"] = time.perf_counter() - t0
    if out:
        cm.write_json(out, doc)
        print("wrote", out)
    else:
        print("(dry run: no JSON written; --out FILE writes one)")
    print(f"total {doc['elapsed_s']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
