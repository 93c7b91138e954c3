"""LoRC (ZeroQuant-V2 low-rank compensation, zqkernels/nn/lorc.py) on CPU."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import zqkernels
from torch import nn
from zqkernels.nn.lorc import _deq_weight, lorc_factors


def make(n=48, k=64, bias=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return lin


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_reconstruction_is_the_eckart_young_tail():
    lin = make()
    q = zqkernels.QLinear.from_linear(lin)
    w = lin.weight.detach()
    deq = _deq_weight(q)
    s = torch.linalg.svdvals((w - deq).double())
    for r in (1, 4, 16, 48):
        a, b = lorc_factors(w, deq, r, dtype=torch.float32)
        assert a.shape == (64, r) and b.shape == (r, 48)
        err = float((w - (deq + (a @ b).t())).double().norm())
        tail = float(s[r:].pow(2).sum().sqrt())
        assert err == pytest.approx(tail, rel=1e-4, abs=1e-6), (r, err, tail)
    # bf16 factors: the same up to bf16 rounding of the rank-r part
    a, b = lorc_factors(w, deq, 8, dtype=torch.bfloat16)
    assert a.dtype == b.dtype == torch.bfloat16
    err = float((w - (deq + (a.float() @ b.float()).t())).double().norm())
    tail = float(s[8:].pow(2).sum().sqrt())
    head = float(s[:8].pow(2).sum().sqrt())
    assert abs(err - tail) <= 2 ** -8 * head


def test_a_is_orthonormal_and_b_carries_s():
    lin = make()
    q = zqkernels.QLinear.from_linear(lin)
    info = q.add_lorc(lin.weight, rank=6, dtype=torch.float32)
    a, b = q.lorc_a, q.lorc_b
    assert torch.allclose(a.t() @ a, torch.eye(6), atol=1e-5)
    s = torch.linalg.svdvals(lin.weight.detach() - _deq_weight(q))[:6]
    assert torch.allclose(b.norm(dim=1), s, rtol=1e-4)
    assert info["rank"] == 6 and info["bytes"] == (64 + 48) * 6 * 4 and info["weight_bytes"] == 48 * 64
    assert info["rel_err_after"] < info["rel_err_before"]


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_output_error_below_plain_and_decreases_with_rank(x_dtype):
    lin = make(n=64, k=96)
    x = torch.randn(256, 96, generator=torch.Generator().manual_seed(1)).to(x_dtype)
    with torch.no_grad():
        ref = lin(x.float())
        errs = []
        for r in (0, 4, 16, 32, 64):
            q = zqkernels.QLinear.from_linear(lin)
            if r:
                q.add_lorc(lin.weight, rank=r)
                assert q.lorc_rank == r and q.lorc_a.dtype == torch.bfloat16  # the default: bf16 factors
            y = q(x)
            assert y.dtype == x_dtype and y.shape == (256, 64) and y.is_contiguous()
            errs.append(rel(y, ref))
    assert all(e1 < e0 for e0, e1 in zip(errs, errs[1:])), errs


def test_rank_errors():
    lin = make(n=24, k=32)
    q = zqkernels.QLinear.from_linear(lin)
    with pytest.raises(ValueError, match="rank"):
        q.add_lorc(lin.weight, rank=0)
    with pytest.raises(ValueError, match="rank"):
        q.add_lorc(lin.weight, rank=25)
    with pytest.raises(TypeError, match="rank"):
        q.add_lorc(lin.weight, rank=2.0)
    with pytest.raises(ValueError, match="in_features"):
        q.add_lorc(lin.weight.t(), rank=2)
    q.add_lorc(lin.weight, rank=24)  # min(N, K) is fine
    assert q.lorc_rank == 24


def test_dtype_and_device_handling():
    lin = make(dtype=torch.bfloat16)
    q = zqkernels.QLinear.from_linear(lin)
    q.add_lorc(lin.weight.float(), rank=4, dtype=torch.bfloat16)
    assert q.lorc_a.dtype == q.lorc_b.dtype == torch.bfloat16
    assert q.lorc_a.device == q.weight_q.device
    x = torch.randn(5, 3, 64, dtype=torch.float16)
    with torch.no_grad():
        y = q(x)  # factors cast to x's dtype for the two small GEMMs
    assert y.dtype == torch.float16 and y.shape == (5, 3, 48)
    q.half()  # .to(dtype) casts the factors (as the bias), never the fp32 scales
    assert q.lorc_a.dtype == torch.float16 and q.weight_scale.dtype == torch.float32
    assert "lorc_rank=4" in repr(q)
    q.init_lorc(0)
    assert q.lorc_a is None and q.lorc_rank == 0 and "lorc_a" not in q.state_dict()


def test_state_dict_round_trip_and_rank_check():
    lin = make(n=20, k=32)
    q = zqkernels.QLinear.from_linear(lin)
    q.add_lorc(lin.weight, rank=4)
    sd = q.state_dict()
    assert sd["lorc_a"].shape == (32, 4) and sd["lorc_b"].shape == (4, 20)
    assert sd["_extra_state"]["lorc_rank"] == 4
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=False)

    fresh = zqkernels.QLinear(32, 20, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"LoRC rank 4 .* rank 0; call layer.init_lorc\(4\)"):
        fresh.load_state_dict(sd)
    with pytest.raises(ValueError, match="LoRC rank 4 .* rank 2"):
        zqkernels.QLinear(32, 20, dtype=torch.float32).init_lorc(2).load_state_dict(sd)
    fresh = zqkernels.QLinear(32, 20, dtype=torch.float32).init_lorc(4)
    fresh.load_state_dict(sd)
    x = torch.randn(7, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x))
    # a plain checkpoint into a LoRC layer is a mismatch too
    plain = zqkernels.QLinear.from_linear(lin).state_dict()
    with pytest.raises(ValueError, match="LoRC rank 0"):
        zqkernels.QLinear(32, 20, dtype=torch.float32).init_lorc(4).load_state_dict(plain)


def test_padded_out_features():
    lin = make(n=20, k=32)  # 20 % 8 != 0: weight rows padded to 24
    q = zqkernels.QLinear.from_linear(lin)
    assert q.weight_q.shape[0] == 24
    q.add_lorc(lin.weight, rank=8, dtype=torch.float32)
    x = torch.randn(3, 4, 32)
    with torch.no_grad():
        y, ref = q(x), lin(x)
        plain = zqkernels.QLinear.from_linear(lin)(x)
    assert y.shape == (3, 4, 20) and y.is_contiguous()
    assert rel(y, ref) < rel(plain, ref)
    # forward_quantized (fused blocks' entry): LoRC on deq(xq), close to forward()
    x2 = x.reshape(-1, 32)
    xq, sx = zqkernels.quantize_per_token(x2)
    with torch.no_grad():
        yq = q.forward_quantized(xq, sx, torch.float32)
    assert yq.shape == (12, 20)
    assert rel(yq, y.reshape(12, 20)) < 1e-3


def test_no_lorc_path_unchanged():
    lin = make()
    q = zqkernels.QLinear.from_linear(lin)
    assert q.lorc_a is None and q.lorc_b is None and q.lorc_rank == 0
    sd = q.state_dict()
    assert "lorc_a" not in sd and "lorc_rank" not in sd["_extra_state"]
    x = torch.randn(4, 64)
    with torch.no_grad():
        xq, sx = zqkernels.quantize_per_token(x)
        expect = zqkernels.int8_gemm(xq, q.weight_q, sx, q.weight_scale, q.bias, out_dtype=torch.float32)
        assert torch.equal(q(x), expect)


def test_save_quantized_refuses_lorc(tmp_path):
    pytest.importorskip("safetensors")
    model = nn.Sequential(make())
    qm = zqkernels.quantize_model(copy.deepcopy(model))
    zqkernels.lorc(qm, model, rank=2)
    with pytest.raises(NotImplementedError, match="LoRC"):
        zqkernels.save_quantized(qm, tmp_path / "ckpt")


def _tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, vocab_size=500,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def test_tiny_llama_lorc_gets_closer_to_float():
    m = _tiny_llama()
    ids = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m(ids).logits
        qm = zqkernels.quantize_model(copy.deepcopy(m), fused_blocks=False)
        before = rel(qm(ids).logits, ref)
        report = zqkernels.lorc(qm, m, rank=8)
        after = rel(qm(ids).logits, ref)
    # 7 linears per layer (q, k, v, o, gate, up, down) x 2, and lm_head
    n_q = sum(isinstance(x, zqkernels.QLinear) for x in qm.modules())
    assert len(report.layers) == n_q == 15 and not report.skipped
    assert report.total_bytes == sum(r["bytes"] for r in report.layers)
    assert report.total_bytes == sum(x.lorc_a.nbytes + x.lorc_b.nbytes for x in qm.modules()
                                     if isinstance(x, zqkernels.QLinear))
    assert 0 < report.relative < 1 and "LoRC: 15 layers" in str(report)
    assert after < before, (before, after)


def test_lorc_refuses_fused_blocks():
    m = _tiny_llama()
    qm = zqkernels.quantize_model(copy.deepcopy(m))  # fused blocks: merged QKV / gate-up
    with pytest.raises(NotImplementedError, match="fused_blocks=False"):
        zqkernels.lorc(qm, m, rank=4)


def test_lorc_hf_conv1d_and_skips():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    float_model = nn.Sequential(Conv1D(48, 64), nn.ReLU())  # Conv1D(nf=out, nx=in)
    with torch.no_grad():
        float_model[0].weight.normal_(0, 0.05)
    qm = zqkernels.quantize_model(copy.deepcopy(float_model), fused_blocks=False)
    assert isinstance(qm[0], zqkernels.QLinear)
    x = torch.randn(8, 64)
    with torch.no_grad():
        ref = float_model(x)
        before = rel(qm(x), ref)
        report = zqkernels.lorc(qm, float_model, rank=16)
        after = rel(qm(x), ref)
    assert [r["module"] for r in report.layers] == ["0"] and after < before
    other = nn.Sequential(nn.Identity())
    report = zqkernels.lorc(qm, other, rank=4)
    assert report.layers == [] and report.skipped == [("0", "a Identity in the float model")]


# ------------------------------------------------------------------------------------------------
# Every scheme (RTN and GPTQ weights).

SCHEMES = [
    ("w8a8", {}, "int8"),
    ("fp8", {}, "fp8"),
    ("w4a8-fp", {}, "fp4"),
    ("w4a8-fp", {"group_size": 64, "scale_policy": "free"}, "fp4"),
    ("w4a8", {}, "int4"),
    ("w4a8-floatscale", {"group_size": 64}, "int4"),
    ("w8a8-group", {}, "int8"),
    ("w8a8-group", {"group_size": 32, "scale": "float"}, "int8"),
]
SCHEME_IDS = [f"{s}-{i}" for i, (s, _, _) in enumerate(SCHEMES)]


def correlated_x(n=512, k=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, k, generator=g) / k**0.5
    return (torch.randn(n, k, generator=g) @ a + 0.3 * torch.randn(n, k, generator=g)) * torch.exp(
        torch.randn(k, generator=g) * 0.5
    )


@pytest.mark.parametrize("quantizer", ["rtn", "gptq"])
@pytest.mark.parametrize("scheme,opts,fmt", SCHEMES, ids=SCHEME_IDS)
def test_every_scheme_output_error_and_bytes(scheme, opts, fmt, quantizer):
    from zqkernels.algorithms.gptq import gptq_quantize_weight

    n, k, r = 48, 128, 16
    lin = make(n=n, k=k)
    x = correlated_x(k=k)
    H = 2 * x.T @ x / x.shape[0]
    wqz = None
    if quantizer == "gptq":
        def wqz(linear, weight_format):
            return gptq_quantize_weight(linear.weight, H, **weight_format)
    with torch.no_grad():
        ref = lin(x)
        q = zqkernels.QLinear.from_linear(lin, scheme, weight_quantizer=wqz, **opts)
        before = rel(q(x), ref)
        info = q.add_lorc(lin.weight, rank=r, dtype=torch.bfloat16)
        after = rel(q(x), ref)
    assert after < before, (before, after)
    assert info["rel_err_after"] < info["rel_err_before"]
    assert q.lorc_a.dtype == q.lorc_b.dtype == torch.bfloat16 and q.lorc_rank == r
    # the byte report: bf16 factors (K + N) r, the quantized weight and its scales
    assert info["scheme"] == scheme
    assert info["bytes"] == (k + n) * r * 2 == q.lorc_a.nbytes + q.lorc_b.nbytes
    assert info["weight_bytes"] == q.weight_q.nbytes
    packed = fmt in ("fp4", "int4")
    assert info["weight_bytes"] == (q.weight_q.shape[0] * k // 2 if packed else q.weight_q.shape[0] * k)
    sg = q._buffers.get("weight_group_scale")
    assert info["scale_bytes"] == q.weight_scale.nbytes + (sg.nbytes if sg is not None else 0)
    # E is the error of the weight the kernels multiply: dequantize of the layer's buffers
    deq = _deq_weight(q)
    assert deq.shape == (n, k)
    w = lin.weight.detach()
    s = torch.linalg.svdvals((w - deq).double())
    a, b = lorc_factors(w, deq, r, dtype=torch.float32)
    err = float((w - (deq + (a @ b).t())).double().norm())
    assert err == pytest.approx(float(s[r:].pow(2).sum().sqrt()), rel=1e-4)


def test_every_scheme_state_dict_round_trip():
    lin = make(n=48, k=128)
    x = correlated_x(n=16, k=128)
    q = zqkernels.QLinear.from_linear(lin, "w4a8")
    q.add_lorc(lin.weight, rank=8, dtype=torch.bfloat16)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    e = zqkernels.QLinear(128, 48, scheme="w4a8", dtype=torch.float32).init_lorc(8, dtype=torch.bfloat16)
    e.load_state_dict(torch.load(buf))
    with torch.no_grad():
        assert torch.equal(e(x), q(x))


def test_lorc_model_mixed_schemes_report():
    torch.manual_seed(0)
    fm = nn.Sequential()
    fm.add_module("attn", nn.Linear(128, 128))
    mlp = nn.Sequential()
    mlp.add_module("up", nn.Linear(128, 256))
    mlp.add_module("act", nn.GELU())
    mlp.add_module("down", nn.Linear(256, 128))
    fm.add_module("mlp", mlp)
    x = correlated_x(n=64, k=128)
    qm = copy.deepcopy(fm)
    zqkernels.quantize_(qm, None, module_configs={"*mlp.*": zqkernels.W4A8Config(), "*": zqkernels.FP8Config()})
    assert qm.attn.scheme == "fp8" and qm.mlp.up.scheme == "w4a8"
    with torch.no_grad():
        ref = fm(x)
        before = rel(qm(x), ref)
        report = zqkernels.lorc(qm, fm, rank=8, dtype=torch.bfloat16)
        after = rel(qm(x), ref)
    assert after < before, (before, after)
    assert [(r["module"], r["scheme"]) for r in report.layers] == [
        ("attn", "fp8"), ("mlp.up", "w4a8"), ("mlp.down", "w4a8")
    ]
    assert report.total_bytes == 2 * 8 * ((128 + 128) + (128 + 256) + (256 + 128))
    assert report.weight_bytes == 128 * 128 + 256 * 128 // 2 + 128 * 256 // 2
    assert report.scale_bytes == sum(r["scale_bytes"] for r in report.layers) > 0
    assert f"{report.total_bytes} bytes added" in str(report) and "scale bytes" in str(report)
