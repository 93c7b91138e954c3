"""Quantized models outside torch.no_grad() (nn/grad.py), on CPU: converted models, QLinear and the
fused blocks give the no-grad outputs bit for bit under grad mode in eval(); gradients reach the
inputs through the dequantized weights (straight through the activation quantization) and never the
quantized buffers; train() mode with an input that requires grad raises."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import zqkernels
from torch import nn
from zqkernels.nn.blocks import QuantizedBlock, parts_of
from zqkernels.schemes import SCHEMES

transformers = pytest.importorskip("transformers")

SCHEME_NAMES = sorted(SCHEMES)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def llama(layers=2):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=256, num_hidden_layers=layers)
    return transformers.LlamaForCausalLM(cfg).eval()


def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=300, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=256, attn_implementation="sdpa")
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=128, n_layer=2, n_head=4, vocab_size=300)
    return transformers.GPT2LMHeadModel(cfg).eval()


IDS = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))


def quantized(model: nn.Module, scheme: str, fused: bool, **kw) -> nn.Module:
    q = copy.deepcopy(model)
    zqkernels.quantize_(q, zqkernels.SchemeConfig(scheme, fused_blocks=fused, **kw))
    return q


def embed(model: nn.Module) -> torch.Tensor:
    return model.get_input_embeddings()(IDS).detach()


def output(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _qweight(q: nn.Module) -> torch.Tensor:
    """The float weight a QLinear stands for, from the scheme's dequantize (and LoRC's factors)."""
    w = q.qscheme.dequantize(q).double()
    if q.lorc_a is not None:
        w = w + (q.lorc_a.double() @ q.lorc_b.double()).t()
    return w


def _fake_act(x: torch.Tensor, qs) -> torch.Tensor:
    """x with the values of the scheme's per-token (group) activation quantization; identity gradient."""
    with torch.no_grad():
        xq = qs.fake_act(x.reshape(-1, x.shape[-1]).float()).to(x.dtype).view(x.shape)
    return x + (xq - x).detach()


def dequantized_float(model_float: nn.Module, model_quant: nn.Module) -> nn.Module:
    """A float64 copy of `model_float` whose Linears (HF Conv1Ds) hold the weights `model_quant`'s QLinears
    and fused blocks compute with (fused roles split back into their parts), their inputs quantized as
    the scheme quantizes them (straight through): the fake-quant model of `model_quant`."""
    ref = copy.deepcopy(model_float).double()

    def put(name: str, w: torch.Tensor, q: nn.Module) -> None:
        m = ref.get_submodule(name)
        with torch.no_grad():
            if isinstance(m, nn.Linear):
                m.weight.copy_(w)
            else:  # HF Conv1D: weight [in, out]
                m.weight.copy_(w.t())
        if isinstance(q, zqkernels.QLinear):  # the scheme's activation quantization, straight through
            m.register_forward_pre_hook(lambda _m, args: (_fake_act(args[0], q.qscheme),))

    blocks = [name for name, m in model_quant.named_modules() if isinstance(m, QuantizedBlock)]
    for name, m in model_quant.named_modules():
        if any(name.startswith(f"{b}.") for b in blocks):
            continue  # a fused block's role: below
        if isinstance(m, zqkernels.QLinear):
            put(name, _qweight(m), m)
        elif isinstance(m, QuantizedBlock):
            for role, parts in parts_of(m).items():
                lin = getattr(m, role)
                w = _qweight(lin) if isinstance(lin, zqkernels.QLinear) else lin.weight.double()
                mods = [ref.get_submodule(f"{name}.{p}") for p in parts]
                sizes = [p.weight.shape[0] if isinstance(p, nn.Linear) else p.weight.shape[1] for p in mods]
                for p, wp in zip(parts, w.split(sizes, 0)):
                    put(f"{name}.{p}", wp, lin)
    return ref


def loss(out: torch.Tensor) -> torch.Tensor:
    """A random projection of the output (a plain sum of post-LayerNorm rows has no gradient)."""
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return (out.double() * w).sum()


def grad_mode_checks(model_float, q, min_cos: float):
    """q in grad mode == no_grad bit for bit; embedding grads finite, close to the dequantized float
    model's; no grad on any quantized buffer or frozen parameter of the quantized modules."""
    e = embed(q)
    with torch.no_grad():
        ref = output(q(inputs_embeds=e))
        ref_ids = output(q(IDS))
    x = e.clone().requires_grad_(True)
    out = output(q(inputs_embeds=x))
    assert out.requires_grad
    assert torch.equal(out, ref)
    assert torch.equal(output(q(IDS)), ref_ids)  # the embedding weight requires grad: the case
    loss(out).backward()
    g = x.grad
    assert g is not None and g.dtype == x.dtype and torch.isfinite(g).all() and g.abs().sum() > 0

    fl = dequantized_float(model_float, q)
    xf = e.double().requires_grad_(True)
    loss(output(fl(inputs_embeds=xf))).backward()
    c = cos(g, xf.grad)
    assert c > min_cos, c

    for name, m in q.named_modules():
        if isinstance(m, (zqkernels.QLinear, QuantizedBlock)):
            for bname, b in m.named_buffers():
                assert b.grad is None and not b.requires_grad, f"{name}.{bname}"
            for pname, p in m.named_parameters():
                assert p.grad is None, f"{name}.{pname}: the quantized modules' parameters are frozen"
    return c


# Against the fake-quant model in float64 the gradients differ only where the kernels' values do: int8
# activations x dequantized weights are exact products (fp32 sums); the FP8 GEMMs' float products and
# accumulation move each layer's output by ~0.2 % (docs/FP8.md), and the trajectory with them.
MIN_COS = {"int8": 0.99999, "fp8": 0.9995}


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per_linear"])
@pytest.mark.parametrize("scheme", SCHEME_NAMES)
def test_llama_grad_mode_every_scheme(scheme, fused):
    m = llama()
    q = quantized(m, scheme, fused)
    kinds = {type(x).__name__ for x in q.modules()}
    assert ("QLlamaDecoderLayer" in kinds) == fused, kinds
    grad_mode_checks(m, q, MIN_COS[SCHEMES[scheme].act_fmt])


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per_linear"])
def test_bf16_model(fused):
    """bf16 activations: the same values, bf16 input grads (each GEMM's rounded once from fp32)."""
    m = llama().to(torch.bfloat16)
    q = quantized(m, "w8a8", fused)
    grad_mode_checks(m, q, 0.9995)  # bf16 rounding of every activation on the quantized side


@pytest.mark.parametrize("level", ["int8", "accuracy"])
@pytest.mark.parametrize("make", [bert, gpt2], ids=["bert", "gpt2"])
def test_post_norm_gelu_and_float_roles(make, level):
    """BERT (post-norm, GeLU), GPT-2 (Conv1D, tanh GeLU), precision levels with float roles."""
    m = make()
    grad_mode_checks(m, quantized(m, "w8a8", True, level=level), MIN_COS["int8"])


def test_fused_grads_match_per_linear_and_lorc():
    m = llama()
    fused, per_linear = quantized(m, "w8a8", True), quantized(m, "w8a8", False)
    grads = []
    for q in (fused, per_linear):
        x = embed(q).requires_grad_(True)
        loss(output(q(inputs_embeds=x))).backward()
        grads.append(x.grad)
    assert cos(*grads) > 0.9999  # the same weights; fusion moves activation roundings only
    zqkernels.lorc(fused, m, rank=8)
    assert fused.model.layers[0].qkv.lorc_rank == 8
    grad_mode_checks(m, fused, MIN_COS["int8"])  # the reference holds W_deq + (lorc_a @ lorc_b).T


def test_kv_cache_under_grad_mode():
    """A prefill then a step on a DynamicCache: the no-grad values bit for bit (the cache receives the
    same K / V), and the step's gradient reaches the prefill's inputs through the cached keys."""
    q = quantized(llama(), "w8a8", True)
    # transformers >= 5.2x names the cache `cache` (deprecating past_key_values)
    kw = "cache" if "cache" in inspect.signature(type(q).forward).parameters else "past_key_values"
    x = embed(q).requires_grad_(True)
    want = []
    with torch.no_grad():
        cache = transformers.DynamicCache()
        want.append(q(inputs_embeds=x[:, :8], use_cache=True, **{kw: cache}).logits)
        want.append(q(inputs_embeds=x[:, 8:], use_cache=True, **{kw: cache}).logits)
        full = q(inputs_embeds=x).logits
    cache = transformers.DynamicCache()
    got = q(inputs_embeds=x[:, :8], use_cache=True, **{kw: cache}).logits
    nxt = q(inputs_embeds=x[:, 8:], use_cache=True, **{kw: cache}).logits
    assert torch.equal(got, want[0]) and torch.equal(nxt, want[1])
    torch.testing.assert_close(nxt, full[:, 8:], rtol=0, atol=0.05 * float(full.abs().max()))
    nxt.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[:, :8].abs().sum() > 0


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per_linear"])
def test_train_mode(fused):
    q = quantized(llama(), "w8a8", fused)
    x = embed(q)
    with torch.no_grad():
        ref = output(q(inputs_embeds=x))
    q.train()
    what = r"QLlamaDecoderLayer\(layer_idx=0, scheme=w8a8\)" if fused else r"QLinear\(in_features=128, out_features=128"
    with pytest.raises(RuntimeError, match=what + r".*training is not supported\. .*frozen buffers.*\.eval\(\)"):
        q(inputs_embeds=x.clone().requires_grad_(True))
    # under no_grad / inference_mode, train() mode runs the inference forward (no dropout here)
    with torch.no_grad():
        assert torch.equal(output(q(inputs_embeds=x.clone().requires_grad_(True))), ref)
    with torch.inference_mode():
        assert torch.equal(output(q(inputs_embeds=x)), ref)
    if fused:  # an input that needs no grad: nothing to train through, it runs (per Linear, the float
        # norms before the QLinears make their inputs require grad)
        assert torch.equal(output(q(inputs_embeds=x)), ref)


def test_conversion_keeps_eval_mode():
    for fused in (True, False):
        q = quantized(llama(), "w8a8", fused)
        assert not any(m.training for m in q.modules())
    m = llama().train()
    q = quantized(m, "w8a8", True)
    assert all(m.training for m in q.modules())


def _layer(scheme: str, n=48, k=256, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(k, n, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    q = zqkernels.QLinear.from_linear(lin, scheme)
    return lin, q.eval()


@pytest.mark.parametrize("scheme", SCHEME_NAMES)
def test_qlinear_grad_is_grad_y_times_w_deq(scheme):
    n = 64 if getattr(zqkernels.schemes.SCHEMES[scheme], "packed", None) else 40  # packed formats: N % 16 == 0
    lin, q = _layer(scheme, n=n)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, 256, generator=g)
    gy = torch.randn(3, 5, n, generator=g)
    with torch.no_grad():
        ref = q(x)
    xr = x.clone().requires_grad_(True)
    y = q(xr)
    assert torch.equal(y, ref) and y.grad_fn is not None
    y.backward(gy)
    w = q.qscheme.dequantize(q)
    assert torch.equal(xr.grad, (gy.reshape(-1, n) @ w).view(3, 5, 256))  # what the backward computes
    want = gy.double() @ w.double()
    torch.testing.assert_close(xr.grad.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    assert all(b.grad is None and not b.requires_grad for b in q.buffers())

    # LoRC: y += (x @ a) @ b, so grad_x += grad_y @ (a @ b).T
    q.add_lorc(lin.weight, rank=4, dtype=torch.float32)
    xr = x.clone().requires_grad_(True)
    q(xr).backward(gy)
    want = gy.double() @ (w.double() + (q.lorc_a.double() @ q.lorc_b.double()).t())
    torch.testing.assert_close(xr.grad.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_qlinear_half_precision_grad(dtype):
    lin, q = _layer("w8a8", dtype=dtype)
    x = torch.randn(7, 256, dtype=dtype)
    gy = torch.randn(7, 48, dtype=dtype)
    xr = x.clone().requires_grad_(True)
    y = q(xr)
    with torch.no_grad():
        assert torch.equal(y, q(x))
    y.backward(gy)
    assert xr.grad.dtype == dtype
    want = gy.float() @ q.qscheme.dequantize(q)  # fp32 accumulation, rounded once to x's dtype
    assert torch.equal(xr.grad, want.to(dtype))


def test_qlinear_train_mode_error_and_modes():
    _, q = _layer("w8a8")
    x = torch.randn(2, 256, requires_grad=True)
    q.train()
    with pytest.raises(RuntimeError, match=(
        r"^QLinear\(in_features=256, out_features=48, scheme=w8a8\): training is not supported\. Its quantized "
        r"weights are frozen buffers .*Call \.eval\(\) .* train the float model and quantize it afterwards\.$")):
        q(x)
    with torch.no_grad():
        ref = q(x)
    with torch.inference_mode():
        assert torch.equal(q(x), ref)
    assert torch.equal(q(x.detach()), ref)  # no grad needed: runs in train() mode too
    q.eval()
    assert torch.equal(q(x), ref)
