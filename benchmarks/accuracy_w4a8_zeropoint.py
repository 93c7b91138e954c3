"""Accuracy of the two-level W4A8 weight formats (issue 18, item 2) on SmolLM2-135M, CPU, real text:
the library's symmetric one against a zero-point one (QServe style), paired window by window.

Both formats turn the weights into int8 values in registers (a plain int8 MMA, no per-group float
work), so they cost the same in a kernel; only their rounding differs:

- ``sym a16`` (the library, ``quantize_weight(w, fmt="int4", scale="int", group_size=g, alpha=16)``):
  a float scale per output channel, integer group scales in 0..16, symmetric INT4 codes in -8..7;
  w ~= sw * sg * q.
- ``zp`` (QServe's progressive scheme; the library's ``quantize_weight(w, fmt="int4", scale="zp")``,
  scheme "w4a8-zp", reference/zero_point.py): level 1, symmetric INT8 per channel in the protective
  range -119..119; level 2, per group of the INT8 values, unsigned 4-bit codes with an integer scale
  s2 = max(1, ceil((max - min) / 15)) over the range widened to hold 0 and a zero point z =
  clamp(rint(-min / s2), 0, 15): u = clamp(rint(v / s2) + z, 0, 15); w ~= s1 * s2 * (u - z). The int8
  value s2 * (u - z) never leaves -128..127 (counted as a check: ``int8_overflow``). Results before
  2026-12-07 came from a simulation without the widening (one-sided groups clipped).

The perplexity harness is accuracy_w4a8.py's (its loaders, windows of 512 tokens over the first 32768
tokens of Pride and Prejudice, per-token INT8 activations, the float64 formulation of the GEMM),
imported, not copied; lm_head and embeddings stay float.

    python benchmarks/accuracy_w4a8_zeropoint.py [--group 64] [--tokens 32768] [--data /tmp/data] [--gptq]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_fp as afp  # noqa: E402
import zqkernels as zq  # noqa: E402
from _common import git_commit  # noqa: E402
from _w4a8_report import WINDOW, paired, ppl_at, window_nlls  # noqa: E402
from accuracy_w4a8 import BATCH, PREFIX, QuantLinears, qweight  # noqa: E402
from zqkernels.reference.quantize import unpack_int4  # noqa: E402
from zqkernels.reference.zero_point import zp_int8_values, zp_weight64  # noqa: E402


def zero_point_deq(w: torch.Tensor, g: int) -> tuple[torch.Tensor, int]:
    """The zp format's dequantized weight (float64 [N, K], exact: sw * s (u - z)) as the library
    quantizes it (``quantize_weight(w, fmt="int4", scale="zp")``), and how many of its int8 values
    left -128..127 (none by construction; counted as a check)."""
    N, K = w.shape
    wq, sw, sz = zq.quantize_weight(w.float().contiguous(), fmt="int4", scale="zp", group_size=g)
    codes = unpack_int4(wq, N, K)
    i8 = zp_int8_values(codes, sz)
    over = int(((i8 < -128) | (i8 > 127)).sum())
    return zp_weight64(codes, sw, sz), over


class ZeroPointLinears(QuantLinears):
    """QuantLinears with the zp format's weights (float64 GEMM, per-token INT8 activations)."""

    def set_zp(self, g: int) -> int:
        self.set(None)
        over = 0
        for m in self.linears.values():
            deq, o = zero_point_deq(m.weight.detach().float(), g)
            over += o
            self.install(m, deq)
        return over


def exact_deq(q) -> torch.Tensor:
    """A converted QLinear's weight [N, K] in float64, exactly what its GEMM multiplies (sw * sg * q, or
    sw * s (u - z) for the zero-point format)."""
    N, K = q.out_features, q.in_features
    codes = unpack_int4(q.weight_q, q.weight_q.shape[0], K)[:N]
    sw, sg = q.weight_scale[:N].double()[:, None], q.weight_group_scale[:N]
    if sg.dtype == torch.int16:
        return zp_weight64(codes, q.weight_scale[:N], sg)
    return sw * codes.double() * sg.double().repeat_interleave(K // sg.shape[1], dim=1)


def gptq_weights(model, calib: list, cfg) -> dict:
    """{block Linear name: float64 weight} of the library's GPTQ conversion (``zq.gptq``) of a copy of
    the model with the config (fused_blocks=False: every Linear keeps its name)."""
    import copy

    mg = copy.deepcopy(model)
    zq.gptq(mg, calib, config=cfg)
    return {n: exact_deq(m) for n, m in mg.named_modules() if isinstance(m, zq.QLinear) and n.startswith(PREFIX)}


def weight_mse(linears: dict, g: int) -> dict:
    """Mean squared error of each format's dequantized weights against the float weights."""
    se = {"sym a16": 0.0, "zp": 0.0}
    n = 0
    for m in linears.values():
        w = m.weight.detach().float()
        se["sym a16"] += float(((qweight(w, 4, g, "int", 16)["deq"] - w.double()) ** 2).sum())
        se["zp"] += float(((zero_point_deq(w, g)[0] - w.double()) ** 2).sum())
        n += w.numel()
    return {k: v / n for k, v in se.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--data", default="/tmp/data")
    ap.add_argument("--json", default=None)
    ap.add_argument("--gptq", action="store_true",
                    help="also both formats with the library's GPTQ (calibration: Persuasion, 8 x 256 tokens from token 1000)")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(afp.SEED)
    books = afp.load_austen(Path(args.data))
    model, tok, gguf = afp.load_smollm2(Path(args.data))
    linears = afp.block_linears(model, PREFIX)
    pp = torch.tensor(tok(books["prideprejudice"], add_special_tokens=False)["input_ids"][: args.tokens])
    g = args.group
    res: dict = {"model": f"SmolLM2-135M ({gguf})", "text": "Pride and Prejudice", "tokens": int(pp.numel()),
                 "window": WINDOW, "group": g, "weight_mse": weight_mse(linears, g), "ppl": {}, "window_nll": {}}
    nll = {}
    names = ["fp32", "sym a16", "zp"]
    gptq_w = {}
    if args.gptq:
        pers = tok(books["persuasion"], add_special_tokens=False)["input_ids"]
        calib = [{"input_ids": torch.tensor(pers[1000 + i * 256: 1000 + (i + 1) * 256])[None]} for i in range(8)]
        for name, cfg in (("sym a16 GPTQ", zq.W4A8Config(group_size=g, alpha=16, fused_blocks=False)),
                          ("zp GPTQ", zq.W4A8Config(group_size=g, scale="zp", fused_blocks=False))):
            t1 = time.time()
            gptq_w[name] = gptq_weights(model, calib, cfg)
            res.setdefault("gptq_seconds", {})[name] = round(time.time() - t1, 1)
            names.append(name)
    with ZeroPointLinears(linears) as ql:
        for name in names:
            t1 = time.time()
            if name == "sym a16":
                ql.set((4, g, "int", 16), "f64")
            elif name == "zp":
                res["int8_overflow"] = ql.set_zp(g)
            elif name in gptq_w:
                ql.set(None)
                for n, m in linears.items():
                    ql.install(m, gptq_w[name][n])
            else:
                ql.set(None)
            nll[name] = window_nlls(model, pp, WINDOW, BATCH)
            res["ppl"][name] = ppl_at(nll[name], len(nll[name]))
            res["window_nll"][name] = [round(float(v), 6) for v in nll[name]]
            print(f"[{time.time() - t0:6.0f}s] {name}: ppl {res['ppl'][name]:.3f} ({time.time() - t1:.0f} s)", flush=True)
    res["zp vs sym a16"] = paired(nll["sym a16"], nll["zp"])
    if args.gptq:
        res["zp GPTQ vs sym a16 GPTQ"] = paired(nll["sym a16 GPTQ"], nll["zp GPTQ"])
        res["sym a16 GPTQ vs sym a16"] = paired(nll["sym a16"], nll["sym a16 GPTQ"])
    res["sym a16 vs fp32"] = paired(nll["fp32"], nll["sym a16"])
    res["seconds"] = round(time.time() - t0, 1)
    res["commit"] = git_commit()
    print(json.dumps({k: v for k, v in res.items() if k != "window_nll"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
