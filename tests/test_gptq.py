"""GPTQ weight quantization (zqkernels.algorithms.gptq), CPU."""

from __future__ import annotations

import copy

import pytest
import torch
import zqkernels
from torch import nn
from zqkernels import QLinear, W8A8Config, gptq, gptq_quantize_weight, quantize_, quantize_weight


def correlated(n=2048, K=256, N=192, seed=0):
    """Inputs with correlated channels of very different magnitudes, and a random weight."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, K, generator=g) / K**0.5
    X = torch.randn(n, K, generator=g) @ A + 0.3 * torch.randn(n, K, generator=g)
    X = X * torch.exp(torch.randn(K, generator=g))
    W = torch.randn(N, K, generator=g) * 0.05
    return X, W


def hessian(X):
    return 2 * X.T @ X / X.shape[0]


def out_err(X, W, wq, s):
    return float((X @ W.T - X @ (wq.float() * s[:, None]).T).norm())


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits,at_most", [(8, 0.85), (4, 0.85)])
def test_gptq_beats_rtn(bits, at_most, act_order):
    X, W = correlated()
    wq, s = gptq_quantize_weight(W, hessian(X), bits=bits, act_order=act_order)
    rq, rs = quantize_weight(W, bits=bits)
    assert wq.dtype == torch.int8 and s.dtype == torch.float32
    assert wq.shape == W.shape and s.shape == (W.shape[0],)
    qmax = 2 ** (bits - 1) - 1
    assert int(wq.abs().max()) <= qmax
    assert torch.equal(s, rs)  # the RTN grid
    ratio = out_err(X, W, wq, s) / out_err(X, W, rq, rs)
    assert ratio < at_most, ratio
    if act_order:
        plain = gptq_quantize_weight(W, hessian(X), bits=bits)
        assert out_err(X, W, wq, s) < out_err(X, W, *plain)


def test_identity_hessian_is_rtn():
    _, W = correlated(n=16)
    for bits in (8, 4):
        for ao in (False, True):
            wq, s = gptq_quantize_weight(W, torch.eye(W.shape[1]), bits=bits, act_order=ao)
            rq, rs = quantize_weight(W, bits=bits)
            assert torch.equal(wq, rq) and torch.equal(s, rs)


def test_block_size_does_not_matter():
    X, W = correlated(K=200, N=64)
    H = hessian(X)
    one, s = gptq_quantize_weight(W, H, block_size=200)
    for bs in (1, 7, 32, 128, 1000):
        wq, s2 = gptq_quantize_weight(W, H, block_size=bs)
        assert torch.equal(s, s2)
        # the same algorithm; float rounding of the update order flips a rare value by one step
        assert (wq.int() - one.int()).abs().max() <= 1
        assert (wq != one).float().mean() < 1e-3
        assert abs(out_err(X, W, wq, s) / out_err(X, W, one, s) - 1) < 0.01


def test_dead_columns():
    X, W = correlated(K=64, N=32)
    dead = torch.tensor([0, 5, 17, 63])
    X[:, dead] = 0
    H = hessian(X)
    assert bool((torch.diagonal(H)[dead] == 0).all())
    for ao in (False, True):
        wq, s = gptq_quantize_weight(W, H, act_order=ao)
        rq, rs = quantize_weight(W)
        # dead columns are rounded to nearest (their value never matters on the calibration data)
        assert torch.equal(wq[:, dead], rq[:, dead])
        assert out_err(X, W, wq, s) < out_err(X, W, rq, rs)
    # an all-zero Hessian: everything dead -> exactly RTN
    wq, s = gptq_quantize_weight(W, torch.zeros(64, 64))
    assert torch.equal(wq, quantize_weight(W)[0])


def test_rank_deficient_and_edge_shapes():
    X, W = correlated(n=8, K=64, N=16)  # n < K: singular H; dampening makes it definite
    wq, s = gptq_quantize_weight(W, hessian(X), damp=0.0)  # damp 0 is raised automatically
    assert torch.isfinite(s).all()
    wq, s = gptq_quantize_weight(torch.zeros(3, 8), torch.eye(8))
    assert int(wq.abs().max()) == 0 and int(s.abs().max()) == 0
    wq, s = gptq_quantize_weight(torch.zeros(0, 8), torch.eye(8))
    assert wq.shape == (0, 8) and s.shape == (0,)
    wq, s = gptq_quantize_weight(W.double(), hessian(X).half().float())
    assert wq.shape == W.shape


def test_bad_inputs():
    W, H = torch.randn(4, 8), torch.eye(8)
    f = gptq_quantize_weight
    with pytest.raises(TypeError, match="gptq_quantize_weight: w"):
        f([[1.0]], H)
    with pytest.raises(ValueError, match="gptq_quantize_weight: w"):
        f(torch.randn(8), H)
    with pytest.raises(ValueError, match="gptq_quantize_weight: w"):
        f(torch.ones(4, 8, dtype=torch.int32), H)
    with pytest.raises(TypeError, match="gptq_quantize_weight: H"):
        f(W, None)
    with pytest.raises(ValueError, match="gptq_quantize_weight: H"):
        f(W, torch.eye(7))
    with pytest.raises(ValueError, match="gptq_quantize_weight: bits"):
        f(W, H, bits=9)
    with pytest.raises(ValueError, match="gptq_quantize_weight: block_size"):
        f(W, H, block_size=0)
    with pytest.raises(ValueError, match="gptq_quantize_weight: damp"):
        f(W, H, damp=-1.0)
    with pytest.raises(TypeError, match="gptq_quantize_weight: act_order"):
        f(W, H, act_order=1)
    with pytest.raises(ValueError, match="gptq_quantize_weight: w has NaN"):
        f(torch.full((4, 8), float("nan")), H)
    with pytest.raises(ValueError, match="gptq_quantize_weight: H has NaN"):
        f(W, torch.full((8, 8), float("nan")))
    with pytest.raises(ValueError, match="gptq_quantize_weight: H has negative"):
        f(W, -H)
    model = nn.Sequential(nn.Linear(16, 16))
    with pytest.raises(TypeError, match="gptq: model"):
        gptq(W, [W])
    with pytest.raises(TypeError, match="gptq: calib_batches"):
        gptq(model, torch.randn(2, 16))
    with pytest.raises(ValueError, match="gptq: calib_batches is empty"):
        gptq(model, [])
    with pytest.raises(TypeError, match="gptq: each calibration batch"):
        gptq(model, [3])
    with pytest.raises(TypeError, match="gptq: config"):
        gptq(model, [torch.randn(2, 16)], config=zqkernels.FP8Config())
    with pytest.raises(ValueError, match="gptq: block_size"):
        gptq(model, [torch.randn(2, 16)], block_size=-1)
    with pytest.raises(TypeError, match="quantize_: weight_quantizer"):
        quantize_(model, W8A8Config(), weight_quantizer=3)
    with pytest.raises(TypeError, match="QLinear.from_linear: weight_quantizer must return"):
        QLinear.from_linear(nn.Linear(16, 8), weight_quantizer=lambda lin: (torch.zeros(8, 16), torch.zeros(8)))
    assert isinstance(model[0], nn.Linear)  # nothing changed


def test_from_linear_weight_quantizer():
    lin = nn.Linear(32, 12)  # 12 rows: padded to 16
    rtn = QLinear.from_linear(lin)
    same = QLinear.from_linear(lin, weight_quantizer=lambda _lin: None)  # None: RTN
    for k, v in rtn.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, same.state_dict()[k]), k
    H = torch.eye(32) + 0.5
    q = gptq_quantize_weight(lin.weight, H)
    g = QLinear.from_linear(lin, weight_quantizer=lambda _lin: q)
    assert torch.equal(g.weight_q[:12], q[0]) and torch.equal(g.weight_scale[:12], q[1])
    assert int(g.weight_q[12:].abs().max()) == 0


def test_gptq_sequential_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32)).eval()
    X, _ = correlated(n=512, K=64, N=1)
    calib = list(X.split(128))
    with torch.no_grad():
        ref = model(X)
    a = copy.deepcopy(model)
    quantize_(a, W8A8Config())
    b = copy.deepcopy(model)
    summary = gptq(b, calib)
    assert len(summary.converted) == 2 and isinstance(b[0], QLinear)
    with torch.no_grad():
        ea, eb = float((a(X) - ref).norm()), float((b(X) - ref).norm())
    assert eb < ea


try:
    import transformers
except ImportError:  # pragma: no cover
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="transformers is not installed")


def bert():
    cfg = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        vocab_size=500, attn_implementation="sdpa",
    )
    return transformers.BertModel(cfg).eval()


def llama():
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, vocab_size=500,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@needs_hf
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("make", [bert, llama])
def test_gptq_hf_models(make, fused):
    torch.manual_seed(0)
    m = make()
    g = torch.Generator().manual_seed(1)
    calib = [{"input_ids": torch.randint(0, 500, (4, 32), generator=g)} for _ in range(4)]
    with torch.no_grad():
        ref = [m(**b)[0] for b in calib]
    cfg = W8A8Config(fused_blocks=fused)
    a = copy.deepcopy(m)
    sa = quantize_(a, cfg)
    b = copy.deepcopy(m)
    sb = gptq(b, calib, config=cfg)
    assert [n for n, _ in sa.converted] == [n for n, _ in sb.converted]  # the same conversion
    assert sa.skipped == sb.skipped
    with torch.no_grad():
        ea = sum(float((a(**x)[0] - r).norm()) for x, r in zip(calib, ref))
        eb = sum(float((b(**x)[0] - r).norm()) for x, r in zip(calib, ref))
    assert eb < 0.95 * ea, (eb, ea)


@needs_hf
def test_fused_parts_use_their_own_gptq():
    """In a fused block, the merged QKV weight is the concatenation of the per-Linear GPTQ results."""
    torch.manual_seed(0)
    m = llama()
    calib = [{"input_ids": torch.randint(0, 500, (2, 16))} for _ in range(2)]
    a = copy.deepcopy(m)
    gptq(a, calib, config=W8A8Config(fused_blocks=False))
    b = copy.deepcopy(m)
    gptq(b, calib)
    blk = b.model.layers[0]
    ref = a.model.layers[0].self_attn
    qkv = torch.cat([ref.q_proj.weight_q, ref.k_proj.weight_q, ref.v_proj.weight_q])
    assert torch.equal(blk.qkv.weight_q[: qkv.shape[0]], qkv)
    # and it is not the RTN result
    c = copy.deepcopy(m)
    quantize_(c, W8A8Config())
    assert not torch.equal(c.model.layers[0].qkv.weight_q, blk.qkv.weight_q)


@needs_hf
def test_default_path_unchanged():
    """quantize_ without a weight_quantizer (and gptq with a quantizer returning None) is RTN."""
    torch.manual_seed(0)
    m = llama()
    a = copy.deepcopy(m)
    quantize_(a, W8A8Config())
    b = copy.deepcopy(m)
    quantize_(b, W8A8Config(), weight_quantizer=lambda _lin: None)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.equal(sa[k], sb[k]), k
