"""Accuracy of ZeroQuant-HERO-style INT8 attention on a real model, on the CPU (issue 19, item 2):
SmolLM2-135M perplexity on *Emma* with the attention's two matrix products in INT8, simulated.

No kernel runs this yet: it answers whether INT8 attention is worth a kernel, level by level.
Models, text and loaders are accuracy_fp.py's (its docstring has the downloads); the attention goes
through transformers' AttentionInterface (a registered function, the model otherwise as loaded).

Attention variants (per head; exact integer products, float64 sums):
- ``fp``: float attention (the reference: the same function with nothing quantized);
- ``qk``: q and k rows quantized to INT8 per token (symmetric, amax / 127), s = (q8 . k8) sq sk * scale;
  softmax and p . v in float;
- ``qk+pv``: also p . v in INT8: p (in [0, 1]) per query row in UINT8 (amax / 255), v per channel
  over the sequence's keys (symmetric INT8, one scale per head and channel: the scale a static or
  calibrated V scale would give; a decode kernel would keep a running or calibrated one).
- ``qk+pv-fp8``: q . k in INT8 as ``qk``, p . v in FP8 E4M3 (FlashAttention-3's choice): p per query
  row scaled to 448 / amax, v per head and channel to 448 / amax, both rounded to E4M3 (products
  exact in float64).

Linears: float (attention alone), or W8A8 (accuracy.py's simulation: per-token INT8 activations x
per-channel INT8 weights, the library's scheme) to see the attention's share next to the GEMMs'.

    python benchmarks/accuracy_int8_attention.py [--windows 2] [--data /tmp/data] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as acc  # noqa: E402
import accuracy_fp as afp  # noqa: E402

MODE = {"attn": "fp"}


def _rows_int8(t: torch.Tensor) -> torch.Tensor:
    """Per-row (last dim) symmetric INT8 fake quantization, in float64."""
    t = t.double()
    s = t.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127.0
    return torch.round(t / s).clamp(-127, 127) * s


def _cols_int8(t: torch.Tensor) -> torch.Tensor:
    """Per-channel (over dim -2, the keys) symmetric INT8 fake quantization, in float64."""
    t = t.double()
    s = t.abs().amax(-2, keepdim=True).clamp_min(1e-30) / 127.0
    return torch.round(t / s).clamp(-127, 127) * s


def _p_uint8(p: torch.Tensor) -> torch.Tensor:
    s = p.amax(-1, keepdim=True).clamp_min(1e-30) / 255.0
    return torch.round(p / s).clamp(0, 255) * s


def _e4m3(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Symmetric E4M3 fake quantization, one scale (amax / 448) per slice along ``dim``, in float64."""
    t = t.double()
    s = t.abs().amax(dim, keepdim=True).clamp_min(1e-30) / 448.0
    return (t / s).to(torch.float8_e4m3fn).double() * s


def int8_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [B, H, S, hd], key / value [B, KV, L, hd]; returns
    ([B, S, H, hd], None)."""
    mode = MODE["attn"]
    G = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(G, 1)
    v = value.repeat_interleave(G, 1)
    S, L = query.shape[-2], k.shape[-2]
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    q2, k2 = (_rows_int8(query), _rows_int8(k)) if mode in ("qk", "qk+pv", "qk+pv-fp8") else (query.double(), k.double())
    s = (q2 @ k2.transpose(-1, -2)) * scale
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            s = s.masked_fill(~attention_mask[..., :L], float("-inf"))
        else:
            s = s + attention_mask[..., :L].double()
    elif S > 1 and getattr(module, "is_causal", True):  # causal, mask skipped by transformers (not an encoder's)
        s = s.masked_fill(torch.ones(S, L, dtype=torch.bool).triu(L - S + 1), float("-inf"))
    p = torch.softmax(s, dim=-1)
    if mode == "qk+pv":
        out = _p_uint8(p) @ _cols_int8(v)
    elif mode == "qk+pv-fp8":
        out = _e4m3(p, -1) @ _e4m3(v, -2)
    else:
        out = p @ v.double()
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--data", default="/tmp/data")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register("zq_int8_sim", int8_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("zq_int8_sim", sdpa_mask)
    data = Path(args.data)
    model, tok, gg = afp.load_smollm2(data)
    text = afp.load_austen(data)["emma"]
    ids = tok(text, return_tensors="pt").input_ids[0][: args.windows * args.window]
    with torch.no_grad():  # the check of the attention function: "fp" must give transformers' own ppl
        sdpa_ppl, _ = afp.perplexity(model, ids, args.window, 1)
    print(f"float  attention sdpa   ppl {sdpa_ppl:8.3f}  (transformers' own, {model.config._attn_implementation})")
    model.set_attn_implementation("zq_int8_sim")
    linears = afp.block_linears(model, "model.layers.")
    rows = [{"linears": "float", "attention": "transformers sdpa", "ppl": sdpa_ppl}]
    for lin in ("float", "w8a8"):
        acc.swap(linears, acc.sim(acc.a_int8, acc.w_int8) if lin == "w8a8" else None)
        for mode in ("fp", "qk", "qk+pv"):
            MODE["attn"] = mode
            t0 = time.time()
            with torch.no_grad():
                ppl, n = afp.perplexity(model, ids, args.window, 1)
            rows.append({"linears": lin, "attention": mode, "ppl": ppl, "tokens": n, "s": time.time() - t0})
            base = next(r["ppl"] for r in rows if r["linears"] == lin and r["attention"] == "fp")
            if lin == "float" and mode == "fp":
                assert abs(ppl / sdpa_ppl - 1) < 1e-4, (ppl, sdpa_ppl)  # the function is the attention
            print(f"{lin:<6} attention {mode:<6} ppl {ppl:8.3f}  ({100 * (ppl / base - 1):+.2f}% vs float attention,"
                  f" {n} tokens, {rows[-1]['s']:.0f} s)", flush=True)
    acc.swap(linears, None)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": gg, "text": "emma", "windows": args.windows,
                                               "window": args.window, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
