"""QLinear schemes "fp8" and "w4a8-fp" and their configs (FP8Config, W4A8FPConfig) on CPU: the
reference ops, so the module's composition is checked here and the kernels in the GPU tests."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import X_DTYPES, rel_err
from torch import nn
from zqkernels import FP8Config, QLinear, W4A8FPConfig, quantize_, quantize_model
from zqkernels.reference import fp8_gemm_ref, w4a8_fp_gemm_ref

F8 = torch.float8_e4m3fn
W4A8FP_OPTIONS = [
    {},  # group_size 128, m2
    {"group_size": 32, "scale_policy": "m1"},
    {"group_size": 64, "scale_policy": "free"},
    {"group_size": 256},  # in_features: per channel
]


def gaussian_linear(in_features=256, out_features=192, bias=True, dtype=torch.float32):
    lin = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0, in_features**-0.5)
        if bias:
            lin.bias.normal_(0, 0.5)
    return lin.to(dtype)


def float_ref(lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    b = None if lin.bias is None else lin.bias.detach().double()
    return nn.functional.linear(x.double(), lin.weight.detach().double(), b)


def composed(lin: nn.Linear, x: torch.Tensor, scheme: str, group_size=128, scale_policy="m2") -> torch.Tensor:
    """The scheme's forward written out from the ops: per-token FP8 activations, the weights
    quantized by quantize_weight, the reference GEMM (float64, one rounding to x's dtype)."""
    dtype = x.dtype
    x2 = x.reshape(-1, x.shape[-1])
    xq, sx = zqkernels.quantize_per_token(x2, dtype=F8)
    w = lin.weight.detach()
    bias = None if lin.bias is None else lin.bias.detach()
    if scheme == "fp8":
        wq, sw = zqkernels.quantize_weight(w, fmt="fp8")
        if dtype == torch.float32:  # fp8_gemm writes bf16 / fp16: bf16 widened, fp32 bias
            y = fp8_gemm_ref(xq, wq, sx, sw, None, torch.bfloat16).float()
            y = y if bias is None else y + bias.float()
        else:
            y = fp8_gemm_ref(xq, wq, sx, sw, None if bias is None else bias.to(dtype), dtype)
    else:
        K = w.shape[1]
        g = None if group_size == K else group_size
        wq, sw, sg = zqkernels.quantize_weight(w, fmt="fp4", group_size=g, scale=scale_policy)
        y = w4a8_fp_gemm_ref(xq, wq, sw, sg, sx, group_size, None if bias is None else bias.to(dtype), dtype)
    return y.reshape(*x.shape[:-1], -1)


def cases():
    yield "fp8", {}
    for o in W4A8FP_OPTIONS:
        yield "w4a8-fp", o


CASES = list(cases())
IDS = [f"{s}-{o}" for s, o in CASES]


@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("scheme, options", CASES, ids=IDS)
def test_from_linear_matches_composition_and_bound(scheme, options, bias, dtype):
    lin = gaussian_linear(bias=bias, dtype=dtype)
    q = QLinear.from_linear(lin, scheme, **options)
    x = torch.randn(3, 7, 256).to(dtype)  # 3-D [B, T, K]
    with torch.no_grad():
        y = q(x)
    assert y.dtype == dtype and y.shape == (3, 7, 192)
    # Bit for bit the ops' composition (same quantizers, same reference GEMM, same rounding).
    assert torch.equal(y, composed(lin, x, scheme, **options))
    # Error against the float layer (Gaussian weights and activations, output rms ~1.3):
    # E4M3 rounds each operand with a relative step of 2^-3, i.e. ~2^-4 / sqrt(3) ~ 2.3 % rms per
    # operand: ~3.5 % for the product. FP4 weights (E2M1, 1 mantissa bit) are ~10 % off on their own.
    bound = 0.05 if scheme == "fp8" else 0.15
    err = rel_err(y, float_ref(lin, x))
    assert err < bound, err
    assert err > 0.005  # quantization happened


@pytest.mark.parametrize("scheme, options", CASES, ids=IDS)
def test_dequantized_weights_reproduce_output(scheme, options):
    # Independent of the GEMM reference: deq(xq) @ deq(w).T + b in float64, within an output ulp.
    lin = gaussian_linear(dtype=torch.bfloat16)
    q = QLinear.from_linear(lin, scheme, **options)
    x = torch.randn(9, 256, dtype=torch.bfloat16)
    xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
    if scheme == "fp8":
        wd = zqkernels.dequantize(q.weight_q, q.weight_scale, fmt="fp8")
    else:
        wd = zqkernels.dequantize(q.weight_q, q.weight_scale, q.weight_group_scale, fmt="fp4")
    ref = (xq.double() * sx.double()[:, None]) @ wd.double().t() + q.bias.double()
    with torch.no_grad():
        y = q(x)
    torch.testing.assert_close(y.double(), ref[:, :192], rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize("scheme, options", CASES, ids=IDS)
def test_state_dict_round_trip(scheme, options):
    lin = gaussian_linear(dtype=torch.bfloat16)
    q = QLinear.from_linear(lin, scheme, **options)
    sd = q.state_dict()
    fresh = QLinear(256, 192, bias=True, dtype=torch.bfloat16, scheme=scheme, **options)
    fresh.load_state_dict(sd)
    for k, v in q.state_dict().items():
        if isinstance(v, torch.Tensor):
            other = fresh.state_dict()[k]
            assert other.dtype == v.dtype, k
            assert torch.equal(other.view(torch.uint8), v.view(torch.uint8)), k
    x = torch.randn(5, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x))
    # another scheme / option is rejected by the recorded identity
    other = "w4a8-fp" if scheme == "fp8" else "fp8"
    with pytest.raises((ValueError, RuntimeError), match="scheme"):
        QLinear(256, 192, dtype=torch.bfloat16, scheme=other).load_state_dict(sd)
    if scheme == "w4a8-fp":
        g = options.get("group_size", 128)
        with pytest.raises((ValueError, RuntimeError), match="group_size"):
            wrong = 64 if g != 64 else 32
            QLinear(256, 192, dtype=torch.bfloat16, scheme=scheme, group_size=wrong,
                    scale_policy=options.get("scale_policy")).load_state_dict(sd)


@pytest.mark.parametrize("scheme, options", CASES, ids=IDS)
def test_to_dtype_keeps_format(scheme, options):
    # Module.to(dtype) casts floating-point buffers: the fp8 weights and float32 scales keep theirs.
    q = QLinear.from_linear(gaussian_linear(), scheme, **options)
    before = {k: v.clone() for k, v in q.state_dict().items() if isinstance(v, torch.Tensor)}
    q.to(torch.bfloat16)
    for k, v in q.state_dict().items():
        if k == "bias":
            assert v.dtype == torch.bfloat16
        elif isinstance(v, torch.Tensor):
            assert v.dtype == before[k].dtype, k
            assert torch.equal(v.view(torch.uint8), before[k].view(torch.uint8)), k
    assert q.weight_q.dtype == (F8 if scheme == "fp8" else torch.uint8)


def test_fp8_pads_rows_and_odd_shapes():
    # fp8: any out_features (rows padded to 8, like w8a8); the padding is sliced off.
    lin = gaussian_linear(48, 20, dtype=torch.bfloat16)
    q = QLinear.from_linear(lin, "fp8")
    assert q.weight_q.shape == (24, 48) and q.weight_q.dtype == F8
    x = torch.randn(2, 3, 48, dtype=torch.bfloat16)
    with torch.no_grad():
        y = q(x)
    assert y.shape == (2, 3, 20) and y.is_contiguous()
    assert torch.equal(y, composed(lin, x, "fp8"))


def test_forward_quantized_hand_over():
    for scheme, options in CASES:
        q = QLinear.from_linear(gaussian_linear(dtype=torch.bfloat16), scheme, **options)
        assert q.qscheme.act_dtype == torch.float8_e4m3fn and q.qscheme.act_fmt == "fp8"
        x = torch.randn(6, 256, dtype=torch.bfloat16)
        xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
        with torch.no_grad():
            assert torch.equal(q.forward_quantized(xq, sx, torch.bfloat16), q(x))


def test_bad_options_and_shapes():
    lin = gaussian_linear(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"QLinear: group_size applies to scheme .*'w4a8-fp'.* only.*'fp8'"):
        QLinear(256, 192, scheme="fp8", group_size=128)
    with pytest.raises(ValueError, match=r"scale_policy applies to scheme 'w4a8-fp' only.*'w8a8'"):
        QLinear.from_linear(lin, scale_policy="m2")
    with pytest.raises(ValueError, match=r"group_size in \(32, 64, 128\) or in_features \(256"):
        QLinear.from_linear(lin, "w4a8-fp", group_size=16)
    with pytest.raises(ValueError, match=r"group_size in"):
        QLinear.from_linear(lin, "w4a8-fp", group_size=True)
    with pytest.raises(ValueError, match=r"scale_policy in \('m2', 'm1', 'free'\), got 'm3'"):
        QLinear.from_linear(lin, "w4a8-fp", scale_policy="m3")
    with pytest.raises(TypeError, match="unexpected keyword"):
        QLinear.from_linear(lin, "w4a8-fp", group=128)
    with pytest.raises(ValueError, match=r"from_linear: scheme 'w4a8-fp'.*out_features % 16 == 0 and "
                       r"in_features % 64 == 0, got a layer \[out_features, in_features\] = \[20, 256\]"):
        QLinear.from_linear(gaussian_linear(256, 20), "w4a8-fp")
    with pytest.raises(ValueError, match=r"\[32, 96\]"):
        QLinear(96, 32, scheme="w4a8-fp", group_size=32)
    with pytest.raises(ValueError, match=r"group_size to divide in_features.*\[32, 192\]; choose group_size in \[32, 64\]"):
        QLinear(192, 32, scheme="w4a8-fp")  # 192 % 128 != 0
    # weight_quantizer applies to every scheme (GPTQ): None from it keeps round-to-nearest
    assert torch.equal(QLinear.from_linear(lin, "fp8", weight_quantizer=lambda _lin: None).weight_q.view(torch.uint8),
                       QLinear.from_linear(lin, "fp8").weight_q.view(torch.uint8))
    with pytest.raises(ValueError, match="scheme must be one of"):
        QLinear(256, 192, scheme="fp4")
    q = QLinear.from_linear(lin, "w4a8-fp", scale_policy="M1")  # case-insensitive, stored lower-case
    assert q.scale_policy == "m1" and q.weight_group_scale.dtype == torch.int8
    assert "group_size=128, scale_policy=m1" in repr(q)


def test_lorc_and_checkpoint_are_w8a8_only(tmp_path):
    q = QLinear.from_linear(gaussian_linear(), "fp8")
    info = q.add_lorc(torch.randn(192, 256))  # LoRC covers every scheme now (tests/test_lorc.py)
    assert info["scheme"] == "fp8" and q.lorc_rank == 8
    model = nn.Sequential(QLinear.from_linear(gaussian_linear(), "w4a8-fp"))
    with pytest.raises(NotImplementedError, match="'w4a8-fp'"):
        zqkernels.save_quantized(model, tmp_path / "ckpt")


def small_model(dtype=torch.float32):
    return nn.Sequential(
        gaussian_linear(128, 256, dtype=dtype), nn.GELU(), gaussian_linear(256, 64, dtype=dtype)
    ).eval()


@pytest.mark.parametrize(
    "cfg, scheme, options",
    [
        (FP8Config(), "fp8", {}),
        (W4A8FPConfig(), "w4a8-fp", {"group_size": 128, "scale_policy": "m2"}),
        (W4A8FPConfig(group_size=64, scale_policy="free"), "w4a8-fp", {"group_size": 64, "scale_policy": "free"}),
    ],
)
def test_quantize_sequential(cfg, scheme, options):
    model = small_model()
    x = torch.randn(4, 128)
    with torch.no_grad():
        ref = model(x)
    reference = [QLinear.from_linear(model[i], scheme, **options) for i in (0, 2)]
    s = quantize_(model, cfg)
    assert all(isinstance(model[i], QLinear) and model[i].scheme == scheme for i in (0, 2))
    assert [m for m, _ in s.converted] == ["0", "2"] and not s.skipped
    assert all(f"QLinear ({scheme}" in how for _, how in s.converted)
    for i, r in ((0, reference[0]), (2, reference[1])):
        for k, v in r.state_dict().items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(model[i].state_dict()[k].view(torch.uint8), v.view(torch.uint8))
    with torch.no_grad():
        y = model(x)
    assert rel_err(y, ref) < (0.05 if scheme == "fp8" else 0.2)


def test_w4a8fp_config_per_channel_and_errors():
    model = small_model()
    quantize_(model, W4A8FPConfig(group_size=None))
    assert model[0].group_size == 128 and model[2].group_size == 256  # in_features: per channel
    assert "per channel" in repr(model[2])
    with pytest.raises(ValueError, match=r"group_size must be one of \(32, 64, 128\) or None"):
        W4A8FPConfig(group_size=256)
    with pytest.raises(ValueError, match="scale_policy must be one of"):
        W4A8FPConfig(scale_policy="int")
    with pytest.raises(TypeError, match="scale_policy must be a str"):
        W4A8FPConfig(scale_policy=2)
    assert W4A8FPConfig(scale_policy="M2").scale_policy == "m2"


def test_unsupported_shape_raises_before_any_change():
    model = nn.Sequential(gaussian_linear(128, 64), nn.ReLU(), gaussian_linear(64, 24)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"quantize_: layer '2': .*w4a8-fp.*\[24, 64\]"):
        quantize_(model, W4A8FPConfig())
    with pytest.raises(ValueError, match=r"quantize_model: layer '2': .*in_features % 64 == 0"):
        quantize_model(model, "w4a8-fp")
    assert not any(isinstance(m, QLinear) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the documented way out: leave that layer in float
    s = quantize_(model, W4A8FPConfig(group_size=64), module_configs={"2": None})
    assert isinstance(model[0], QLinear) and isinstance(model[2], nn.Linear)
    assert dict(s.skipped)["2"] == "module_configs['2'] is None"


def test_weight_quantizer_accepted_for_fp_schemes():
    # weight_quantizer applies to every scheme now (GPTQ, tests/test_gptq.py); None keeps RTN
    model = small_model()
    quantize_(model, FP8Config(), weight_quantizer=lambda _lin: None)
    assert isinstance(model[0], QLinear) and model[0].scheme == "fp8"


def test_quantize_model_schemes():
    model = small_model(torch.bfloat16)
    quantize_model(model, "fp8")
    assert model[0].scheme == "fp8" and model[0].weight_q.dtype == F8
    assert "QLinear (fp8)" in zqkernels.conversion_report(model)


# --- tiny HF models (the fixtures of test_config.py) ----------------------------------------------


# hidden size 64: group_size 128 does not divide it (test_hf_group_size_must_divide)
@pytest.mark.parametrize(
    "cfg", [FP8Config(), W4A8FPConfig(group_size=64), W4A8FPConfig(group_size=32, scale_policy="m1")]
)
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
        assert cos(run(m), ref) > (0.999 if cfg.scheme == "fp8" else 0.99)


def test_hf_llama_unsupported_shape_and_skip():
    pytest.importorskip("transformers")
    from test_config import llama

    m = llama()  # intermediate_size 96: down_proj has in_features 96 (not a multiple of 64)
    with pytest.raises(ValueError, match=r"layer 'model.layers.0.mlp.down_proj'.*\[64, 96\]"):
        quantize_(m, W4A8FPConfig(group_size=32))
    assert not any(isinstance(x, QLinear) for x in m.modules())
    s = quantize_(m, W4A8FPConfig(group_size=32), module_configs={"*.down_proj": None})
    assert isinstance(m.model.layers[0].mlp.up_proj, QLinear)
    assert dict(s.skipped)["model.layers.0.mlp.down_proj"] == "module_configs['*.down_proj'] is None"
    m2 = llama()
    quantize_(m2, FP8Config())  # fp8 takes any shape: the layer is fused
    assert m2.model.layers[0].fc2.scheme == "fp8"


def test_hf_group_size_must_divide():
    pytest.importorskip("transformers")
    from test_config import bert

    m = bert()
    with pytest.raises(ValueError, match=r"layer 'encoder.layer.0.attention.self.query'.*group_size 128.*"
                       r"choose group_size in \[32, 64\]"):
        quantize_(m, W4A8FPConfig())
    assert not any(isinstance(x, QLinear) for x in m.modules())
    quantize_(m, W4A8FPConfig(group_size=None))  # per channel fits any in_features % 64 == 0
    assert m.encoder.layer[0].fc1.group_size == 64  # fused: fc1 is intermediate.dense, fc2 output.dense
    assert m.encoder.layer[0].fc2.group_size == 128
