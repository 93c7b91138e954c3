"""QLinear schemes "w4a8", "w4a8-floatscale" (INT4 group-wise weights) and "w8a8-group" (INT8
group-wise weights), int8 per-token activations, and their configs (W4A8Config, W8A8GroupConfig) on
CPU: the reference ops, so the module's composition is checked here and the kernels in the GPU
tests (tests/test_group_gpu.py)."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import X_DTYPES, rel_err
from torch import nn
from zqkernels import QLinear, W4A8Config, W8A8GroupConfig, quantize_, quantize_model
from zqkernels.reference import w4a8_gemm_ref, w8a8_group_gemm_ref
from zqkernels.schemes import base as scheme_base

K_IN, N_OUT = 256, 192
CASES = [
    ("w4a8", {}),  # group_size 128, integer scales, alpha by the heuristic
    ("w4a8", {"group_size": 32}),
    ("w4a8", {"group_size": 64, "alpha": 64}),
    ("w4a8", {"group_size": K_IN}),  # per channel
    ("w4a8-floatscale", {}),
    ("w4a8-floatscale", {"group_size": 256}),
    ("w8a8-group", {}),  # group_size 128, integer scales (alpha 512)
    ("w8a8-group", {"group_size": 32, "scale": "float"}),
    ("w8a8-group", {"group_size": 64, "alpha": 128}),
    ("w8a8-group", {"group_size": K_IN}),  # per channel (alpha 1)
]
IDS = [f"{s}-{o}" for s, o in CASES]


def gaussian_linear(in_features=K_IN, out_features=N_OUT, bias=True, dtype=torch.float32):
    lin = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0, in_features**-0.5)
        if bias:
            lin.bias.normal_(0, 0.5)
    return lin.to(dtype)


def float_ref(lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    b = None if lin.bias is None else lin.bias.detach().double()
    return nn.functional.linear(x.double(), lin.weight.detach().double(), b)


def int_scales(scheme: str, options: dict) -> bool:
    return scheme == "w4a8" or (scheme == "w8a8-group" and options.get("scale", "int") == "int")


def quantized_weights(lin: nn.Linear, scheme: str, group_size=128, scale="int", alpha=None):
    w = lin.weight.detach()
    g = None if group_size == w.shape[1] else group_size
    bits = 8 if scheme == "w8a8-group" else 4
    kind = "float" if scheme == "w4a8-floatscale" else scale
    return zqkernels.quantize_weight(w, bits=bits, group_size=g, scale=kind, alpha=alpha)


def composed(lin: nn.Linear, x: torch.Tensor, scheme: str, **options) -> torch.Tensor:
    """The scheme's forward written out from the ops: per-token int8 activations, the weights from
    quantize_weight, the reference GEMM (exact sums, one rounding to x's dtype)."""
    dtype = x.dtype
    xq, sx = zqkernels.quantize_per_token(x.reshape(-1, x.shape[-1]))
    wq, sw, sg = quantized_weights(lin, scheme, **options)
    bias = None if lin.bias is None else lin.bias.detach().to(dtype)
    ref = w8a8_group_gemm_ref if scheme == "w8a8-group" else w4a8_gemm_ref
    return ref(xq, wq, sx, sw, sg, bias, dtype).reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("scheme, options", CASES, ids=IDS)
def test_from_linear_matches_composition_and_bound(scheme, options, bias, dtype):
    lin = gaussian_linear(bias=bias, dtype=dtype)
    q = QLinear.from_linear(lin, scheme, **options)
    x = torch.randn(3, 7, K_IN).to(dtype)  # 3-D [B, T, K]
    with torch.no_grad():
        y = q(x)
    assert y.dtype == dtype and y.shape == (3, 7, N_OUT)
    # Bit for bit the ops' composition (same quantizers, same reference GEMM, same rounding).
    assert torch.equal(y, composed(lin, x, scheme, **options))
    # Error against the float layer (Gaussian weights and activations): INT4 weights (-7..7) are
    # ~10 % off on their own (measured 6-8 % with groups, 12.6 % per channel); INT8 x INT8 ~1 %.
    bound = 0.03 if scheme == "w8a8-group" else 0.15
    err = rel_err(y, float_ref(lin, x))
    assert 0.002 < err < bound, err


@pytest.mark.parametrize("scheme, options", CASES, ids=IDS)
def test_matches_functional_op_and_passes_max_scale(scheme, options, monkeypatch):
    lin = gaussian_linear(dtype=torch.bfloat16)
    q = QLinear.from_linear(lin, scheme, **options)
    sg = q.weight_group_scale
    if int_scales(scheme, options):
        assert sg.dtype == torch.int32 and isinstance(q.max_scale, int) and q.max_scale == int(sg.max())
        alpha = options.get("alpha")
        if alpha is not None:
            assert q.max_scale == alpha
    else:
        assert sg.dtype == torch.float32 and q.max_scale is None
    x = torch.randn(9, K_IN, dtype=torch.bfloat16)
    xq, sx = zqkernels.quantize_per_token(x)
    op = zqkernels.w8a8_group_gemm if scheme == "w8a8-group" else zqkernels.w4a8_gemm
    want = op(xq, q.weight_q, sx, q.weight_scale, sg, q.bias, torch.bfloat16, max_scale=q.max_scale)
    seen = []
    real = scheme_base.quantized_linear  # what the scheme's forward calls (ops/linear.py)

    def spy(spec, x2, wq, sw, sg, bias, max_scale, **kw):
        seen.append(max_scale)
        return real(spec, x2, wq, sw, sg, bias, max_scale, **kw)

    monkeypatch.setattr(scheme_base, "quantized_linear", spy)
    with torch.no_grad():
        assert torch.equal(q(x), want)
    assert seen == [q.max_scale]


@pytest.mark.parametrize("scheme, options", CASES, ids=IDS)
def test_dequantized_weights_reproduce_output(scheme, options):
    # Independent of the GEMM reference: deq(xq) @ deq(w).T + b in float64, within an output ulp.
    lin = gaussian_linear(dtype=torch.bfloat16)
    q = QLinear.from_linear(lin, scheme, **options)
    x = torch.randn(9, K_IN, dtype=torch.bfloat16)
    xq, sx = zqkernels.quantize_per_token(x)
    fmt = "int8" if scheme == "w8a8-group" else "int4"
    wd = zqkernels.dequantize(q.weight_q, q.weight_scale, q.weight_group_scale, fmt=fmt)
    ref = (xq.double() * sx.double()[:, None]) @ wd.double().t() + q.bias.double()
    with torch.no_grad():
        y = q(x)
    torch.testing.assert_close(y.double(), ref, rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize("scheme, options", CASES, ids=IDS)
def test_state_dict_round_trip(scheme, options):
    lin = gaussian_linear(dtype=torch.bfloat16)
    q = QLinear.from_linear(lin, scheme, **options)
    sd = q.state_dict()
    extra = sd["_extra_state"]
    assert extra["scheme"] == scheme and extra["group_size"] == options.get("group_size", 128)
    if int_scales(scheme, options):
        assert extra["max_scale"] == q.max_scale and extra["alpha"] == options.get("alpha")
    # a fresh layer built without alpha (the checkpoint brings alpha and max_scale along)
    kw = {k: v for k, v in options.items() if k != "alpha"}
    fresh = QLinear(K_IN, N_OUT, bias=True, dtype=torch.bfloat16, scheme=scheme, **kw)
    assert fresh.max_scale is None
    fresh.load_state_dict(sd)
    assert fresh.max_scale == q.max_scale and fresh.alpha == q.alpha
    for k, v in q.state_dict().items():
        if isinstance(v, torch.Tensor):
            other = fresh.state_dict()[k]
            assert other.dtype == v.dtype, k
            assert torch.equal(other.view(torch.uint8), v.view(torch.uint8)), k
    x = torch.randn(5, K_IN, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x))
    # another scheme / group size / scale kind is rejected by the recorded identity
    other = "w4a8-floatscale" if scheme == "w4a8" else "w4a8"
    with pytest.raises((ValueError, RuntimeError), match="scheme"):
        QLinear(K_IN, N_OUT, dtype=torch.bfloat16, scheme=other).load_state_dict(sd)
    g = options.get("group_size", 128)
    wrong = 64 if g != 64 else 32
    with pytest.raises((ValueError, RuntimeError), match="group_size"):
        QLinear(K_IN, N_OUT, dtype=torch.bfloat16, scheme=scheme, **{**kw, "group_size": wrong}).load_state_dict(sd)
    if scheme == "w8a8-group":
        flip = "float" if options.get("scale", "int") == "int" else "int"
        with pytest.raises((ValueError, RuntimeError), match="scale"):
            QLinear(K_IN, N_OUT, dtype=torch.bfloat16, scheme=scheme, **{**kw, "scale": flip}).load_state_dict(sd)


def test_bad_loaded_max_scale():
    q = QLinear.from_linear(gaussian_linear(), "w8a8-group")
    sd = q.state_dict()
    for bad in (0, -5, 1.5, "512"):
        sd["_extra_state"] = {**sd["_extra_state"], "max_scale": bad}
        with pytest.raises((ValueError, RuntimeError), match="max_scale must be None or a positive int"):
            QLinear(K_IN, N_OUT, scheme="w8a8-group").load_state_dict(sd)
    qf = QLinear.from_linear(gaussian_linear(), "w8a8-group", scale="float")
    sd = qf.state_dict()
    sd["_extra_state"] = {**sd["_extra_state"], "max_scale": 512}
    with pytest.raises((ValueError, RuntimeError), match="max_scale but this layer has float scales"):
        QLinear(K_IN, N_OUT, scheme="w8a8-group", scale="float").load_state_dict(sd)


@pytest.mark.parametrize("scheme, options", CASES, ids=IDS)
def test_to_dtype_keeps_format(scheme, options):
    q = QLinear.from_linear(gaussian_linear(), scheme, **options)
    before = {k: v.clone() for k, v in q.state_dict().items() if isinstance(v, torch.Tensor)}
    q.to(torch.bfloat16)
    for k, v in q.state_dict().items():
        if k == "bias":
            assert v.dtype == torch.bfloat16
        elif isinstance(v, torch.Tensor):
            assert v.dtype == before[k].dtype, k
            assert torch.equal(v.view(torch.uint8), before[k].view(torch.uint8)), k
    assert q.weight_q.dtype == (torch.int8 if scheme == "w8a8-group" else torch.uint8)


def test_w8a8_group_pads_rows_and_odd_shapes():
    # w8a8-group: any out_features (rows padded to 8, like w8a8; the padding is sliced off).
    lin = gaussian_linear(64, 20, dtype=torch.bfloat16)
    q = QLinear.from_linear(lin, "w8a8-group", group_size=32)
    assert q.weight_q.shape == (24, 64) and q.weight_q.dtype == torch.int8
    assert q.weight_group_scale.shape == (24, 2) and not bool(q.weight_group_scale[20:].any())
    assert "weight rows padded to 24" in repr(q)
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        y = q(x)
    assert y.shape == (2, 3, 20) and y.is_contiguous()
    assert torch.equal(y, composed(lin, x, "w8a8-group", group_size=32))
    q = QLinear.from_linear(gaussian_linear(32, 16), "w8a8-group", group_size=32)  # per channel, K = 32
    assert q.group_size == 32 and q.max_scale == 1


def test_forward_quantized_hand_over():
    for scheme, options in CASES:
        q = QLinear.from_linear(gaussian_linear(dtype=torch.bfloat16), scheme, **options)
        assert q.qscheme.act_dtype == torch.int8 and q.qscheme.act_fmt == "int8"
        x = torch.randn(6, K_IN, dtype=torch.bfloat16)
        xq, sx = zqkernels.quantize_per_token(x)
        with torch.no_grad():
            assert torch.equal(q.forward_quantized(xq, sx, torch.bfloat16), q(x))


def test_compile_fullgraph_cpu():
    for scheme in ("w4a8", "w8a8-group"):
        torch._dynamo.reset()
        q = QLinear.from_linear(gaussian_linear(dtype=torch.bfloat16), scheme)
        x = torch.randn(3, 5, K_IN, dtype=torch.bfloat16)
        with torch.inference_mode():
            compiled = torch.compile(q, backend="aot_eager", fullgraph=True)
            assert torch.equal(compiled(x), q(x))


BAD = [
    (lambda: QLinear(K_IN, N_OUT, scheme="w4a8", scale="float"), r"QLinear: scale applies to scheme 'w8a8-group' only"),
    (lambda: QLinear(K_IN, N_OUT, scheme="w4a8-floatscale", alpha=64), r"QLinear: alpha applies to scheme 'w4a8' / "
     r"'w8a8-group' only, got alpha=64 with scheme 'w4a8-floatscale'"),
    (lambda: QLinear(K_IN, N_OUT, scheme="w8a8", group_size=128), r"QLinear: group_size applies to scheme .*'w8a8'"),
    (lambda: QLinear(K_IN, N_OUT, scheme="w8a8-group", scale="float", alpha=64),
     r"QLinear: alpha applies to integer scales \(scale='int'\) only"),
    (lambda: QLinear(K_IN, N_OUT, scheme="w8a8-group", scale="pow2"), r"scheme 'w8a8-group' needs scale in \('int', 'float'\)"),
    (lambda: QLinear(K_IN, N_OUT, scheme="w8a8-group", alpha=1024), r"QLinear: alpha=1024 exceeds 512, the INT8 bound for "
     r"group_size 128.*\(scheme 'w8a8-group'\)"),
    (lambda: QLinear(K_IN, N_OUT, scheme="w8a8-group", alpha=100), r"QLinear: alpha must be a power of two"),
    (lambda: QLinear(K_IN, N_OUT, scheme="w4a8", alpha=2**16), r"QLinear: alpha must be a power of two int in \[2\^0, 2\^15\]"),
    (lambda: QLinear(K_IN, N_OUT, scheme="w4a8", group_size=16), r"scheme 'w4a8' needs group_size in \(32, 64, 128, 256\) "
     r"or in_features \(256"),
    (lambda: QLinear(K_IN, N_OUT, scheme="w8a8-group", group_size=True), r"needs group_size in"),
    (lambda: QLinear(K_IN, 20, scheme="w4a8"), r"scheme 'w4a8' \(packed INT4 layout m16k32\) needs out_features % 16 == 0 "
     r"and in_features % 64 == 0, got a layer \[out_features, in_features\] = \[20, 256\]"),
    (lambda: QLinear(96, 32, scheme="w4a8-floatscale", group_size=32), r"'w4a8-floatscale'.*\[32, 96\]"),
    (lambda: QLinear(192, 32, scheme="w4a8"), r"group_size to divide in_features.*\[32, 192\]; choose group_size in \[32, 64\]"),
    (lambda: QLinear(40, 32, scheme="w8a8-group", group_size=None), r"'w8a8-group' needs in_features % 16 == 0.*\[32, 40\]"),
    (lambda: QLinear(48, 32, scheme="w8a8-group", group_size=48), r"'w8a8-group' per channel \(group_size == in_features\) "
     r"needs in_features % 32 == 0"),
    (lambda: QLinear(192, 32, scheme="w8a8-group"), r"'w8a8-group' needs group_size to divide in_features.*\[32, 192\]; "
     r"choose group_size in \[32, 64\]"),
]


@pytest.mark.parametrize("fn, match", BAD)
def test_bad_options_and_shapes(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


def test_from_linear_errors_and_repr():
    lin = gaussian_linear(dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="unexpected keyword"):
        QLinear.from_linear(lin, "w8a8-group", group=128)
    with pytest.raises(ValueError, match=r"QLinear.from_linear: scheme 'w4a8'.*\[20, 256\]"):
        QLinear.from_linear(gaussian_linear(K_IN, 20), "w4a8")
    # weight_quantizer applies to every scheme (GPTQ): None from it keeps round-to-nearest
    assert torch.equal(QLinear.from_linear(lin, "w8a8-group", weight_quantizer=lambda _lin: None).weight_q,
                       QLinear.from_linear(lin, "w8a8-group").weight_q)
    q = QLinear.from_linear(lin, "w4a8")
    assert "scheme=w4a8 (int8 per-token activations x int4 group-wise weights, int group scales), " \
           "group_size=128, alpha=default, max_scale=1024" in repr(q)
    q = QLinear.from_linear(lin, "w8a8-group", group_size=K_IN, scale="float")
    assert "group_size=per channel, scale=float" in repr(q) and "max_scale" not in repr(q)


def test_lorc_and_checkpoint_w4a8(tmp_path):
    q = QLinear.from_linear(gaussian_linear(), "w8a8-group")
    info = q.add_lorc(torch.randn(N_OUT, K_IN))  # LoRC covers every scheme now (tests/test_lorc.py)
    assert info["scheme"] == "w8a8-group" and q.lorc_rank == 8
    # w4a8 checkpoints save and load (pack-quantized; tests/test_checkpoint.py covers the layout)
    model = nn.Sequential(QLinear.from_linear(gaussian_linear(), "w4a8"))
    zqkernels.save_quantized(model, tmp_path / "ckpt")
    back = zqkernels.load_quantized(tmp_path / "ckpt", model=nn.Sequential(gaussian_linear()))
    x = torch.randn(3, K_IN)
    assert torch.equal(back(x), model(x))


# --- configs through quantize_ ----------------------------------------------------------------------


def small_model(dtype=torch.float32):
    return nn.Sequential(
        gaussian_linear(128, 256, dtype=dtype), nn.GELU(), gaussian_linear(256, 64, dtype=dtype)
    ).eval()


CONFIGS = [
    (W4A8Config(), "w4a8", {"group_size": 128}),
    (W4A8Config(scale="float", group_size=64), "w4a8-floatscale", {"group_size": 64}),
    (W4A8Config(group_size=32, alpha=256), "w4a8", {"group_size": 32, "alpha": 256}),
    (W8A8GroupConfig(), "w8a8-group", {"group_size": 128, "scale": "int"}),
    (W8A8GroupConfig(group_size=32, scale="float"), "w8a8-group", {"group_size": 32, "scale": "float"}),
    (W8A8GroupConfig(group_size=64, alpha=64), "w8a8-group", {"group_size": 64, "scale": "int", "alpha": 64}),
]


@pytest.mark.parametrize("cfg, scheme, options", CONFIGS)
def test_quantize_sequential(cfg, scheme, options):
    model = small_model()
    x = torch.randn(4, 128)
    with torch.no_grad():
        ref = model(x)
    reference = [QLinear.from_linear(model[i], scheme, **options) for i in (0, 2)]
    s = quantize_(model, cfg)
    assert cfg.scheme == scheme
    assert all(isinstance(model[i], QLinear) and model[i].scheme == scheme for i in (0, 2))
    assert [m for m, _ in s.converted] == ["0", "2"] and not s.skipped
    label = ", ".join([scheme] + [f"{k}={v}" for k, v in options.items()])
    assert all(how == f"QLinear ({label}): from Linear" for _, how in s.converted), s
    for i, r in ((0, reference[0]), (2, reference[1])):
        assert model[i].max_scale == r.max_scale
        for k, v in r.state_dict().items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(model[i].state_dict()[k].view(torch.uint8), v.view(torch.uint8))
    with torch.no_grad():
        y = model(x)
    assert rel_err(y, ref) < (0.03 if scheme == "w8a8-group" else 0.15)


def test_configs_per_channel_and_errors():
    for cfg in (W4A8Config(group_size=None), W8A8GroupConfig(group_size=None)):
        model = small_model()
        quantize_(model, cfg)
        assert model[0].group_size == 128 and model[2].group_size == 256  # in_features: per channel
        assert "per channel" in repr(model[2])
    assert W4A8Config(scale="float").scheme == "w4a8-floatscale" and W4A8Config().scheme == "w4a8"
    for make, match in [
        (lambda: W4A8Config(group_size=48), r"W4A8Config: group_size must be one of \(32, 64, 128, 256\) or None"),
        (lambda: W4A8Config(group_size=0), r"W4A8Config: group_size must be a positive int"),
        (lambda: W4A8Config(scale="pow2"), r"W4A8Config: scale must be 'int', 'float' or 'zp', got 'pow2'"),
        (lambda: W4A8Config(scale="float", alpha=64), r"W4A8Config: alpha applies to scale='int' only"),
        (lambda: W4A8Config(alpha=3), r"W4A8Config: alpha must be a power of two int in \[2\^0, 2\^15\]"),
        (lambda: W8A8GroupConfig(group_size=128, alpha=1024), r"W8A8GroupConfig: alpha=1024 exceeds 512"),
        (lambda: W8A8GroupConfig(group_size=None, alpha=3), r"W8A8GroupConfig: alpha must be a power of two"),
        (lambda: W8A8GroupConfig(scale="m2"), r"W8A8GroupConfig: scale must be 'int' or 'float'"),
    ]:
        with pytest.raises(ValueError, match=match):
            make()
    # per channel with an alpha above a layer's bound: raised at conversion, naming the layer
    model = small_model()
    with pytest.raises(ValueError, match=r"quantize_: layer '2': .*alpha=512 exceeds 256, the INT8 bound for group_size 256"):
        quantize_(model, W8A8GroupConfig(group_size=None, alpha=512))
    assert not any(isinstance(m, QLinear) for m in model.modules())


def test_unsupported_shape_raises_before_any_change():
    model = nn.Sequential(gaussian_linear(128, 64), nn.ReLU(), gaussian_linear(64, 24)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"quantize_: layer '2': .*'w4a8'.*\[24, 64\]"):
        quantize_(model, W4A8Config(group_size=32))
    with pytest.raises(ValueError, match=r"quantize_: layer '2': .*'w8a8-group' needs group_size to divide"):
        quantize_(model, W8A8GroupConfig())  # 128 does not divide 64
    with pytest.raises(ValueError, match=r"quantize_model: layer '2': .*in_features % 64 == 0"):
        quantize_model(model, "w4a8")
    assert not any(isinstance(m, QLinear) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the documented way out: leave that layer in float, or a scheme that takes the shape
    s = quantize_(model, W4A8Config(group_size=64), module_configs={"2": None})
    assert isinstance(model[0], QLinear) and isinstance(model[2], nn.Linear)
    assert dict(s.skipped)["2"] == "module_configs['2'] is None"
    quantize_(model, W8A8GroupConfig(group_size=32))  # w8a8-group takes out_features 24 (rows padded)
    assert model[2].scheme == "w8a8-group" and model[2].weight_q.shape == (24, 64)


def test_quantize_model_schemes():
    for scheme in ("w4a8", "w4a8-floatscale", "w8a8-group"):
        model = small_model(torch.bfloat16)
        quantize_model(model, scheme)
        assert model[0].scheme == scheme
        assert f"QLinear ({scheme}, group_size=128" in zqkernels.conversion_report(model)
        with torch.no_grad():
            assert model(torch.randn(2, 128, dtype=torch.bfloat16)).shape == (2, 64)


def test_weight_quantizer_accepted():
    # weight_quantizer applies to every scheme now (GPTQ, tests/test_gptq.py); None keeps RTN
    model = small_model()
    quantize_(model, W8A8GroupConfig(), weight_quantizer=lambda _lin: None)
    assert isinstance(model[0], QLinear) and model[0].scheme == "w8a8-group"


# --- tiny HF models (the fixtures of test_config.py) ----------------------------------------------


@pytest.mark.parametrize("cfg", [W4A8Config(group_size=64), W4A8Config(group_size=32, scale="float"),
                                 W8A8GroupConfig(group_size=32), W8A8GroupConfig(group_size=64, scale="float")])
def test_hf_models(cfg):
    pytest.importorskip("transformers")
    from test_config import bert, cos, gpt2, kinds, run

    for build in (bert, gpt2):
        m = build()
        ref = run(m)
        s = quantize_(m, cfg)
        # every recognised layer became a fused block of the config's scheme, whose quantized roles
        # are QLinears of the scheme
        blocks = [x for x in m.modules() if isinstance(x, zqkernels.QuantizedBlock)]
        assert blocks and all(b.qscheme == cfg.scheme_object() for b in blocks), kinds(m)
        assert s.converted and all(f"scheme={cfg.scheme}" in how for _, how in s.converted if "fused" in how)
        qs = [x for x in m.modules() if isinstance(x, QLinear)]
        assert qs and all(x.scheme == cfg.scheme for x in qs)
        assert cos(run(m), ref) > (0.999 if cfg.scheme == "w8a8-group" else 0.99)
