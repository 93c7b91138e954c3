"""FP8 weight granularity (and INT4 group size) on a causal LM, on the CPU, with paired standard errors
(issue 22, items 3 and 5).

``python -m zqkernels eval`` quantizes weights *and* activations, and its ``fp8-block`` scheme needs
``in_features % 128 == 0`` (SmolLM2's hidden size is 576). This script fake-quantizes every Linear of
the decoder layers (``model.layers.*``; embeddings and lm_head stay float) through the package's public
functions (``quantize_weight`` / ``dequantize``, ``quantize_per_token``, ``quantize_per_token_group``),
so it can

- quantize weights only (activations float), or activations only;
- apply 128 x 128 FP8 blocks (and 1 x g FP8 groups along K) to layers whose K is not a multiple of 128,
  by zero-padding K to the next multiple of 128 before quantizing: zeros never change a block's amax, so
  this is exactly a ragged last block of K % 128 columns (what a kernel with partial K-blocks would do);
  the same for the activations' groups of 128 channels.

Each variant's GEMM runs in float (F.linear on the dequantized operands), as in
``zqkernels.algorithms.fakequant``. The windows are ``eval``'s (``tok(text, add_special_tokens=False)``,
the first N non-overlapping windows of T tokens), the statistics ``eval``'s: per-window mean NLL, the
paired difference against float, its standard error over windows.

    PYTHONPATH=python python benchmarks/accuracy_fp8_granularity.py MODEL.gguf --text FILE \
        --window 512 --windows 16 --variants fp8-w-channel,fp8-w-block128 --out results.json

The JSON at --out is updated in place (variants merge by name; the float model's window NLLs are kept
and reused when the windows are the same), so variants can run in separate processes.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import zqkernels
from zqkernels.cli.stats import paired_nll_diff as paired

F8 = torch.float8_e4m3fn
B = 128

Fn = Optional[Callable[[torch.Tensor], torch.Tensor]]


# --- weights: [N, K] -> the float weight the format stands for ---------------------------------------

def _pad_k(w: torch.Tensor, mult: int) -> torch.Tensor:
    K = w.shape[1]
    Kp = -(-K // mult) * mult
    return w if Kp == K else F.pad(w, (0, Kp - K))


def w_int8(w):
    q, s = zqkernels.quantize_weight(w, fmt="int8")
    return zqkernels.dequantize(q, s, fmt="int8")


def w_fp8_channel(w):
    q, s = zqkernels.quantize_weight(w, fmt="fp8")
    return zqkernels.dequantize(q, s, fmt="fp8")


def w_fp8_block(w):
    """128 x 128 blocks (scheme fp8-block's format); K zero-padded to a multiple of 128."""
    K = w.shape[1]
    wp = _pad_k(w, B)
    q, s = zqkernels.quantize_weight(wp, fmt="fp8", block_size=B)
    return zqkernels.dequantize(q, s, fmt="fp8", block_size=B)[:, :K]


def w_fp8_group(g: int):
    """1 x g groups along K: the per-channel rule on each group of g consecutive values of a row."""
    def f(w):
        N, K = w.shape
        wp = _pad_k(w, g)
        rows = wp.reshape(-1, g)
        q, s = zqkernels.quantize_weight(rows.contiguous(), fmt="fp8")
        return zqkernels.dequantize(q, s, fmt="fp8").reshape(N, -1)[:, :K]
    return f


def w_int4_group(g: Optional[int], scale: str):
    """INT4 group-wise weights of scheme w4a8 (scale "int") / w4a8-floatscale ("float"); g None: per channel."""
    def f(w):
        N, K = w.shape
        if g is None:
            q, s = zqkernels.quantize_weight(w, fmt="int4")
            return zqkernels.dequantize(q, s, fmt="int4")
        q, s, sg = zqkernels.quantize_weight(w, fmt="int4", scale=scale, group_size=g)
        return zqkernels.dequantize(q, s, sg, fmt="int4", group_size=g, shape=(N, K))
    return f


# --- activations: [M, K] -> dequantized ----------------------------------------------------------------

def a_int8(x):
    q, s = zqkernels.quantize_per_token(x.contiguous())
    return q.float() * s.reshape(-1, 1)


def a_fp8_token(x):
    q, s = zqkernels.quantize_per_token(x.contiguous(), dtype=F8)
    return q.float() * s.reshape(-1, 1)


def a_fp8_group128(x):
    """Per token per group of 128 channels (fp8-block's activations); K zero-padded to a multiple of 128."""
    M, K = x.shape
    xp = _pad_k(x, B).contiguous()
    q, s = zqkernels.quantize_per_token_group(xp, group_size=B, dtype=F8)
    s = s.reshape(M, -1)  # (on CUDA an M-major view; CPU: row-major [M, K / 128])
    return (q.float().reshape(M, -1, B) * s[:, :, None]).reshape(M, -1)[:, :K]


# variant name -> (weight fn, activation fn, description)
VARIANTS: dict[str, tuple[Fn, Fn, str]] = {
    "float": (None, None, "no quantization"),
    # weights only (activations float)
    "int8-w-channel": (w_int8, None, "INT8 per-channel weights, float activations"),
    "fp8-w-channel": (w_fp8_channel, None, "FP8 E4M3 per-channel weights, float activations"),
    "fp8-w-block128": (w_fp8_block, None, "FP8 E4M3 128x128-block weights (K padded), float activations"),
    "fp8-w-g128": (w_fp8_group(128), None, "FP8 E4M3 1x128-group weights along K (K padded), float activations"),
    "fp8-w-g64": (w_fp8_group(64), None, "FP8 E4M3 1x64-group weights along K, float activations"),
    "fp8-w-g32": (w_fp8_group(32), None, "FP8 E4M3 1x32-group weights along K, float activations"),
    # activations only (weights float)
    "int8-a-token": (None, a_int8, "float weights, INT8 per-token activations"),
    "fp8-a-token": (None, a_fp8_token, "float weights, FP8 per-token activations"),
    "fp8-a-g128": (None, a_fp8_group128, "float weights, FP8 per-token-group (128, K padded) activations"),
    # weights and activations
    "w8a8": (w_int8, a_int8, "INT8 per-channel weights x INT8 per-token activations (scheme w8a8)"),
    "fp8": (w_fp8_channel, a_fp8_token, "FP8 per-channel weights x FP8 per-token activations (scheme fp8)"),
    "fp8-block": (w_fp8_block, a_fp8_group128,
                  "FP8 128x128-block weights x FP8 1x128-group activations, K padded (scheme fp8-block's math)"),
    "fp8-block-w+token-a": (w_fp8_block, a_fp8_token, "FP8 128x128-block weights x FP8 per-token activations"),
}
for _g in (32, 64, 128):
    for _sc, _nm in (("int", "w4a8"), ("float", "w4a8-floatscale")):
        VARIANTS[f"{_nm}-g{_g}-wonly"] = (w_int4_group(_g, _sc), None,
                                          f"INT4 g{_g} weights ({_sc} group scales, scheme {_nm}), float activations")
        VARIANTS[f"{_nm}-g{_g}"] = (w_int4_group(_g, _sc), a_int8,
                                    f"INT4 g{_g} weights ({_sc} group scales) x INT8 per-token activations")
VARIANTS["int4-channel-wonly"] = (w_int4_group(None, "int"), None, "INT4 per-channel weights, float activations")


def group_fits(name: str, K: int) -> bool:
    """INT4 groups must divide K (no padding: the w4a8 kernels' layout)."""
    for g in (32, 64, 128):
        if f"-g{g}" in name and name.startswith("w4a8"):
            return K % g == 0
    return True


class FakeQuant:
    """Swap every decoder Linear's weight for its fake-quantized copy and quantize its input."""

    def __init__(self, model, prefix: str = "model.layers."):
        self.lin = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefix)}
        self.orig = {n: m.weight.detach().clone() for n, m in self.lin.items()}
        self.handles: list = []

    def set(self, name: str) -> dict:
        """name: a VARIANTS key, or "KEY@PART": that variant on the Linears whose name contains PART only."""
        self.reset()
        base, _, only = name.partition("@")
        wf, af, _ = VARIANTS[base]
        errs, skipped = [], []
        for n, m in self.lin.items():
            w = self.orig[n]
            if not group_fits(base, w.shape[1]) or (only and only not in n):
                skipped.append(n)  # stays float
                continue
            if wf is not None:
                wq = wf(w.float()).to(w.dtype)
                errs.append(float((wq.float() - w.float()).norm() / w.float().norm()))
                m.weight.data.copy_(wq)
            if af is not None:
                def pre(mod, args, af=af):
                    x = args[0]
                    sh = x.shape
                    return (af(x.reshape(-1, sh[-1]).float()).reshape(sh).to(x.dtype),) + tuple(args[1:])
                self.handles.append(m.register_forward_pre_hook(pre))
        return {"weight_rel_err_mean": sum(errs) / len(errs) if errs else None,
                "weight_rel_err_max": max(errs) if errs else None,
                "layers_quantized": len(self.lin) - len(skipped), "layers_float": len(skipped),
                "float_layers": skipped[:8] + (["..."] if len(skipped) > 8 else [])}

    def reset(self):
        for h in self.handles:
            h.remove()
        self.handles = []
        for n, m in self.lin.items():
            m.weight.data.copy_(self.orig[n])


@torch.no_grad()
def window_nll(model, windows: torch.Tensor) -> list[float]:
    out = []
    for w in windows:
        logits = model(input_ids=w[None]).logits.float()
        out.append(float(F.cross_entropy(logits[0, :-1], w[1:], reduction="none").double().mean()))
    return out


FP8_MIN_NORMAL = 2.0 ** -6
FP8_MIN_SUB = 2.0 ** -9


def fp8_weight_stats(w: torch.Tensor) -> dict:
    """Per FP8 weight granularity: relative Frobenius error, and the fraction of nonzero weights whose
    scaled value |w| * 448 / amax(group) falls below E4M3's smallest normal (2^-6: fewer mantissa bits)
    or rounds to zero (below 2^-10)."""
    N, K = w.shape
    out = {}
    for name, fn, g in (("channel", w_fp8_channel, None), ("block128", w_fp8_block, "block"),
                        ("g128", w_fp8_group(128), 128), ("g32", w_fp8_group(32), 32)):
        a = w.abs()
        if g is None:
            amax = a.amax(1, keepdim=True).expand(N, K)
        elif g == "block":
            ap = _pad_k(a, B)
            Np = -(-N // B) * B
            ap = F.pad(ap, (0, 0, 0, Np - N))
            blk = ap.reshape(Np // B, B, -1, B).amax((1, 3))
            amax = blk.repeat_interleave(B, 0).repeat_interleave(B, 1)[:N, :K]
        else:
            ap = _pad_k(a, g)
            amax = ap.reshape(N, -1, g).amax(2, keepdim=True).expand(N, ap.shape[1] // g, g).reshape(N, -1)[:, :K]
        v = a * 448.0 / amax.clamp_min(1e-30)
        nz = a > 0
        cnt = max(int(nz.sum()), 1)
        out[name] = {"rel_err": float((fn(w) - w).norm() / w.norm()),
                     "subnormal_frac": int(((v < FP8_MIN_NORMAL) & nz).sum()) / cnt,
                     "flushed_frac": int(((v < FP8_MIN_SUB / 2) & nz).sum()) / cnt}
    return out


def ppl(nll: list[float]) -> float:
    return math.exp(sum(nll) / len(nll))  # equal tokens per window


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a .gguf file or a local transformers directory (causal LM)")
    ap.add_argument("--text", required=True)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--variants", default="fp8-w-channel,fp8-w-block128",
                    help=f"comma-separated, of: {', '.join(VARIANTS)}; NAME@PART applies NAME to the Linears whose "
                    "name contains PART only (e.g. w4a8-g64-wonly@down_proj)")
    ap.add_argument("--out", required=True, help="JSON, updated in place")
    ap.add_argument("--weight-stats", action="store_true",
                    help="also record FP8 weight error / subnormal fractions per granularity (no forward passes)")
    args = ap.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    bad = [v for v in names if v.partition("@")[0] not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(args.model)
    kw = {"gguf_file": p.name} if p.suffix == ".gguf" else {}
    root = p.parent if p.suffix == ".gguf" else p
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(root, local_files_only=True, **kw)
        model = AutoModelForCausalLM.from_pretrained(root, local_files_only=True, dtype=torch.float32, **kw).eval()
    ids = torch.tensor(tok(Path(args.text).read_text(encoding="utf-8", errors="replace"),
                           add_special_tokens=False)["input_ids"], dtype=torch.long)
    n = min(ids.numel() // args.window, args.windows)
    windows = ids[: n * args.window].reshape(n, args.window)
    print(f"loaded in {time.perf_counter() - t0:.1f} s; {n} windows of {args.window}", flush=True)

    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    key = {"model": str(p.name), "text": str(Path(args.text).name), "window": args.window, "windows": n,
           "first_ids": windows[:, :4].tolist()}
    if res.get("setup", {}).get("key") != key:
        res = {"setup": {"key": key}, "variants": {}}
    res["setup"].update({"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                         "predicted_tokens_per_window": args.window - 1, "script": "benchmarks/accuracy_fp8_granularity.py"})
    fq = FakeQuant(model)
    if args.weight_stats:
        per = {n: fp8_weight_stats(w.float()) for n, w in fq.orig.items()}
        summ = {}
        for gname in next(iter(per.values())):
            for k in ("rel_err", "subnormal_frac", "flushed_frac"):
                vals = [d[gname][k] for d in per.values()]
                summ.setdefault(gname, {})[k + "_mean"] = sum(vals) / len(vals)
                summ[gname][k + "_max"] = max(vals)
        res["fp8_weight_stats"] = {"layers": len(per), "summary": summ}
        for gname, d in summ.items():
            print(f"fp8 weights {gname:<9} " + "  ".join(f"{k} {v:.3g}" for k, v in d.items()), flush=True)
        out.write_text(json.dumps(res, indent=1))
    if "float" not in res["variants"]:
        t = time.perf_counter()
        nll = window_nll(model, windows)
        res["variants"]["float"] = {"ppl": ppl(nll), "window_nll": nll, "seconds": time.perf_counter() - t,
                                    "desc": VARIANTS["float"][2]}
        print(f"float ppl {ppl(nll):.3f} ({time.perf_counter() - t:.0f} s)", flush=True)
        out.write_text(json.dumps(res, indent=1))
    ref = res["variants"]["float"]["window_nll"]
    for name in names:
        if name == "float":
            continue
        t = time.perf_counter()
        info = fq.set(name)
        nll = window_nll(model, windows)
        fq.reset()
        st = paired(ref, nll)
        desc = VARIANTS[name.partition("@")[0]][2] + (f" (only Linears named *{name.partition('@')[2]}*)" if "@" in name else "")
        res["variants"][name] = {"desc": desc, "ppl": ppl(nll), "vs_float": st, "window_nll": nll,
                                 "seconds": time.perf_counter() - t, "cmd": " ".join(sys.argv), **info}
        print(f"{name:<28} ppl {ppl(nll):8.3f}  {(st['ppl_ratio'] - 1) * 100:+6.2f}%  dNLL {st['mean_diff']:+.4f} +- "
              f"{st['se']:.4f}  werr {info['weight_rel_err_mean'] or 0:.4f}  float layers {info['layers_float']}  "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
        out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
