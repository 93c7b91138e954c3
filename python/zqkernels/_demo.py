"""``python -m zqkernels demo``: quantize a small transformer built in code and report what W8A8 costs.

A 2-layer decoder (d_model 256, 4 heads, ffn 1024, vocab 1000) with seeded random weights runs on
fixed random token ids: in float32 (the baseline), in the working dtype (bf16) unquantized, and with
every Linear but the LM head replaced by QLinear (``quantize_model``). It prints the logits' relative
error and top-1 agreement against the baseline, and each layer's weight quantization error.
CUDA tensors run the kernels; on CPU the same code runs the pure-torch reference. No downloads.
"""

from __future__ import annotations

import copy
import functools
import time
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import QLinear, int8_gemm, quantize_model
from ._ext import _C

D_MODEL, N_HEADS, D_FFN, N_LAYERS, VOCAB, SEQ, BATCH = 256, 4, 1024, 2, 1000, 32, 2


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        h = self.ln1(x)
        q, k, v = (
            p(h).view(B, T, self.heads, D // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v)
        )
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, D))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyLM(nn.Module):
    """Decoder-only transformer, pre-norm, learned positions."""

    def __init__(
        self,
        vocab: int = VOCAB,
        d: int = D_MODEL,
        heads: int = N_HEADS,
        ffn: int = D_FFN,
        layers: int = N_LAYERS,
        max_len: int = SEQ,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(_Block(d, heads, ffn) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.ln_f(x))


def build_model(seed: int = 0, device: Optional[torch.device] = None) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM().to(device).eval()


@functools.lru_cache(maxsize=None)
def gpu_ready() -> tuple[bool, str]:
    """(True, '') if cuda:0 can run the zqkernels kernels, else (False, why) with a one-line why."""
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return False, f"this torch ({torch.__version__}) is built without CUDA"
        return False, "torch sees no CUDA GPU"
    if _C is None:
        return False, "this zqkernels build has no CUDA kernels (reinstall it with nvcc on PATH)"
    try:  # the smallest GEMM the kernels take: says whether this GPU / build combination runs
        xq = torch.ones(1, 16, dtype=torch.int8, device="cuda")
        wq = torch.ones(8, 16, dtype=torch.int8, device="cuda")
        int8_gemm(xq, wq, torch.ones(1, device="cuda"), torch.ones(8, device="cuda"))
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - any failure means: do not run the kernels here
        lines = str(e).strip().splitlines()
        return False, f"{type(e).__name__}: {lines[0] if lines else ''}"
    return True, ""


def _compare(y: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    y, ref = y.float(), ref.float()
    rel = float((y - ref).norm() / ref.norm())
    top1 = float((y.argmax(-1) == ref.argmax(-1)).float().mean())
    return rel, top1


def run(
    device: Optional[str] = None,
    dtype: torch.dtype = torch.bfloat16,
    print_fn: Optional[Callable[[str], Any]] = print,
) -> dict[str, Any]:
    """Run the demo; returns its numbers (print_fn=None prints nothing)."""
    say = print_fn or (lambda s: None)
    dev = torch.device(device or ("cuda" if gpu_ready()[0] else "cpu"))
    t0 = time.perf_counter()
    model = build_model(device=dev)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g).to(dev)
    qmodel = quantize_model(copy.deepcopy(model).to(dtype), skip=("lm_head",))
    with torch.inference_mode():
        ref = model(ids)
        plain = model.to(dtype)(ids)
        quant = qmodel(ids)
    layers = []
    float_linears = dict(model.named_modules())  # model is now in `dtype`: the weights QLinear saw
    for name, m in qmodel.named_modules():
        if isinstance(m, QLinear):
            w = float_linears[name].weight.detach().float()
            w_hat = m.weight_q.float() * m.weight_scale[:, None]
            layers.append((name, tuple(w.shape), float((w - w_hat).norm() / w.norm())))
    res = {
        "device": str(dev),
        "dtype": str(dtype).replace("torch.", ""),
        "tokens": BATCH * SEQ,
        "plain": _compare(plain, ref),
        "w8a8": _compare(quant, ref),
        "layers": layers,
        "seconds": time.perf_counter() - t0,
    }
    path = "CUDA kernels" if dev.type == "cuda" else "pure-torch reference (CPU)"
    say(
        f"zqkernels demo: {N_LAYERS}-layer transformer, d_model {D_MODEL}, ffn {D_FFN}, {N_HEADS} heads, "
        f"vocab {VOCAB}; {BATCH}x{SEQ} random tokens on {dev} ({path})"
    )
    say(f"logits vs the float32 model:  {'relative error':>15} {'top-1 agreement':>16}")
    for key, label in (
        ("plain", f"{res['dtype']}, not quantized"),
        ("w8a8", f"W8A8 QLinear ({res['dtype']})"),
    ):
        rel, top1 = res[key]
        say(f"  {label:<28} {rel:15.4f} {top1:16.1%}")
    say("weight quantization error per layer (||w - sw*wq|| / ||w||; lm_head left in float):")
    for name, shape, err in layers:
        say(f"  {name:<18} {str(list(shape)):<12} {err:.4%}")
    say(f"done in {res['seconds']:.1f} s")
    return res
