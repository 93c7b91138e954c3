"""LKD (zqkernels.algorithms.lkd) and the fake-quant straight-through paths it trains through, CPU."""

from __future__ import annotations

import copy
import importlib
import weakref

import pytest
import torch
import zqkernels
from torch import nn
from zqkernels import (
    FP8Config,
    QLinear,
    W8A8Config,
    dequantize,
    quantize_,
    quantize_per_token,
    quantize_weight,
)
from zqkernels.algorithms.fakequant import (
    FakeQuantLinear,
    fake_quant_act,
    fake_quant_weight,
)

lkd_mod = importlib.import_module("zqkernels.algorithms.lkd")
fq_mod = importlib.import_module("zqkernels.algorithms.fakequant")

try:
    import transformers
except ImportError:  # pragma: no cover
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="transformers is not installed")


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: torch's intra-op threads only add contention (and the CI machine is shared).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- fake quant: bit-exact with the real quantizers ----------------------------------------------

# (scheme, QLinear options, quantize_weight arguments, dequantize fmt)
WEIGHT_CASES = [
    ("w8a8", {}, dict(bits=8), "int8"),
    ("fp8", {}, dict(fmt="fp8"), "fp8"),
    ("w4a8", dict(group_size=64), dict(bits=4, group_size=64, scale="int"), "int4"),
    ("w4a8", dict(group_size=32, alpha=4096), dict(bits=4, group_size=32, scale="int", alpha=4096), "int4"),
    ("w4a8", dict(group_size=256), dict(bits=4, group_size=None, scale="int"), "int4"),  # per channel
    ("w4a8-floatscale", dict(group_size=128), dict(bits=4, group_size=128, scale="float"), "int4"),
    ("w4a8-zp", dict(group_size=64), dict(fmt="int4", group_size=64, scale="zp"), "int4"),
    ("w8a8-group", dict(group_size=32, scale="int"), dict(bits=8, group_size=32, scale="int"), "int8"),
    ("w8a8-group", dict(group_size=128, scale="float"), dict(bits=8, group_size=128, scale="float"), "int8"),
    ("w8a8-group", dict(group_size=256, scale="int"), dict(bits=8, group_size=None, scale="int"), "int8"),
    ("w4a8-fp", dict(group_size=64, scale_policy="m2"), dict(fmt="fp4", group_size=64, scale="m2"), "fp4"),
    ("w4a8-fp", dict(group_size=128, scale_policy="m1"), dict(fmt="fp4", group_size=128, scale="m1"), "fp4"),
    ("w4a8-fp", dict(group_size=32, scale_policy="free"), dict(fmt="fp4", group_size=32, scale="free"), "fp4"),
]


def spread_weight(N=48, K=256, dtype=torch.float32, seed=0):
    """Rows and groups of very different magnitudes, a zero row and a zero group, ties to round."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * torch.exp(torch.randn(N, 1, generator=g))
    w = w * torch.exp(0.5 * torch.randn(1, K, generator=g))
    w[3] = 0
    w[5, :64] = 0
    w[7, :8] = torch.tensor([1.0, 0.5, -0.5, 1.5, 2.5, -3.5, 127.0, -127.0])
    return w.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scheme,opts,qargs,fmt", WEIGHT_CASES)
def test_fake_quant_weight_is_dequantize_of_quantize_weight(scheme, opts, qargs, fmt, dtype):
    w = spread_weight(dtype=dtype)
    want = dequantize(*quantize_weight(w, **qargs), fmt=fmt)
    got = fake_quant_weight(w, scheme, **opts)
    assert got.dtype == torch.float32 and got.shape == w.shape
    assert torch.equal(got, want)  # bit for bit


@pytest.mark.parametrize("scheme,opts,qargs,fmt", WEIGHT_CASES)
def test_fake_quant_weight_is_what_qlinear_stores(scheme, opts, qargs, fmt):
    """The QLinear's own buffers (as from_linear quantizes them) dequantize to the fake-quant weight."""
    w = spread_weight(N=64)
    lin = nn.Linear(256, 64, bias=False)
    lin.weight.data.copy_(w)
    q = QLinear.from_linear(lin, scheme, **opts)
    sg = q._buffers.get("weight_group_scale")
    args = (q.weight_q, q.weight_scale) if sg is None else (q.weight_q, q.weight_scale, sg)
    assert torch.equal(dequantize(*args, fmt=fmt), fake_quant_weight(w, scheme, **opts))


def test_fake_quant_gradients_are_identity():
    w = spread_weight().requires_grad_(True)
    g = torch.randn(w.shape)
    for scheme, opts, _, _ in WEIGHT_CASES:
        w.grad = None
        (fake_quant_weight(w, scheme, **opts) * g).sum().backward()
        assert torch.equal(w.grad, g), scheme
    x = torch.randn(3, 5, 64, requires_grad=True)
    for fmt in ("int8", "fp8"):
        x.grad = None
        gx = torch.randn(x.shape)
        (fake_quant_act(x, fmt) * gx).sum().backward()
        assert torch.equal(x.grad, gx)


@pytest.mark.parametrize("fmt,dtype", [("int8", torch.int8), ("fp8", torch.float8_e4m3fn)])
def test_fake_quant_act_is_per_token_quantization(fmt, dtype):
    x = torch.randn(2, 7, 96) * torch.exp(torch.randn(2, 7, 1))
    xq, sx = quantize_per_token(x.reshape(-1, 96), dtype=dtype)
    want = (xq.float() * sx[:, None]).reshape(x.shape)
    assert torch.equal(fake_quant_act(x, fmt), want)


@pytest.mark.parametrize("scheme,opts,qargs,fmt", WEIGHT_CASES)
def test_fake_quant_linear_matches_qlinear(scheme, opts, qargs, fmt):
    """The STE module computes the QLinear's math in float: same output up to the GEMM's rounding."""
    torch.manual_seed(0)
    lin = nn.Linear(256, 64)
    x = torch.randn(5, 256)
    with torch.no_grad():
        want = QLinear.from_linear(lin, scheme, **opts)(x)
    got = FakeQuantLinear(lin.weight, lin.bias, scheme, **opts)(x)
    tol = 1e-2 if scheme in ("fp8", "w4a8-fp") else 1e-5  # fp8 GEMMs write bf16 (then widened)
    assert torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max())), float((got - want).abs().max())


def test_fake_quant_unknown_scheme():
    with pytest.raises(ValueError, match="scheme must be one of .*got 'w2a2'"):
        fake_quant_weight(torch.randn(4, 4), "w2a2")


# --- LKD on tiny HF models ------------------------------------------------------------------------


def llama(intermediate=96):
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=intermediate, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, vocab_size=500,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def gpt2():
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=500, n_positions=64)
    return transformers.GPT2LMHeadModel(cfg).eval()


def bert():
    cfg = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=500,
        attn_implementation="sdpa",
    )
    return transformers.BertModel(cfg).eval()


def token_batches(n, seed, B=4, S=32):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 500, (B, S), generator=g)} for _ in range(n)]


def output_error(model, ref_model, batches):
    with torch.no_grad():
        return sum(float((model(**b)[0] - ref_model(**b)[0]).norm()) for b in batches)


LOG_KEYS = {"layer", "name", "loss_before", "loss_after", "loss_after_training", "train_loss_first",
            "train_loss_last", "reverted", "steps", "seconds"}


@needs_hf
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("make", [llama, gpt2, bert])
def test_lkd_w8a8_moves_blocks_toward_teacher(make, fused):
    torch.manual_seed(0)
    m = make()
    q = copy.deepcopy(m)
    quantize_(q, W8A8Config(fused_blocks=fused))
    calib, held_out = token_batches(4, 1), token_batches(4, 2)
    before = output_error(q, m, held_out)
    log = zqkernels.lkd(m, q, calib, steps=40, lr=1e-6, progress=False)
    assert len(log) == 2 and [r["layer"] for r in log] == [0, 1]
    for r in log:
        assert set(r) == LOG_KEYS
        assert r["seconds"] > 0 and r["steps"] == 40
        assert not r["reverted"]
        assert r["loss_after"] < 0.9 * r["loss_before"], r  # the real quantized block moved toward the teacher
        assert r["train_loss_last"] < r["train_loss_first"], r
    after = output_error(q, m, held_out)  # and the whole model, on batches not used for LKD
    assert after < before, (after, before)
    for p in m.parameters():
        assert not p.requires_grad or p.grad is None  # the teacher is not touched


@needs_hf
def test_lkd_fused_and_per_linear_agree():
    """The fused blocks' merged GEMMs are trained through their parts: the same losses as per-Linear."""
    torch.manual_seed(0)
    m = llama()
    a, b = copy.deepcopy(m), copy.deepcopy(m)
    quantize_(a, W8A8Config(fused_blocks=True))
    quantize_(b, W8A8Config(fused_blocks=False))
    calib = token_batches(2, 1)
    la = zqkernels.lkd(m, a, calib, steps=10, lr=1e-6, progress=False)
    lb = zqkernels.lkd(m, b, calib, steps=10, lr=1e-6, progress=False)
    for ra, rb in zip(la, lb):
        assert ra["train_loss_last"] == pytest.approx(rb["train_loss_last"], rel=1e-3)
        assert ra["loss_after"] == pytest.approx(rb["loss_after"], rel=1e-2)


SCHEME_CONFIGS = [
    ("w8a8", zqkernels.W8A8Config(fused_blocks=False)),
    ("fp8", zqkernels.FP8Config(fused_blocks=False)),
    ("w4a8", zqkernels.W4A8Config(group_size=32, fused_blocks=False)),
    ("w8a8-group", zqkernels.W8A8GroupConfig(group_size=32, fused_blocks=False)),
]


@needs_hf
@pytest.mark.parametrize("scheme,config", SCHEME_CONFIGS, ids=[s for s, _ in SCHEME_CONFIGS])
def test_lkd_schemes_end_on_their_grid(scheme, config, monkeypatch):
    """Every QLinear ends with exactly what the scheme's quantizer makes of the trained float weight."""
    torch.manual_seed(0)
    m = llama(intermediate=128)  # W4A8's packed layout: N % 16, K % 64
    q = copy.deepcopy(m)
    quantize_(q, config)
    rtn = copy.deepcopy(q)
    trained: dict[int, tuple[torch.Tensor, object]] = {}
    real = lkd_mod.requantize_linear

    def spy(qlinear, weight, bias):
        trained[id(qlinear)] = (weight.detach().clone(), None if bias is None else bias.detach().clone())
        real(qlinear, weight, bias)

    monkeypatch.setattr(lkd_mod, "requantize_linear", spy)
    log = zqkernels.lkd(m, q, token_batches(3, 1), steps=30, lr=1e-6, progress=False)
    assert sum(r["loss_after"] for r in log) < sum(r["loss_before"] for r in log)
    qlinears = {n: mod for n, mod in q.named_modules() if isinstance(mod, QLinear) and ".layers." in n}
    assert len(qlinears) == 14 and set(trained) == {id(mod) for mod in qlinears.values()}
    changed = 0
    for name, ql in qlinears.items():
        assert ql.scheme == scheme
        w, b = trained[id(ql)]
        assert w.dtype == torch.float32
        lin = nn.Linear(ql.in_features, ql.out_features, bias=b is not None)
        lin.weight.data.copy_(w)
        ref = QLinear.from_linear(lin, scheme, **fq_mod.scheme_options(ql))
        for key, t in ref.state_dict().items():
            if isinstance(t, torch.Tensor):
                assert torch.equal(ql.state_dict()[key], t), (name, key)
        changed += not torch.equal(ql.weight_q, rtn.get_submodule(name).weight_q)
    assert changed >= len(qlinears) // 2  # the weights did move (on the grid)
    with torch.no_grad():  # and the kernels (reference on CPU) run them
        q(**token_batches(1, 3)[0])


@needs_hf
def test_lkd_bias_is_trained():
    torch.manual_seed(0)
    m = gpt2()  # Conv1D layers with biases
    q = copy.deepcopy(m)
    quantize_(q, W8A8Config(fused_blocks=False))
    b0 = q.transformer.h[0].mlp.c_fc.bias.clone()
    zqkernels.lkd(m, q, token_batches(2, 1), steps=20, lr=1e-5, progress=False, revert_if_worse=False)
    b1 = q.transformer.h[0].mlp.c_fc.bias
    assert b1.dtype == b0.dtype and not torch.equal(b0, b1)


@needs_hf
def test_lkd_one_optimizer_at_a_time():
    torch.manual_seed(0)
    m = llama()
    q = copy.deepcopy(m)
    quantize_(q, W8A8Config())
    refs: list[weakref.ref] = []
    alive_at_start: list[int] = []

    def factory(params, lr):
        alive_at_start.append(sum(r() is not None for r in refs))
        assert all(p.requires_grad for p in params)
        opt = torch.optim.Adam(params, lr=lr)
        refs.append(weakref.ref(opt))
        return opt

    zqkernels.lkd(m, q, token_batches(2, 1), steps=5, lr=1e-6, optimizer=factory, progress=False)
    assert alive_at_start == [0, 0]  # the previous block's optimizer (and its state) is gone
    assert all(r() is None for r in refs)
    assert not any(p.requires_grad and p.grad is not None for p in m.parameters())


@needs_hf
def test_lkd_reverts_a_block_that_got_worse():
    torch.manual_seed(0)
    m = llama()
    q = copy.deepcopy(m)
    quantize_(q, W8A8Config(fused_blocks=False))
    state = copy.deepcopy(q.state_dict())
    log = zqkernels.lkd(m, q, token_batches(2, 1), steps=20, lr=1e-1, progress=False)  # far too large a step
    for r in log:
        assert r["reverted"] and r["loss_after_training"] > r["loss_before"]
        assert r["loss_after"] == r["loss_before"]
    for k, v in q.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, state[k]), k


@needs_hf
def test_lkd_kl_uses_final_norm_and_lm_head():
    torch.manual_seed(0)
    m = llama()
    batch = token_batches(1, 1)[0]
    seen = []
    h = m.model.layers[-1].register_forward_hook(lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        logits = m(**batch).logits
        h.remove()
        head = lkd_mod.lkd_head(m)
        assert torch.allclose(head(seen[0]), logits, atol=1e-5)  # the last block's logit view is the model's
    q = copy.deepcopy(m)
    quantize_(q, W8A8Config())
    held_out = token_batches(4, 2)
    before = output_error(q, m, held_out)
    log = zqkernels.lkd(m, q, token_batches(4, 1), steps=40, lr=1e-6, loss="kl", progress=False)
    for r in log:
        assert r["loss_after"] < 0.9 * r["loss_before"], r
    assert output_error(q, m, held_out) < before


@needs_hf
def test_lkd_kl_needs_lm_head():
    m = bert()
    q = copy.deepcopy(m)
    quantize_(q, W8A8Config())
    with pytest.raises(ValueError, match="lm_head"):
        zqkernels.lkd(m, q, token_batches(1, 1), steps=1, lr=1e-6, loss="kl", progress=False)
    # an explicit head is accepted
    proj = nn.Linear(64, 500)
    log = zqkernels.lkd(m, q, token_batches(1, 1), steps=2, lr=1e-6, loss="kl", head=proj, progress=False)
    assert len(log) == 2


@needs_hf
def test_lkd_tensor_batches_and_explicit_blocks():
    torch.manual_seed(0)
    m = llama()
    q = copy.deepcopy(m)
    quantize_(q, W8A8Config())
    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, 500, (2, 16), generator=g) for _ in range(2)]
    log = zqkernels.lkd(m, q, calib, steps=3, lr=1e-6, blocks="model.layers", progress=False)
    assert [r["name"] for r in log] == ["model.layers.0", "model.layers.1"]
    log = zqkernels.lkd(m, q, calib, steps=3, lr=1e-6, blocks=(m.model.layers[:1], q.model.layers[:1]), progress=False)
    assert len(log) == 1


@needs_hf
def test_lkd_bad_inputs():
    torch.manual_seed(0)
    m = llama(intermediate=128)
    q = copy.deepcopy(m)
    quantize_(q, W8A8Config())
    calib = token_batches(1, 1)
    lkd = zqkernels.lkd
    with pytest.raises(ValueError, match="steps"):
        lkd(m, q, calib, steps=0, lr=1e-6)
    with pytest.raises(ValueError, match="lr"):
        lkd(m, q, calib, steps=1, lr=-1.0)
    with pytest.raises(ValueError, match="loss"):
        lkd(m, q, calib, steps=1, lr=1e-6, loss="l1")
    with pytest.raises(ValueError, match="empty"):
        lkd(m, q, [], steps=1, lr=1e-6, progress=False)
    with pytest.raises(TypeError, match="calib_batches"):
        lkd(m, q, calib[0], steps=1, lr=1e-6)
    with pytest.raises(TypeError, match="calibration batch"):
        lkd(m, q, [3], steps=1, lr=1e-6, progress=False)
    with pytest.raises(ValueError, match="same model"):
        lkd(m, m, calib, steps=1, lr=1e-6)
    with pytest.raises(ValueError, match="no QLinear"):
        lkd(m, copy.deepcopy(m), calib, steps=1, lr=1e-6)
    with pytest.raises(ValueError, match="not a submodule"):
        lkd(m, q, calib, steps=1, lr=1e-6, blocks="model.nope")
    with pytest.raises(ValueError, match="blocks"):
        lkd(m, q, calib, steps=1, lr=1e-6, blocks=(m.model.layers, q.model.layers[:1]))
    # a scheme without a fake-quant path: NotImplementedError naming it
    f = copy.deepcopy(m)
    quantize_(f, zqkernels.FP8Config())
    fp8_cls = type(next(q for q in f.modules() if isinstance(q, zqkernels.QLinear)).qscheme)
    fp8_cls.fake_weight = zqkernels.schemes.Scheme.fake_weight  # the base class's: no fake-quant path
    try:
        with pytest.raises(NotImplementedError, match="'fp8'"):
            lkd(m, f, calib, steps=1, lr=1e-6)
    finally:
        del fp8_cls.fake_weight  # back to its own (inherited) one
    # LoRC factors: LKD first, LoRC after
    lq = copy.deepcopy(m)
    quantize_(lq, W8A8Config(fused_blocks=False))
    zqkernels.lorc(lq, m, rank=2)
    with pytest.raises(ValueError, match="LoRC"):
        lkd(m, lq, calib, steps=1, lr=1e-6)


@needs_hf
@pytest.mark.parametrize("make,config,lr", [(llama, W8A8Config(fused_blocks=False), 1e-6), (gpt2, FP8Config(fused_blocks=False), 1e-5)],
                         ids=["llama-w8a8", "gpt2-fp8"])
def test_lkd_train_norms(make, config, lr):
    """train_norms: the norms are trained with the Linears and land in the quantized block."""
    torch.manual_seed(0)
    m = make()
    with torch.no_grad():  # outlier channels at the norm outputs: what the norm gains can learn to tame
        for mod in m.modules():
            if "Norm" in type(mod).__name__:
                mod.weight[[1, 7]] *= 20
    q = copy.deepcopy(m)
    quantize_(q, config)
    norms_before = {n: p.detach().clone() for n, p in q.named_parameters() if "norm" in n or ".ln_" in n}
    assert norms_before
    held_out = token_batches(4, 2)
    before = output_error(q, m, held_out)
    log = zqkernels.lkd(m, q, token_batches(4, 1), steps=40, lr=lr, train_norms=True, progress=False)
    assert all(r["loss_after"] <= r["loss_before"] for r in log)
    changed = [n for n, p in q.named_parameters() if n in norms_before and not torch.equal(p, norms_before[n])]
    kept = [r["layer"] for r in log if not r["reverted"]]
    assert kept and changed, (log, changed)
    assert output_error(q, m, held_out) < before
    for n, p in m.named_parameters():  # the teacher's norms are untouched
        assert not p.requires_grad or p.grad is None


@needs_hf
def test_lkd_train_norms_reverts_norms_too():
    torch.manual_seed(0)
    m = llama()
    q = copy.deepcopy(m)
    quantize_(q, W8A8Config(fused_blocks=False))
    state = copy.deepcopy(q.state_dict())
    log = zqkernels.lkd(m, q, token_batches(2, 1), steps=20, lr=1e-1, train_norms=True, progress=False)
    assert all(r["reverted"] for r in log)
    for k, v in q.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, state[k]), k


@needs_hf
def test_lkd_train_norms_errors():
    m = llama()
    q = copy.deepcopy(m)
    quantize_(q, W8A8Config())  # fused blocks
    with pytest.raises(ValueError, match="lkd: train_norms=True needs per-Linear blocks, but block 0 of model_quant is the fused"):
        zqkernels.lkd(m, q, token_batches(1, 1), steps=1, train_norms=True, progress=False)
    with pytest.raises(TypeError, match="lkd: train_norms must be a bool, got str"):
        zqkernels.lkd(m, q, token_batches(1, 1), steps=1, train_norms="yes", progress=False)
