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


def test_column_block_does_not_matter():
    X, W = correlated(K=200, N=64)
    H = hessian(X)
    one, s = gptq_quantize_weight(W, H, column_block=200)
    for bs in (1, 7, 32, 128, 1000):
        wq, s2 = gptq_quantize_weight(W, H, column_block=bs)
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
    with pytest.raises(ValueError, match="gptq_quantize_weight: column_block"):
        f(W, H, column_block=0)
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
        gptq(model, [torch.randn(2, 16)], config="w8a8")
    with pytest.raises(ValueError, match="gptq: column_block"):
        gptq(model, [torch.randn(2, 16)], column_block=-1)
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


# ------------------------------------------------------------------------------------------------
# Every weight format of quantize_weight (and every QLinear scheme).

# (id, quantize_weight kwargs, dequantize fmt)
FORMATS = [
    ("int8", {}, "int8"),
    ("int4-channel", {"bits": 4}, "int4"),
    ("fp8", {"fmt": "fp8"}, "fp8"),
    ("fp4-m2-g128", {"fmt": "fp4"}, "fp4"),
    ("fp4-m1-g64", {"fmt": "fp4", "group_size": 64, "scale": "m1"}, "fp4"),
    ("fp4-free-g32", {"fmt": "fp4", "group_size": 32, "scale": "free"}, "fp4"),
    ("fp4-m2-channel", {"fmt": "fp4", "group_size": None, "scale": "m2"}, "fp4"),
    ("int4-int-g128", {"fmt": "int4", "group_size": 128}, "int4"),
    ("int4-int-g32-a4096", {"fmt": "int4", "group_size": 32, "alpha": 4096}, "int4"),
    ("int4-int-g64-a16", {"fmt": "int4", "group_size": 64, "alpha": 16}, "int4"),  # fused-GEMM scales
    ("int4-float-g64", {"fmt": "int4", "group_size": 64, "scale": "float"}, "int4"),
    ("int4-int-channel", {"fmt": "int4", "scale": "int"}, "int4"),
    ("int4-zp-g64", {"fmt": "int4", "group_size": 64, "scale": "zp"}, "int4"),  # zero points
    ("int4-zp-channel", {"fmt": "int4", "scale": "zp"}, "int4"),
    ("int8-int-g128", {"fmt": "int8", "group_size": 128}, "int8"),
    ("int8-int-g32", {"fmt": "int8", "group_size": 32}, "int8"),
    ("int8-float-g64", {"fmt": "int8", "group_size": 64, "scale": "float"}, "int8"),
    ("int8-int-channel", {"fmt": "int8", "scale": "int"}, "int8"),
]
FMT_IDS = [f[0] for f in FORMATS]


def deq(result, fmt):
    return zqkernels.dequantize(*result, fmt=fmt)


def same(a, b):
    """Bit equality of two quantize_weight results (fp8 compared as bytes)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.dtype == torch.float8_e4m3fn:
            x, y = x.view(torch.uint8), y.view(torch.uint8)
        if not torch.equal(x, y):
            return False
    return True


def random_inputs(n=1024, K=256, N=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, K, generator=g), torch.randn(N, K, generator=g) * 0.05


def layer_err(X, W, Wd):
    return float((X @ W.T - X @ Wd.T).norm())


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("data", ["random", "correlated"])
@pytest.mark.parametrize("name,kw,fmt", FORMATS, ids=FMT_IDS)
def test_formats_gptq_beats_rtn(name, kw, fmt, data, act_order):
    X, W = random_inputs() if data == "random" else correlated(n=1024, K=256, N=64)
    H = hessian(X)
    rtn = quantize_weight(W, **kw)
    q = gptq_quantize_weight(W, H, act_order=act_order, **kw)
    # the same format: dtypes and shapes of quantize_weight's result
    assert [(t.dtype, t.shape) for t in q] == [(t.dtype, t.shape) for t in rtn]
    assert all(t.is_contiguous() for t in q)
    er, eg = layer_err(X, W, deq(rtn, fmt)), layer_err(X, W, deq(q, fmt))
    assert eg <= er, (eg, er)
    if data == "correlated":
        assert eg < 0.9 * er, (eg / er)


@pytest.mark.parametrize("name,kw,fmt", FORMATS, ids=FMT_IDS)
def test_formats_identity_hessian_is_rtn(name, kw, fmt):
    _, W = correlated(n=16, K=256, N=32)
    W[3] = 0  # an all-zero row
    W[5, 64:128] = 0  # an all-zero group (of 32 / 64)
    rtn = quantize_weight(W, **kw)
    for ao in (False, True):
        assert same(gptq_quantize_weight(W, torch.eye(256), act_order=ao, **kw), rtn)
    # an all-zero Hessian: every column dead -> RTN as well
    assert same(gptq_quantize_weight(W, torch.zeros(256, 256), **kw), rtn)


@pytest.mark.parametrize("name,kw,fmt", FORMATS, ids=FMT_IDS)
def test_formats_on_grid_and_packed_round_trip(name, kw, fmt):
    from zqkernels.reference.quantize import (
        e2m1_decode,
        expand_groups,
        pack_fp4,
        pack_int4,
        unpack_fp4,
        unpack_int4,
    )

    X, W = correlated(n=1024, K=256, N=64, seed=3)
    q = gptq_quantize_weight(W, hessian(X), act_order=True, **kw)
    N, K = W.shape
    wq, sw = q[0], q[1]
    sg = q[2] if len(q) == 3 else None
    assert torch.isfinite(sw).all() and bool((sw >= 0).all())
    d = deq(q, fmt)
    if fmt == "fp4":
        codes = unpack_fp4(wq, N, K)
        assert torch.equal(pack_fp4(codes), wq)  # the packed layout round trips
        assert int(codes.max()) <= 15
        if sg.dtype == torch.int8:  # m1 / m2: exponents in [-5, 0]
            assert int(sg.min()) >= -5 and int(sg.max()) <= 0
            v = torch.ldexp(e2m1_decode(codes), expand_groups(sg, K).to(torch.int32)) * sw[:, None]
            assert torch.equal(d, v)
        else:  # free: ratios in (0, 1]
            assert bool((sg > 0).all()) and bool((sg <= 1).all())
    elif fmt == "int4" and sg is not None and sg.dtype == torch.int16:  # zero points: s | z << 8
        from zqkernels.reference.zero_point import check_zp_values, zp_int8_values

        codes = unpack_int4(wq, N, K)
        assert torch.equal(pack_int4(codes), wq)
        check_zp_values("test", wq, sg, K)  # s in 1..16, z in 0..15, every value s (u - z) an int8
        assert torch.equal(d, (zp_int8_values(codes, sg).double() * sw.double()[:, None]).float())
    elif fmt == "int4" and sg is not None:
        codes = unpack_int4(wq, N, K)
        assert torch.equal(pack_int4(codes), wq)
        assert int(codes.abs().max()) <= 7
        v = (codes.double() * expand_groups(sg.double(), K) * sw.double()[:, None]).float()
        assert torch.equal(d, v)
    elif sg is not None:  # int8 group
        assert wq.dtype == torch.int8 and int(wq.abs().max()) <= 127
        v = (wq.double() * expand_groups(sg.double(), K) * sw.double()[:, None]).float()
        assert torch.equal(d, v)
    elif fmt == "fp8":
        assert wq.dtype == torch.float8_e4m3fn and float(wq.float().abs().max()) <= 448
        assert torch.equal(d, wq.float() * sw[:, None])
    else:
        qmax = 7 if fmt == "int4" else 127
        assert wq.dtype == torch.int8 and int(wq.abs().max()) <= qmax
        assert torch.equal(d, wq.float() * sw[:, None])
    if sg is not None and sg.dtype == torch.int32:
        # integer scales: max(rint(r * alpha), 1) <= alpha, zero only for all-zero groups
        assert int(sg.min()) >= 1
        rtn_sg = quantize_weight(W, **kw)[2]
        assert int(sg.max()) <= int(rtn_sg.max()) * 2  # the same alpha (the row's largest group <= alpha)
    # per-channel formats keep RTN's scales; group formats keep RTN's row scale sw (zero points: its
    # level-1 scale times the row's gcd of integer scales, zp_canonical)
    if sg is not None and sg.dtype == torch.int16:
        from zqkernels.reference.zero_point import zp_channel_scale

        ratio = sw.double() / zp_channel_scale(W).double()
        assert torch.equal(ratio, torch.round(ratio)) and bool(((ratio >= 1) & (ratio <= 16)).all())
    else:
        assert torch.equal(sw, quantize_weight(W, **kw)[1])
    # the weights it stands for stay near W (GPTQ trades weight error for output error: on these
    # correlated inputs its weight error is up to ~3x RTN's on the fine int8 grid, ~1.1x on 4-bit)
    rel = float((d - W).norm() / W.norm())
    rel_rtn = float((deq(quantize_weight(W, **kw), fmt) - W).norm() / W.norm())
    assert rel < 5 * rel_rtn, (rel, rel_rtn)


@pytest.mark.parametrize("name,kw,fmt", [f for f in FORMATS if f[0] in ("int4-int-g128", "fp4-m1-g64", "int8-float-g64")],
                         ids=["int4-int-g128", "fp4-m1-g64", "int8-float-g64"])
def test_formats_column_block_does_not_matter(name, kw, fmt):
    X, W = correlated(n=1024, K=256, N=32, seed=2)
    H = hessian(X)
    for ao in (False, True):
        one = gptq_quantize_weight(W, H, column_block=256, act_order=ao, **kw)
        e1 = layer_err(X, W, deq(one, fmt))
        for bs in (1, 48, 128):
            other = gptq_quantize_weight(W, H, column_block=bs, act_order=ao, **kw)
            assert torch.equal(other[1], one[1])
            assert abs(layer_err(X, W, deq(other, fmt)) / e1 - 1) < 0.02


def test_formats_bad_arguments():
    W, H = torch.randn(16, 64), torch.eye(64)
    f = gptq_quantize_weight
    with pytest.raises(ValueError, match="gptq_quantize_weight: fmt"):
        f(W, H, fmt="int3")
    with pytest.raises(ValueError, match="gptq_quantize_weight: group_size"):
        f(W, H, fmt="fp4", group_size=48)
    with pytest.raises(ValueError, match="gptq_quantize_weight: .*N % 16"):
        f(torch.randn(8, 64), H, fmt="int4", group_size=32)
    with pytest.raises(ValueError, match="gptq_quantize_weight: scale"):
        f(W, H, fmt="int8", group_size=32, scale="pow2")
    with pytest.raises(ValueError, match="gptq_quantize_weight: alpha"):
        f(W, H, fmt="int8", group_size=32, alpha=3)
    with pytest.raises(ValueError, match="gptq_quantize_weight: .*fp8"):
        f(W, H, fmt="fp8", group_size=32)
    with pytest.raises(ValueError, match="gptq_quantize_weight: bits"):
        f(W, H, bits=4, fmt="int8")


SCHEMES = [
    ("w8a8", {}),
    ("fp8", {}),
    ("w4a8-fp", {}),
    ("w4a8-fp", {"group_size": 64, "scale_policy": "free"}),
    ("w4a8", {}),
    ("w4a8", {"group_size": 128, "alpha": 2048}),
    ("w4a8-floatscale", {"group_size": 32}),
    ("w4a8-zp", {"group_size": 64}),
    ("w8a8-group", {}),
    ("w8a8-group", {"group_size": 64, "scale": "float"}),
]


@pytest.mark.parametrize("scheme,opts", SCHEMES, ids=[f"{s}-{i}" for i, (s, _) in enumerate(SCHEMES)])
def test_from_linear_weight_quantizer_every_scheme(scheme, opts):
    from zqkernels.nn.lorc import _deq_weight

    X, W = correlated(n=1024, K=256, N=48)
    H = hessian(X)
    lin = nn.Linear(256, 48)
    with torch.no_grad():
        lin.weight.copy_(W)
    seen = {}

    def quantizer(linear, weight_format):
        seen.update(weight_format)
        return gptq_quantize_weight(linear.weight, H, **weight_format)

    q = QLinear.from_linear(lin, scheme, weight_quantizer=quantizer, **opts)
    rtn = QLinear.from_linear(lin, scheme, **opts)
    ref = gptq_quantize_weight(W, H, **seen)
    n = 48
    bufs = [q.weight_q, q.weight_scale] + ([q.weight_group_scale] if len(ref) == 3 else [])
    for b, r in zip(bufs, ref):
        b = b if b.shape[0] == n or b.dtype == torch.uint8 else b[:n]
        assert same((b,), (r,))
    fmt = {"w8a8": "int8", "fp8": "fp8", "w4a8-fp": "fp4", "w8a8-group": "int8"}.get(scheme, "int4")
    assert torch.equal(_deq_weight(q), deq(ref, fmt))
    if scheme in ("w4a8", "w8a8-group") and opts.get("scale", "int") == "int":
        assert q.max_scale == max(int(ref[2].max()), 1)
    # a one-argument quantizer is called without the format (it must know it)
    q1 = QLinear.from_linear(lin, scheme, weight_quantizer=lambda linear: ref, **opts)
    assert same(tuple(q1.state_dict()[k] for k in ("weight_q",)), (q.weight_q,))
    with torch.no_grad():
        y = lin(X)
        eg, er = float((q(X) - y).norm()), float((rtn(X) - y).norm())
    assert eg < er, (eg, er)
    # a wrong format is refused, naming what was expected
    with pytest.raises(TypeError, match="weight_quantizer must return"):
        QLinear.from_linear(lin, scheme, weight_quantizer=lambda linear: quantize_weight(W, fmt="fp8")
                            if scheme != "fp8" else quantize_weight(W), **opts)


def test_scheme_without_weight_format_raises(monkeypatch):
    from zqkernels.schemes import SCHEMES

    # a scheme that quantizes its own way (quantize) but names no quantize_weight format
    monkeypatch.setattr(SCHEMES["fp8"], "weight_format", lambda self: None)
    monkeypatch.setattr(SCHEMES["fp8"], "quantize", lambda self, w: quantize_weight(w, fmt="fp8"))
    with pytest.raises(NotImplementedError, match="does not take a weight_quantizer"):
        QLinear.from_linear(nn.Linear(64, 16), "fp8", weight_quantizer=lambda linear: None)
    QLinear.from_linear(nn.Linear(64, 16), "fp8")  # RTN still works


@pytest.mark.parametrize("config", ["FP8Config", "W4A8FPConfig", "W4A8Config", "W8A8GroupConfig"])
def test_gptq_model_every_config(config):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 64)).eval()
    X, _ = correlated(n=512, K=128, N=1)
    calib = list(X.split(128))
    cfg = getattr(zqkernels, config)()
    with torch.no_grad():
        ref = model(X)
    a = copy.deepcopy(model)
    quantize_(a, cfg)
    b = copy.deepcopy(model)
    summary = gptq(b, calib, config=cfg)
    assert len(summary.converted) == 2 and isinstance(b[0], QLinear) and b[0].scheme == a[0].scheme
    with torch.no_grad():
        ea, eb = float((a(X) - ref).norm()), float((b(X) - ref).norm())
    assert eb < ea, (eb, ea)
