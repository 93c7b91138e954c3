"""QLinear and quantize_model on CPU (the reference path); the same code runs the kernels on CUDA."""

from __future__ import annotations

import re

import pytest
import torch
import zqkernels
from conftest import OUT_DTYPES, rel_err
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from zqkernels import QLinear, quantize_model


def gaussian_linear(in_features=256, out_features=192, bias=True, dtype=torch.float32, device="cpu"):
    lin = nn.Linear(in_features, out_features, bias=bias, device=device)
    with torch.no_grad():
        lin.weight.normal_(0, in_features**-0.5)
        if bias:
            lin.bias.normal_(0, 0.5)
    return lin.to(dtype)


def fake_cuda_linear(in_features, out_features):
    """An nn.Linear with fake CUDA weights: call inside FakeTensorMode (no GPU needed)."""
    lin = nn.Linear(in_features, out_features, device="meta")
    lin.weight = nn.Parameter(torch.empty(out_features, in_features, device="cuda"))
    lin.bias = nn.Parameter(torch.empty(out_features, device="cuda"))
    return lin


@pytest.mark.parametrize("dtype", OUT_DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_from_linear_error_bound(dtype, bias):
    # Per-channel weights and per-token activations, both int8, on Gaussian data: the output's
    # relative error is about sqrt(2) * (one rounding step / sqrt(12)) / rms ~ 1%, far from 2%.
    lin = gaussian_linear(bias=bias)
    q = QLinear.from_linear(lin.to(dtype))
    x = torch.randn(4, 16, 256).to(dtype)
    with torch.no_grad():
        ref = nn.functional.linear(
            x.double(), lin.weight.double(), None if lin.bias is None else lin.bias.double()
        )
        y = q(x)
    assert y.dtype == dtype and y.shape == (4, 16, 192)
    assert rel_err(y, ref) < 0.02


def test_leading_dims_and_layouts():
    q = QLinear.from_linear(gaussian_linear(64, 24, dtype=torch.bfloat16))
    x = torch.randn(2, 3, 5, 64, dtype=torch.bfloat16)
    flat = q(x.reshape(-1, 64))
    assert torch.equal(q(x), flat.reshape(2, 3, 5, 24))
    assert torch.equal(q(x[0, 0, 0]), flat[0])  # 1-D input, like nn.Linear
    xt = x.transpose(0, 2)  # non-contiguous leading dims: copied, same values
    assert torch.equal(q(xt), q(xt.contiguous()))
    assert q(torch.randn(0, 64, dtype=torch.bfloat16)).shape == (0, 24)


def test_bias_dtype_follows_input():
    lin = gaussian_linear(64, 16)  # float32 bias
    q = QLinear.from_linear(lin)
    assert (
        q.bias.dtype == torch.float32
        and q.weight_q.dtype == torch.int8
        and q.weight_scale.dtype == torch.float32
    )
    x = torch.randn(5, 64, dtype=torch.float16)
    q_half_bias = QLinear.from_linear(lin)
    q_half_bias.bias = q_half_bias.bias.half()
    assert torch.equal(q(x), q_half_bias(x))


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_round_trip(bias):
    src = QLinear.from_linear(gaussian_linear(96, 40, bias=bias, dtype=torch.bfloat16))
    sd = src.state_dict()
    assert set(sd) == ({"weight_q", "weight_scale", "bias", "_extra_state"} if bias else {"weight_q", "weight_scale", "_extra_state"})
    assert sd["_extra_state"] == {"version": 1, "scheme": "w8a8", "in_features": 96, "out_features": 40}
    tensors = [t for t in sd.values() if isinstance(t, torch.Tensor)]
    assert not any(t.is_floating_point() and t.dim() == 2 for t in tensors)  # no float weights
    dst = QLinear(96, 40, bias=bias, dtype=torch.bfloat16)
    dst.load_state_dict(sd)
    x = torch.randn(7, 96, dtype=torch.bfloat16)
    assert torch.equal(dst(x), src(x))
    with pytest.raises(ValueError, match="the checkpoint has out_features=40 but this layer has out_features=48"):
        QLinear(96, 48, bias=bias).load_state_dict(sd)


def test_dtype_casts_keep_float32_scales():
    q = QLinear.from_linear(gaussian_linear(32, 16))
    scale = q.weight_scale.clone()
    for cast in (
        lambda m: m.half(),
        lambda m: m.bfloat16(),
        lambda m: m.to(torch.float16),
        lambda m: m.float(),
    ):
        cast(q)
        assert q.weight_scale.dtype == torch.float32 and torch.equal(q.weight_scale, scale)
        assert q.weight_q.dtype == torch.int8
    assert q.bias.dtype == torch.float32  # the last cast: the bias follows the module dtype
    assert "weight_scale" in dict(q.named_buffers())


def test_repr():
    q = QLinear(4096, 11008, bias=False)
    assert repr(q) == (
        "QLinear(in_features=4096, out_features=11008, bias=False, "
        "scheme=w8a8 (int8 per-token activations x int8 per-channel weights))"
    )
    assert "bias=True" in repr(QLinear.from_linear(nn.Linear(32, 8)))


def test_constructor_makes_loadable_zero_buffers():
    q = QLinear(32, 8, dtype=torch.float16)
    assert q.weight_q.shape == (8, 32) and q.weight_q.dtype == torch.int8 and not q.weight_q.any()
    assert q.weight_scale.shape == (8,) and q.weight_scale.dtype == torch.float32
    assert q.bias.dtype == torch.float16
    assert (q.in_features, q.out_features, q.scheme) == (32, 8, "w8a8")
    with torch.no_grad():
        assert not q(torch.randn(3, 32, dtype=torch.float16)).any()


def test_forward_errors():
    q = QLinear.from_linear(gaussian_linear(64, 16, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match=r"QLinear: x must be bfloat16, float16 or float32, got torch.float64"):
        q(torch.randn(2, 64, dtype=torch.float64))
    with pytest.raises(
        ValueError,
        match=r"QLinear: x must be \[..., in_features\] with in_features == 64, got shape \[2, 32\]",
    ):
        q(torch.randn(2, 32, dtype=torch.bfloat16))
    x = torch.randn(2, 64, dtype=torch.bfloat16, requires_grad=True)
    assert q.training  # from_linear keeps the linear's mode: a fresh nn.Linear is in train()
    with pytest.raises(RuntimeError, match=r"QLinear\(in_features=64, .*\): training is not supported\. .*frozen"):
        q(x)
    with torch.no_grad():
        q(x)  # inference on a tensor that requires grad is fine
    with torch.inference_mode():
        q(x)
    q.eval()(x).sum().backward()  # eval(): gradients reach x (tests/test_grad_mode.py)
    assert x.grad is not None
    with FakeTensorMode():
        xc = torch.empty(2, 64, dtype=torch.bfloat16, device="cuda")
        with pytest.raises(ValueError, match=r"QLinear: x is on cuda:0 but the layer's weights are on cpu"):
            q(xc)


def test_from_linear_errors():
    schemes = re.escape(str(sorted(zqkernels.schemes.SCHEMES)))
    with pytest.raises(ValueError, match=rf"QLinear.from_linear: scheme must be one of {schemes}, got 'w4'"):
        QLinear.from_linear(nn.Linear(16, 8), scheme="w4")
    with pytest.raises(ValueError, match=rf"QLinear: scheme must be one of {schemes}"):
        QLinear(16, 8, scheme="fp4")
    with pytest.raises(TypeError, match=r"QLinear.from_linear: linear must be an nn.Linear, got Conv1d"):
        QLinear.from_linear(nn.Conv1d(4, 4, 1))
    with pytest.raises(ValueError, match=r"QLinear.from_linear: the linear's weight is on the meta device"):
        QLinear.from_linear(nn.Linear(16, 8, device="meta"))
    # CPU (the reference) takes any shape; CUDA needs in_features % 16 == 0 (out_features is padded).
    QLinear.from_linear(nn.Linear(10, 3))
    with FakeTensorMode():
        with pytest.raises(
            ValueError,
            match=r"QLinear.from_linear: in_features must be a multiple of 16 for the CUDA kernels, got 24",
        ):
            QLinear.from_linear(fake_cuda_linear(24, 8))


@pytest.mark.parametrize("n", [1, 3, 12, 50257 % 64 + 64])
def test_qlinear_pads_unaligned_out_features(n):
    """out_features % 8 != 0 (e.g. a 50257-token vocabulary head): rows padded with zeros inside,
    output exactly nn.Linear's shape and contiguous, state dict round-trips, repr says so."""
    torch.manual_seed(0)
    lin = nn.Linear(32, n, dtype=torch.bfloat16)
    q = QLinear.from_linear(lin)
    np_ = (n + 7) // 8 * 8
    assert q.weight_q.shape == (np_, 32) and q.weight_scale.shape == (np_,) and q.bias.shape == (np_,)
    assert (q.weight_q[n:] == 0).all() and (q.weight_scale[n:] == 0).all() and (q.bias[n:] == 0).all()
    x = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        y, ref = q(x), lin(x)
    assert y.shape == ref.shape and y.is_contiguous()
    assert ((y.float() - ref.float()).norm() / ref.float().norm()).item() < 3e-2
    fresh = QLinear(32, n, bias=True, dtype=torch.bfloat16)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(x), y)
    assert (f"weight rows padded to {np_}" in repr(q)) == (np_ != n)


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(64, 192)
        self.proj = nn.Linear(64, 64)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = _Attn()
        self.mlp = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
        self.mha = nn.MultiheadAttention(64, 4, batch_first=True)
        self.lm_head = nn.Linear(64, 100)
        self.tied = self.mlp[0]  # one Linear reachable under two names

    def forward(self, x):
        x = x + self.attn.proj(self.attn.qkv(x)[..., :64])
        x = x + self.mlp(x)
        x = x + self.mha(x, x, x, need_weights=False)[0]
        return self.lm_head(x)


def test_quantize_model():
    net = _Net().to(torch.bfloat16).eval()
    x = torch.randn(2, 8, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = net(x)
    out_model = quantize_model(net, skip=("lm_head", "attn.proj"))
    assert out_model is net
    assert (
        isinstance(net.attn.qkv, QLinear)
        and isinstance(net.mlp[0], QLinear)
        and isinstance(net.mlp[2], QLinear)
    )
    assert type(net.attn.proj) is nn.Linear and type(net.lm_head) is nn.Linear
    assert net.tied is net.mlp[0]  # the shared Linear became one shared QLinear
    assert not isinstance(net.mha.out_proj, QLinear)  # MultiheadAttention reads its weights directly
    with torch.no_grad():
        y = net(x)
    assert rel_err(y, ref) < 0.02  # ~0.55% measured
    with pytest.raises(ValueError, match=r"quantize_model: scheme must be one of"):
        quantize_model(net, scheme="int3")


def test_quantize_model_skip_patterns_and_root_linear():
    net = _Net()
    quantize_model(net, skip="mlp")  # a module name skips everything inside it
    assert type(net.mlp[0]) is nn.Linear and isinstance(net.attn.qkv, QLinear)
    net = _Net()
    quantize_model(net, skip=["*.proj", "attn.*"])
    assert type(net.attn.qkv) is nn.Linear and isinstance(net.lm_head, QLinear)
    lin = nn.Linear(32, 16)
    assert isinstance(quantize_model(lin), QLinear)
    assert quantize_model(lin, skip="*") is lin


def test_quantize_model_names_the_layer_that_cannot_run_on_cuda():
    with FakeTensorMode():
        net = nn.Sequential(nn.Identity(), fake_cuda_linear(24, 8))
        with pytest.raises(
            ValueError, match=r"quantize_model: layer '1': QLinear.from_linear: in_features must"
        ):
            quantize_model(net)


def test_compile_qlinear_cpu():
    torch._dynamo.reset()
    q = QLinear.from_linear(gaussian_linear(64, 32, dtype=torch.bfloat16))
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        compiled = torch.compile(q, backend="aot_eager", fullgraph=True)
        assert torch.equal(compiled(x), q(x))


def test_public_api():
    assert zqkernels.__version__ == "0.1.0"
    for name in (
        "quantize_per_token",
        "quantize_weight",
        "int8_gemm",
        "QLinear",
        "quantize_model",
        "info",
        "set_debug_checks",
    ):
        assert name in zqkernels.__all__ and callable(getattr(zqkernels, name))


# ------------------------------------------------------------------------------------------------
# Silent wrongs found by hand (core-v2 issue), each with a test that failed before the fix.


def test_load_state_dict_rejects_other_out_features():
    # 20 -> 12 and 20 -> 10 both pad to 16 weight rows: the buffers alone cannot tell them apart.
    sd = QLinear.from_linear(gaussian_linear(32, 12)).state_dict()
    with pytest.raises(ValueError, match=r"QLinear.load_state_dict: the checkpoint has out_features=12 but "
                       r"this layer has out_features=10"):
        QLinear(32, 10, dtype=torch.float32).load_state_dict(sd)
    QLinear(32, 12, dtype=torch.float32).load_state_dict(sd)  # the matching shape loads


def test_quantize_model_converts_every_use_of_a_shared_linear():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(32, 32)
            self.b = self.a  # the same Linear under two names of one parent

        def forward(self, x):
            return self.b(self.a(x))

    m = Twice()
    quantize_model(m)
    assert isinstance(m.a, QLinear) and m.b is m.a


def test_quantize_model_is_all_or_nothing():
    m = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 16))
    with torch.no_grad():
        m[1].weight[3, 5] = float("nan")  # the second layer cannot be quantized
    with pytest.raises(ValueError, match=r"quantize_model: layer '1': quantize_weight: w has NaN/Inf"):
        quantize_model(m)
    assert type(m[0]) is nn.Linear and type(m[1]) is nn.Linear  # untouched


def test_qlinear_fp32_model():
    lin = gaussian_linear(64, 24, dtype=torch.float32)
    q = QLinear.from_linear(lin)
    x = torch.randn(5, 64)
    with torch.no_grad():
        y = q(x)
        ref = lin(x)
    assert y.dtype == torch.float32
    assert rel_err(y, ref) < 0.02


def test_torch_export_keeps_the_custom_ops():
    q = QLinear.from_linear(gaussian_linear(64, 24, dtype=torch.bfloat16))
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        ep = torch.export.export(q, (x,))
        targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        assert "zqkernels.quantize_per_token.default" in targets and "zqkernels.gemm.default" in targets
        assert torch.equal(ep.module()(x), q(x))
