"""Fused row-op + INT8 quantization kernels against the unfused torch sequence (eager and
torch.compile'd) and against the copy-bandwidth floor, on the same GPU, in the same run.

    python benchmarks/bench_fused.py [--json FILE]        # 9 ops x 6 widths x 4 M, about 5 min on an H100
    python benchmarks/bench_fused.py --quick              # widths 1024, 4096, 11008; M 16, 2048, 8192 (~2 min)
    python benchmarks/bench_fused.py --ops rmsnorm_quant,silu_mul_quant --widths 4096 --ms 1,8192
    python benchmarks/bench_fused.py --dry-run            # CPU smoke test: tiny shapes, no timing claims

Ops (bf16 rows [M, K]; K = output width, 768 / 1024 / 4096 / 5120 / 8192 / 11008; M = 1, 16, 2048, 8192),
each with the unfused sequence it replaces (torch ops on the model's bf16 weights, then
``zqkernels.quantize_per_token``):

    rmsnorm_quant                  F.rms_norm(x, w)                          -> quantize_per_token
    layernorm_quant                F.layer_norm(x, w, b)                     -> quantize_per_token
    add_rmsnorm_quant              r = x + res; F.rms_norm(r, w)             -> quantize_per_token (+ r)
    add_layernorm_quant(sum)       r = x + res; F.layer_norm(r, w, b)        -> quantize_per_token (+ r)
    add_layernorm_quant(normed)    h = F.layer_norm(x + res, w, b)           -> quantize_per_token (+ h)
    bias_gelu_quant(erf|tanh)      F.gelu(y + b, approximate=...)            -> quantize_per_token
    silu_mul_quant                 g, u = gate_up.chunk(2); F.silu(g) * u    -> quantize_per_token  (input [M, 2K])
    quantize_per_token             (itself; its peers are the torch-ops quantization below)

Columns (microseconds per call, median):

    fused    the zqkernels op (weights / biases as float32, as a converted model holds them)
    eager    the unfused sequence as torch runs it without compiling (its kernels, replayed from the
             same kind of CUDA graph: device time without host overhead; the host cost is the last table)
    comp     the same sequence under torch.compile (default mode): inductor fuses the torch ops,
             quantize_per_token stays our kernel (a custom op)
    comp_tq  torch.compile of the sequence with the quantization written in torch ops too
             (amax, scale, round, clamp, cast; docs/SCALES.md), so inductor may fuse everything into
             one kernel: the strongest compiled peer. quantize_per_token's ``eager`` is this
             torch-ops quantization run eagerly.

GB/s = bytes / time with bytes = inputs read once + outputs written once (q int8 [M, K], s float32 [M],
the residual output where the op has one, float32 weight / bias); %copy = that over the
device-to-device copy bandwidth measured in the same run (a 256 MiB copy, read + write bytes).
x eager = eager / fused, x comp = min(comp, comp_tq) / fused (> 1: the fused kernel is faster).

Method: every column is timed as CUDA graphs of one rotation cycle over independent copies of the
row inputs (>= max(120 MB, 2.4 x L2) per cycle, so nothing is still in L2; benchmarks/_common.py,
as bench_w8a8.py), median of graph replays. Compiled peers: by default one compile per (op, width,
peer) with M dynamic (``torch._dynamo.mark_dynamic(x, 0)``; dynamo specializes M = 1 by itself), the
width static; ``--static-compile`` compiles every (M, K) separately (about 2x the compile time).
Correctness, once per problem: q of every column against the eager sequence's (max |dq| <= 2: the
unfused sequence rounds its intermediate to bf16, the fused op does not), scales to 1 %, residual
outputs to 1 %; a failing fused op prints a WARNING and the exit status is 1.

Host time: each fused op and its eager sequence at M = 1, K = 4096, as wall time of back-to-back
calls with one synchronize per round (1000 calls, median of 7 rounds, rounds alternating), after a
warm-up: what Python, argument checks and launches cost per call when the kernels are tiny.

With ``--json`` the JSON {"header", "rows", "host"} is written after every op (and at the end).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    back_to_back,
    configure_dynamo,
    copy_bandwidth,
    device_rotate_bytes,
    ensure_alive,
    environment,
    error_text,
    package_versions,
    rotation_copies,
    startup_error,
    sync_for,
    time_calls,
    write_json,
)
from bench_w8a8 import torch_quant_per_token  # noqa: E402  (the torch-ops quantization, docs/SCALES.md)

WIDTHS = (768, 1024, 4096, 5120, 8192, 11008)
MS = (1, 16, 2048, 8192)
QUICK_WIDTHS = (1024, 4096, 11008)
QUICK_MS = (16, 2048, 8192)
HOST_M, HOST_K = 1, 4096
COPY_NBYTES = 256 * 2**20
EPS_RMS, EPS_LN = 1e-6, 1e-5
COLUMNS = ("eager", "fused", "comp", "comp_tq")  # eager first: the reference of the checks
Q_TOL, S_TOL, R_TOL = 2, 1e-2, 1e-2


def torch_quant(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-wise INT8 quantization in torch ops, (q [M, K], s [M]) like quantize_per_token."""
    q, s = torch_quant_per_token(y)
    return q, s.view(-1)


# ----------------------------------------------------------------------------------------------
# The ops: fused call and unfused sequence, from the same inputs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One fused op. ``inputs``: the rotated row inputs in call order ("x", "res": [M, K]; "gu":
    [M, 2K]); ``params``: "w", "b" ([K]). ``fused(zq)`` and ``seq(quant)`` return callables taking
    (*inputs, *params) and returning (q, s) or (q, s, residual output)."""

    name: str
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    fused: Callable[[Any], Callable[..., Any]]
    seq: Callable[[Callable], Callable[..., Any]]
    text: str
    r_out: bool = False  # writes a residual output [M, K] in x's dtype

    def in_bytes(self, M: int, K: int) -> int:
        """Bytes of the rotated row inputs of one call."""
        return sum(2 * M * (2 * K if n == "gu" else K) for n in self.inputs)

    def bytes(self, M: int, K: int) -> int:
        """Minimal traffic: inputs read once (float32 params) + outputs written once."""
        return (
            self.in_bytes(M, K) + 4 * K * len(self.params) + M * K + 4 * M + (2 * M * K if self.r_out else 0)
        )


def _norm_rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), w, EPS_RMS)


def _norm_ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), w, b, EPS_LN)


def _seq_add_rms(quant: Callable) -> Callable:
    def f(x, res, w):
        r = x + res
        return (*quant(_norm_rms(r, w)), r)

    return f


def _seq_add_ln(normed: bool) -> Callable[[Callable], Callable]:
    def make(quant: Callable) -> Callable:
        def f(x, res, w, b):
            r = x + res
            h = _norm_ln(r, w, b)
            return (*quant(h), h if normed else r)

        return f

    return make


def _seq_gelu(approximate: str) -> Callable[[Callable], Callable]:
    def make(quant: Callable) -> Callable:
        def f(y, b):
            return quant(F.gelu(y + b, approximate=approximate))

        return f

    return make


def _seq_silu(quant: Callable) -> Callable:
    def f(gu):
        g, u = gu.chunk(2, dim=-1)
        return quant(F.silu(g) * u)

    return f


OPS: list[Op] = [
    Op("rmsnorm_quant", ("x",), ("w",),
       lambda zq: lambda x, w: zq.rmsnorm_quant(x, w, EPS_RMS),
       lambda quant: lambda x, w: quant(_norm_rms(x, w)),
       "F.rms_norm -> quantize_per_token"),
    Op("layernorm_quant", ("x",), ("w", "b"),
       lambda zq: lambda x, w, b: zq.layernorm_quant(x, w, b, EPS_LN),
       lambda quant: lambda x, w, b: quant(_norm_ln(x, w, b)),
       "F.layer_norm -> quantize_per_token"),
    Op("add_rmsnorm_quant", ("x", "res"), ("w",),
       lambda zq: lambda x, res, w: zq.add_rmsnorm_quant(x, res, w, EPS_RMS),
       _seq_add_rms, "r = x + res; F.rms_norm(r) -> quantize_per_token; r", r_out=True),
    Op("add_layernorm_quant(sum)", ("x", "res"), ("w", "b"),
       lambda zq: lambda x, res, w, b: zq.add_layernorm_quant(x, res, w, b, EPS_LN, residual_out="sum"),
       _seq_add_ln(False), "r = x + res; F.layer_norm(r) -> quantize_per_token; r", r_out=True),
    Op("add_layernorm_quant(normed)", ("x", "res"), ("w", "b"),
       lambda zq: lambda x, res, w, b: zq.add_layernorm_quant(x, res, w, b, EPS_LN, residual_out="normed"),
       _seq_add_ln(True), "h = F.layer_norm(x + res) -> quantize_per_token; h", r_out=True),
    Op("bias_gelu_quant(erf)", ("x",), ("b",),
       lambda zq: lambda y, b: zq.bias_gelu_quant(y, b, "none"),
       _seq_gelu("none"), "F.gelu(y + b) -> quantize_per_token"),
    Op("bias_gelu_quant(tanh)", ("x",), ("b",),
       lambda zq: lambda y, b: zq.bias_gelu_quant(y, b, "tanh"),
       _seq_gelu("tanh"), "F.gelu(y + b, approximate='tanh') -> quantize_per_token"),
    Op("silu_mul_quant", ("gu",), (),
       lambda zq: lambda gu: zq.silu_mul_quant(gu),
       _seq_silu, "g, u = gate_up.chunk(2); F.silu(g) * u -> quantize_per_token"),
    Op("quantize_per_token", ("x",), (),
       lambda zq: lambda x: zq.quantize_per_token(x),
       lambda quant: lambda x: quant(x), "torch-ops quantization (amax, scale, round, clamp, cast)"),
]  # fmt: skip
OP_NAMES = tuple(o.name for o in OPS)
# Base names accepted by --ops (an op with variants selects all of them).
OP_BASES = tuple(dict.fromkeys(n.split("(")[0] for n in OP_NAMES))


def peer_fns(op: Op, zq: Any) -> dict[str, Callable[..., Any] | None]:
    """The uncompiled callables of each column (comp / comp_tq get compiled by the caller)."""
    if op.name == "quantize_per_token":  # the unfused 'sequence' is the torch-ops quantization itself
        return {
            "eager": op.seq(torch_quant),
            "fused": op.fused(zq),
            "comp": None,
            "comp_tq": op.seq(torch_quant),
        }
    return {
        "eager": op.seq(zq.quantize_per_token),
        "fused": op.fused(zq),
        "comp": op.seq(zq.quantize_per_token),
        "comp_tq": op.seq(torch_quant),
    }


def make_inputs(op: Op, M: int, K: int, n: int, device: torch.device, g: torch.Generator):
    """n independent copies of the row inputs (Gaussian bf16) and the params (bf16 for the torch
    sequences, the same values in float32 for the fused op)."""
    copies = []
    for _ in range(n):
        copies.append(
            tuple(
                torch.randn(M, 2 * K if name == "gu" else K, device=device, dtype=torch.bfloat16, generator=g)
                for name in op.inputs
            )
        )
    params = []
    for name in op.params:
        if name == "w":  # a trained norm weight: around 1
            p = torch.randn(K, device=device, generator=g).mul_(0.1).add_(1.0)
        else:
            p = torch.randn(K, device=device, generator=g).mul_(0.1)
        params.append(p.to(torch.bfloat16))
    return copies, tuple(params), tuple(p.float() for p in params)


def compare(out: Any, ref: Any) -> dict[str, Any]:
    """Fused / compiled outputs against the eager sequence's: max |dq|, max relative scale
    difference, residual output difference relative to its largest value."""
    q, s = out[0], out[1]
    rq, rs = ref[0], ref[1]
    res: dict[str, Any] = {
        "q_maxdiff": int((q.to(torch.int16) - rq.to(torch.int16)).abs().max()) if q.numel() else 0,
        "s_relmax": float(((s.float() - rs.float()).abs() / rs.float().abs().clamp_min(1e-30)).max())
        if s.numel() else 0.0,
    }  # fmt: skip
    if len(ref) > 2:
        r, rr = out[2].float(), ref[2].float()
        res["r_relmax"] = float((r - rr).abs().max() / rr.abs().max().clamp_min(1e-30)) if rr.numel() else 0.0
    res["ok"] = res["q_maxdiff"] <= Q_TOL and res["s_relmax"] <= S_TOL and res.get("r_relmax", 0.0) <= R_TOL
    return res


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


@dataclass
class Settings:
    device: torch.device
    rotate_bytes: int
    copy_bw: float
    target_s: float
    static_compile: bool
    peers: tuple[str, ...]


def measure_problem(op: Op, K: int, M: int, zq: Any, fns: dict[str, Any], st: Settings, seed: int) -> dict:
    """One (op, K, M): every column timed over the same rotated inputs. ``fns``: column -> callable
    (the compiled ones already wrapped by torch.compile, compiled on first call here)."""
    dev = st.device
    sync = sync_for(dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    n = rotation_copies(op.in_bytes(M, K), st.rotate_bytes)
    copies, params, params32 = make_inputs(op, M, K, n, dev, g)
    nbytes = op.bytes(M, K)
    row: dict[str, Any] = {
        "op": op.name, "K": K, "M": M, "bytes": nbytes, "n_copies": n, "rotated_bytes": n * op.in_bytes(M, K),
        "us": {}, "stats": {}, "method": {}, "compile_s": {}, "check": {}, "errors": {}, "notes": {},
    }  # fmt: skip
    ref = None
    for col in COLUMNS:
        f = fns.get(col)
        if f is None:
            continue
        p = params32 if col == "fused" else params
        calls = [lambda t=t, f=f, p=p: f(*t, *p) for t in copies]
        try:
            if col.startswith("comp") and not st.static_compile and M > 1:
                for t in copies[0]:
                    torch._dynamo.mark_dynamic(t, 0)
            t0 = time.perf_counter()
            out = calls[0]()
            sync()
            if col.startswith("comp"):
                row["compile_s"][col] = time.perf_counter() - t0
            if col == "eager":
                ref = out
            elif ref is not None:
                row["check"][col] = compare(out, ref)
            del out
            res = time_calls(calls, dev, use_graph=dev.type == "cuda", target_s=st.target_s)
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            row["errors"][col] = error_text(e)
            ensure_alive(dev, f"{op.name} {col}")
            continue
        row["us"][col] = res["us"]
        row["stats"][col] = {k: res[k] for k in ("us_min", "spread", "reps", "calls_per_sample")}
        row["method"][col] = res["method"]
        if res["note"]:
            row["notes"][col] = res["note"]
    del copies, ref
    fus = row["us"].get("fused")
    comps = {c: row["us"][c] for c in ("comp", "comp_tq") if c in row["us"]}
    row["floor_us"] = nbytes / st.copy_bw * 1e6
    row["fused_GBps"] = nbytes / (fus * 1e-6) / 1e9 if fus else None
    row["fused_frac_copy"] = row["floor_us"] / fus if fus else None
    row["speedup_vs_eager"] = row["us"]["eager"] / fus if fus and "eager" in row["us"] else None
    row["best_compiled"] = min(comps, key=comps.get) if comps else None
    row["speedup_vs_compiled"] = comps[row["best_compiled"]] / fus if fus and comps else None
    return row


def run_op(op: Op, widths: list[int], ms: list[int], zq: Any, st: Settings, print_fn: Callable) -> list[dict]:
    rows = []
    print_fn("")
    print_fn(f"{op.name}  vs  {op.text}")
    print_fn(table_header())
    base = peer_fns(op, zq)
    for K in widths:
        # One torch.compile wrapper per (op, width, peer); dynamo state reset per width, so every
        # width compiles afresh (static K) and M is dynamic unless --static-compile.
        torch._dynamo.reset()
        fns = {}
        for col, f in base.items():
            if f is None or (col.startswith("comp") and col not in st.peers):
                continue
            fns[col] = torch.compile(f) if col.startswith("comp") else f
        for M in sorted(ms, reverse=True):  # the largest M first: a dynamic-M compile is tuned there
            row = measure_problem(op, K, M, zq, fns, st, seed=K * 31 + M)
            rows.append(row)
            print_fn(table_row(row))
            for line in row_warnings(row):
                print_fn(line)
        del fns
        gc.collect()
        if st.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def host_times(
    ops: list[Op], zq: Any, device: torch.device, calls: int, rounds: int, print_fn: Callable
) -> list[dict]:
    """Eager host time per call at M = HOST_M, K = HOST_K: each fused op and its eager sequence."""
    g = torch.Generator(device=device).manual_seed(7)
    fns: dict[str, Callable[[], Any]] = {}
    for op in ops:
        copies, params, params32 = make_inputs(op, HOST_M, HOST_K, 1, device, g)
        t = copies[0]
        pf = peer_fns(op, zq)
        fns[f"{op.name}|fused"] = lambda f=pf["fused"], t=t, p=params32: f(*t, *p)
        fns[f"{op.name}|eager"] = lambda f=pf["eager"], t=t, p=params: f(*t, *p)
    res = back_to_back(fns, sync_for(device), rounds=rounds, calls=calls, warmup_s=0.05)
    out = []
    print_fn("")
    print_fn(f"eager host time per call, M = {HOST_M}, K = {HOST_K} ({calls} back-to-back calls + one sync, "
             f"median of {rounds} rounds):")  # fmt: skip
    print_fn(f"{'op':<28} {'fused_us':>9} {'eager_us':>9} {'eager/fused':>11}")
    for op in ops:
        fu, eu = res[f"{op.name}|fused"]["s"] * 1e6, res[f"{op.name}|eager"]["s"] * 1e6
        out.append({"op": op.name, "fused_us": fu, "eager_us": eu, "ratio": eu / fu,
                    "fused_us_min": res[f"{op.name}|fused"]["s_min"] * 1e6,
                    "eager_us_min": res[f"{op.name}|eager"]["s_min"] * 1e6})  # fmt: skip
        print_fn(f"{op.name:<28} {fu:9.2f} {eu:9.2f} {eu / fu:10.2f}x")
    if any(op.name == "quantize_per_token" for op in ops):
        print_fn("(the eager sequence of quantize_per_token is the torch-ops quantization)")
    return out


# ----------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------


def table_header() -> str:
    return (
        f"{'K':>6} {'M':>5} | {'fused_us':>9} {'GB/s':>6} {'%copy':>6} | {'eager_us':>9} {'comp_us':>9} "
        f"{'comp_tq_us':>10} | {'x eager':>7} {'x comp':>7} | check"
    )


def _us(row: dict[str, Any], col: str, w: int) -> str:
    if col in row["us"]:
        return f"{row['us'][col]:{w}.1f}"
    return ("ERR" if col in row["errors"] else "-").rjust(w)


def table_row(row: dict[str, Any]) -> str:
    gbs, frac = row.get("fused_GBps"), row.get("fused_frac_copy")
    xe, xc = row.get("speedup_vs_eager"), row.get("speedup_vs_compiled")
    bad = [c for c, chk in row["check"].items() if not chk["ok"]]
    worst_q = max((chk["q_maxdiff"] for chk in row["check"].values()), default=None)
    check = ("FAIL " + ",".join(bad)) if bad else (f"ok (dq<={worst_q})" if worst_q is not None else "-")
    return (
        f"{row['K']:>6} {row['M']:>5} | {_us(row, 'fused', 9)} {(f'{gbs:.0f}' if gbs else '-'):>6} "
        f"{(f'{100 * frac:5.0f}%' if frac else '-'):>6} | {_us(row, 'eager', 9)} {_us(row, 'comp', 9)} "
        f"{_us(row, 'comp_tq', 10)} | {(f'{xe:6.2f}x' if xe else '-'):>7} {(f'{xc:6.2f}x' if xc else '-'):>7} | {check}"
    )


def row_warnings(row: dict[str, Any]) -> list[str]:
    where = f"{row['op']} K={row['K']} M={row['M']}"
    out = []
    for col, msg in row["errors"].items():
        out.append(f"{'WARNING' if col == 'fused' else 'note'} {where}: {col} failed: {msg}")
    for col, chk in row["check"].items():
        if not chk["ok"]:
            out.append(f"{'WARNING' if col == 'fused' else 'note'} {where}: {col} differs from the eager sequence: "
                       f"{ {k: v for k, v in chk.items() if k != 'ok'} }")  # fmt: skip
    for col, note in row["notes"].items():
        out.append(f"note {where}: {col}: {note}")
    return out


def row_failed(row: dict[str, Any]) -> bool:
    return "fused" in row["errors"] or not row["check"].get("fused", {"ok": True})["ok"]


LEGEND = [
    "us per call: median, CUDA graphs over L2-rotated inputs for every column (eager included: device time);",
    "GB/s, %copy: the fused op over the minimal traffic (inputs read once + outputs written once);",
    "x eager = eager / fused, x comp = min(comp, comp_tq) / fused (> 1: fused faster);",
    "comp = torch.compile(sequence with quantize_per_token), comp_tq = torch.compile(sequence with torch-ops quant);",
    f"check: max |dq| of each column vs the eager sequence (<= {Q_TOL}), scales and residual outputs within {S_TOL:.0%}",
]


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def run(
    ops: list[Op],
    widths: list[int],
    ms: list[int],
    *,
    dry: bool = False,
    static_compile: bool = False,
    peers: tuple[str, ...] = ("comp", "comp_tq"),
    target_s: float = 0.1,
    host: bool = True,
    out_json: Any = None,
    print_fn: Callable[[str], None] = print,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Measures ``ops`` over widths x ms, prints a table per op and the host-time table; returns
    (header, rows, host rows) and writes the JSON after every op when ``out_json`` is given."""
    import zqkernels as zq

    t_start = time.perf_counter()
    device = torch.device("cpu") if dry else torch.device("cuda", torch.cuda.current_device())
    dynamo = configure_dynamo()
    copy_bw = copy_bandwidth(device, 8 * 2**20 if dry else COPY_NBYTES, reps=3 if dry else 30)
    rotate = 2**20 if dry else device_rotate_bytes(device)
    st = Settings(device, rotate, copy_bw, target_s, static_compile, peers)
    env = environment(device)
    header: dict[str, Any] = {
        **env,
        "zqkernels_version": getattr(zq, "__version__", None),
        "packages": package_versions("triton", "zqkernels"),
        "copy_bw_Bps": copy_bw,
        "copy_bytes": 8 * 2**20 if dry else COPY_NBYTES,
        "rotate_bytes": rotate,
        "settings": {
            "ops": [o.name for o in ops],
            "widths": widths,
            "ms": ms,
            "dry_run": dry,
            "static_compile": static_compile,
            "peers": list(peers),
            "target_s": target_s,
            "dynamo": dynamo,
            "eps_rms": EPS_RMS,
            "eps_ln": EPS_LN,
        },  # fmt: skip
        "method": [
            "CUDA graph of one rotation cycle over independent copies of the row inputs (>= rotate_bytes), "
            "median of replays / calls per cycle",
            "bytes = inputs read once (params float32) + outputs written once (q, s, residual output)",
            "copy bandwidth: device-to-device copy, read + write bytes, median",
            "compiled peers: torch.compile default mode; M dynamic (mark_dynamic dim 0, the largest M "
            "compiled first) unless static_compile; widths static",
            "checks against the eager sequence on the first copy",
        ],
    }
    rows: list[dict[str, Any]] = []
    host_rows: list[dict[str, Any]] = []

    def save() -> None:
        header["elapsed_s"] = time.perf_counter() - t_start
        if out_json is not None:
            write_json(out_json, {"header": header, "rows": rows, "host": host_rows})

    print_fn(
        f"zqkernels {header['zqkernels_version']} (commit {env['commit']}) | torch {env['torch']} "
        f"cuda {env['cuda']} | {env['device']} | {env['date']}"
    )
    if dry:
        print_fn("DRY RUN: tiny shapes on CPU, exercises the code paths only; the times mean nothing")
    print_fn(
        f"copy bandwidth (read + write) {copy_bw / 1e9:.0f} GB/s; inputs rotated over >= {rotate / 1e6:.0f} MB; "
        f"compiled peers: {'static per shape' if static_compile else 'M dynamic, K static'}"
    )
    try:
        for op in ops:
            rows += run_op(op, widths, ms, zq, st, print_fn)
            save()
        if host:
            host_rows = host_times(
                ops, zq, device, calls=50 if dry else 1000, rounds=3 if dry else 7, print_fn=print_fn
            )
    except BaseException as e:
        header["aborted"] = error_text(e)
        raise
    finally:
        save()
    print_fn("")
    for line in LEGEND:
        print_fn(line)
    n_bad = sum(row_failed(r) for r in rows)
    header["n_failed_rows"] = n_bad
    save()
    print_fn(
        f"{len(rows)} problems in {header['elapsed_s']:.0f} s"
        + (f"; {n_bad} with a failed or wrong fused op (WARNING lines)" if n_bad else "")
        + (f"; JSON: {out_json}" if out_json is not None else "")
    )
    return header, rows, host_rows


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _ints(s: str) -> list[int]:
    try:
        out = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return out


def _ops(s: str) -> list[Op]:
    names = [v.strip() for v in s.split(",") if v.strip()]
    out = []
    for n in names:
        hit = [o for o in OPS if o.name == n or o.name.split("(")[0] == n]
        if not hit:
            raise argparse.ArgumentTypeError(
                f"unknown op {n!r}; choose from {', '.join(OP_BASES + OP_NAMES)}"
            )
        out += [o for o in hit if o not in out]
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Details: the module docstring and benchmarks/README.md",
    )  # fmt: skip
    p.add_argument(
        "--ops", type=_ops, default=None, help=f"comma-separated ops (default all): {', '.join(OP_BASES)}"
    )
    p.add_argument(
        "--widths", type=_ints, default=None, help=f"row widths K (default {','.join(map(str, WIDTHS))})"
    )
    p.add_argument("--ms", type=_ints, default=None, help=f"rows M (default {','.join(map(str, MS))})")
    p.add_argument("--quick", action="store_true",
                   help=f"widths {','.join(map(str, QUICK_WIDTHS))} and M {','.join(map(str, QUICK_MS))}")  # fmt: skip
    p.add_argument("--static-compile", action="store_true",
                   help="compile the torch.compile peers for every shape (default: M dynamic per width)")  # fmt: skip
    p.add_argument("--peers", default="comp,comp_tq",
                   help="compiled peers to run: comp, comp_tq, both (default) or none")  # fmt: skip
    p.add_argument(
        "--target-s", type=float, default=0.1, help="measuring time per column and problem (default 0.1 s)"
    )
    p.add_argument("--no-host", action="store_true", help="skip the eager host-time table")
    p.add_argument("--json", metavar="FILE", help="write the JSON here")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU smoke test: tiny shapes, every code path, no meaningful times")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    peers = tuple(v.strip() for v in args.peers.split(",") if v.strip() and v.strip() != "none")
    if any(v not in ("comp", "comp_tq") for v in peers):
        print(f"bench_fused: --peers: expected comp, comp_tq or none, got {args.peers!r}", file=sys.stderr)
        return 2
    if startup_error("bench_fused", args.dry_run, "tiny shapes"):
        return 2
    ops = args.ops or OPS
    if args.dry_run:
        widths, ms, target = args.widths or [64], args.ms or [1, 5], 0.002
    else:
        widths = args.widths or list(QUICK_WIDTHS if args.quick else WIDTHS)
        ms = args.ms or list(QUICK_MS if args.quick else MS)
        target = args.target_s
    _, rows, _ = run(
        ops, widths, ms, dry=args.dry_run, static_compile=args.static_compile, peers=peers, target_s=target,
        host=not args.no_host, out_json=args.json,
    )  # fmt: skip
    return 1 if any(row_failed(r) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
