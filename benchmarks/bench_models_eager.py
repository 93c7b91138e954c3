"""Whole-layer / whole-model time of quantize_model(W8A8) against bf16, eager and as a CUDA graph.

The core-v2 question: does a converted model still pay for the Python around the kernels when run
eagerly? Models (random weights, bf16, built in code or from transformers configs):

- a LLaMA-7B-shaped decoder layer in plain torch (RMSNorm, q/k/v/o projections, SDPA, SwiGLU MLP
  4096 -> 11008): decode batch 1 and 16 (one token each, no KV cache), prefill 2048 tokens;
- HF BERT-base (batch 1, seq 128) and BERT-large (batch 8, seq 128) from ``BertConfig``, when
  transformers is installed.

Each is timed eagerly (back-to-back calls, one sync; bf16 and W8A8 in alternating rounds, the
speedup is the median of per-round ratios) and as a captured CUDA graph (replays), in one run. torch.compile modes are the fused-layer
benchmark's job (issue: quantized models faster than bf16 end to end).

    python benchmarks/bench_models_eager.py [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import capture_graph, environment, write_json  # noqa: E402


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(v + self.eps)).to(x.dtype) * self.weight


class LlamaLayer(nn.Module):
    """LLaMA-7B-shaped decoder layer (no rotary, no KV cache: the GEMM and glue cost is the point)."""

    def __init__(self, d: int = 4096, ff: int = 11008, heads: int = 32) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(d, ff, bias=False), nn.Linear(d, ff, bias=False)
        self.down = nn.Linear(ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, D = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(B, S, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=S > 1)
        x = x + self.o(a.transpose(1, 2).reshape(B, S, D))
        h = self.norm2(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


def _sample_ms(fn: Callable[[], Any], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / calls


def eager_ms(fn: Callable[[], Any], rounds: int = 7, calls: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    return statistics.median(_sample_ms(fn, calls) for _ in range(rounds))


def paired_eager_ms(fa: Callable[[], Any], fb: Callable[[], Any], rounds: int = 9, calls: int = 20):
    """Eager ms of fa and fb, alternating rounds (host drift hits both alike): medians and the median
    of per-round ratios a / b."""
    for f in (fa, fb):
        for _ in range(3):
            f()
    torch.cuda.synchronize()
    a, b = [], []
    for _ in range(rounds):
        a.append(_sample_ms(fa, calls))
        b.append(_sample_ms(fb, calls))
    return statistics.median(a), statistics.median(b), statistics.median(x / y for x, y in zip(a, b))


def graph_ms(fn: Callable[[], Any], rounds: int = 7, calls: int = 20) -> float | None:
    try:
        return _graph_ms(fn, rounds, calls)
    except Exception as e:  # noqa: BLE001 - a model that cannot be captured is reported, not fatal
        print(f"  (CUDA graph capture failed: {type(e).__name__}: {str(e).splitlines()[0][:120]})")
        torch.cuda.synchronize()
        return None


def _graph_ms(fn: Callable[[], Any], rounds: int, calls: int) -> float:
    g, _ = capture_graph(fn, torch.device("cuda", torch.cuda.current_device()))
    return eager_ms(g.replay, rounds, calls)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def cases(dev: torch.device) -> list[tuple[str, nn.Module, Callable[[nn.Module], Any]]]:
    torch.manual_seed(0)
    out = []
    layer = LlamaLayer().to(dev, torch.bfloat16).eval()
    with torch.no_grad():
        for p in layer.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    for name, B, S in (("llama7b-layer decode b1", 1, 1), ("llama7b-layer decode b16", 16, 1),
                       ("llama7b-layer prefill 2048", 1, 2048)):  # fmt: skip
        x = torch.randn(B, S, 4096, device=dev, dtype=torch.bfloat16)
        out.append((name, layer, lambda m, x=x: m(x)))
    try:
        from transformers import BertConfig, BertModel
    except ImportError:
        print("transformers not installed: BERT rows skipped")
        return out
    for name, cfg, B, S in (
        ("bert-base b1 s128", BertConfig(), 1, 128),
        ("bert-large b8 s128", BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                          intermediate_size=4096), 8, 128),
    ):  # fmt: skip
        m = BertModel(cfg).to(dev, torch.bfloat16).eval()
        ids = torch.randint(0, cfg.vocab_size, (B, S), device=dev)
        out.append((name, m, lambda m, ids=ids: m(input_ids=ids).last_hidden_state))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    import zqkernels as zq

    if not torch.cuda.is_available():
        print("bench_models_eager: needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    env = environment(dev)
    print(f"zqkernels {zq.__version__} (commit {env['commit']}) | torch {env['torch']} | {env['device']}")
    print(f"{'case':<28} {'bf16 eager':>10} {'w8a8 eager':>10} {'x':>6} | {'bf16 graph':>10} "
          f"{'w8a8 graph':>10} {'x':>6} | {'cos':>7}")  # fmt: skip
    rows = []
    quantized: dict[int, nn.Module] = {}
    with torch.inference_mode():
        for name, model, call in cases(dev):
            if id(model) not in quantized:
                quantized[id(model)] = zq.quantize_model(copy.deepcopy(model))
            qm = quantized[id(model)]
            ref, got = call(model), call(qm)
            be, qe, ratio = paired_eager_ms(lambda: call(model), lambda: call(qm))
            r = {
                "case": name,
                "bf16_eager_ms": be,
                "w8a8_eager_ms": qe,
                "eager_speedup": ratio,
                "bf16_graph_ms": graph_ms(lambda: call(model)),
                "w8a8_graph_ms": graph_ms(lambda: call(qm)),
                "cosine_vs_bf16": cosine(got, ref),
            }
            rows.append(r)
            e = ratio
            bg, qg = r["bf16_graph_ms"], r["w8a8_graph_ms"]
            gx = f"{bg / qg:5.2f}x" if bg and qg else "    -"
            fmt = lambda v: f"{v:10.3f}" if v else f"{'-':>10}"  # noqa: E731
            print(f"{name:<28} {r['bf16_eager_ms']:10.3f} {r['w8a8_eager_ms']:10.3f} {e:5.2f}x | "
                  f"{fmt(bg)} {fmt(qg)} {gx} | {r['cosine_vs_bf16']:.5f}")  # fmt: skip
            torch.cuda.empty_cache()
    print("times in ms per forward; x = bf16 / w8a8 (> 1: W8A8 faster)")
    if args.json:
        write_json(args.json, {"header": env, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
