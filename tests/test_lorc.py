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


# ------------------------------------------------------------------------------------------------
# Fused blocks (QLlamaDecoderLayer, QGPT2Block, QBertLayer): one LoRC pair per merged GEMM.

# role -> the HF float Linears merged into it, in row order (written out here, not imported: the
# library's map is what is under test)
ROLES = {
    "llama": {"qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "attn_out": ["self_attn.o_proj"],
              "fc1": ["mlp.gate_proj", "mlp.up_proj"], "fc2": ["mlp.down_proj"]},
    "gpt2": {"qkv": ["attn.c_attn"], "attn_out": ["attn.c_proj"], "fc1": ["mlp.c_fc"], "fc2": ["mlp.c_proj"]},
    "bert": {"qkv": ["attention.self.query", "attention.self.key", "attention.self.value"],
             "attn_out": ["attention.output.dense"], "fc1": ["intermediate.dense"], "fc2": ["output.dense"]},
}
LAYERS = {"llama": "model.layers", "gpt2": "transformer.h", "bert": "encoder.layer"}
BLOCKS = {"llama": "QLlamaDecoderLayer", "gpt2": "QGPT2Block", "bert": "QBertLayer"}
ARCHS = list(ROLES)


def _tiny(arch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if arch == "llama":
        return _tiny_llama()
    if arch == "gpt2":
        cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=500, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg).eval()
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                  vocab_size=500)
    return transformers.BertModel(cfg).eval()


def _out(model, ids):
    o = model(ids)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _float_w(mod):
    """[out, in] of an nn.Linear or HF Conv1D (weight [in, out])."""
    return mod.weight.detach().t() if type(mod).__name__ == "Conv1D" else mod.weight.detach()


def _deq_w8a8(q):
    """W8A8 deq(Wq) by hand: int8 rows x per-channel scales, padded rows dropped."""
    n = q.out_features
    return q.weight_q[:n].float() * q.weight_scale[:n, None]


IDS = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_lorc_is_the_svd_of_the_merged_error(arch):
    """Each INT8 role of a fused block gets the rank-r truncated SVD of the error of the merged weight
    (the float parts concatenated in row order minus deq of the merged int8 weight), not per part."""
    m = _tiny(arch)
    qf = zqkernels.quantize_model(copy.deepcopy(m))
    blocks = qf.get_submodule(LAYERS[arch])
    assert all(type(b).__name__ == BLOCKS[arch] for b in blocks)
    r = 8
    report = zqkernels.lorc(qf, m, rank=r, dtype=torch.float32)
    rows = {x["module"]: x for x in report.layers}
    outside = [n for n, q in qf.named_modules() if isinstance(q, zqkernels.QLinear) and ".h." not in n
               and ".layers." not in n and ".layer." not in n]
    assert len(report.layers) == 4 * len(blocks) + len(outside) and not report.skipped
    for i, fblock in enumerate(m.get_submodule(LAYERS[arch])):
        for role, parts in ROLES[arch].items():
            name = f"{LAYERS[arch]}.{i}.{role}"
            q = qf.get_submodule(name)
            w = torch.cat([_float_w(fblock.get_submodule(p)) for p in parts]).double()
            d = _deq_w8a8(q).double()
            assert w.shape == (q.out_features, q.in_features)
            u, s, vh = torch.linalg.svd(w - d, full_matrices=False)
            ab = (q.lorc_a.double() @ q.lorc_b.double()).t()  # [N, K], rank r
            e_r = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
            assert q.lorc_a.shape == (q.in_features, r) and q.lorc_b.shape == (r, q.out_features)
            # (float32 SVD in the library: the rank-r subspace to ~1e-5, more where s_r ~ s_{r+1})
            assert float((ab - e_r).norm()) < 3e-4 * float(e_r.norm()), (name, float((ab - e_r).norm()))
            # Eckart-Young on the merged matrix, and the report's numbers are the merged weight's
            tail = float(s[r:].pow(2).sum().sqrt())
            assert float((w - d - ab).norm()) == pytest.approx(tail, rel=1e-5)
            row = rows[name]
            assert row["parts"] == [f"{LAYERS[arch]}.{i}.{p}" for p in parts] and row["rank"] == r
            assert row["rel_err_before"] == pytest.approx(float((w - d).norm() / w.norm()), rel=1e-5)
            assert row["rel_err_after"] == pytest.approx(tail / float(w.norm()), rel=1e-4)
            assert row["bytes"] == (q.in_features + q.out_features) * r * 4 == q.lorc_a.nbytes + q.lorc_b.nbytes
            assert row["weight_bytes"] == q.weight_q.nbytes
            # one rank-r correction for the whole GEMM: no part's error grows (E_r = E V_r V_r^T)
            o = 0
            for p in parts:
                n = _float_w(fblock.get_submodule(p)).shape[0]
                e, c = (w - d)[o:o + n], ab[o:o + n]
                assert float((e - c).norm()) <= float(e.norm()), (name, p)
                o += n
    assert report.total_bytes == sum(x.lorc_a.nbytes + x.lorc_b.nbytes for x in qf.modules()
                                     if isinstance(x, zqkernels.QLinear))
    assert f"LoRC: {len(report.layers)} layers, {report.total_bytes} bytes added" in str(report)
    assert f"{LAYERS[arch]}.0.qkv" in str(report)


def _per_linear_with_fused_factors(m, qf, arch, on_deq):
    """The per-Linear (fused_blocks=False) model given the fused model's factors: each part of a merged
    role gets A and its columns of B. on_deq: compute its LoRC term on deq(quantize_per_token(x)) (what
    the fused block hands over) in a hook written here, instead of QLinear.forward's term on x."""
    qu = zqkernels.quantize_model(copy.deepcopy(m), fused_blocks=False)
    inside = set()
    for i in range(len(m.get_submodule(LAYERS[arch]))):
        for role, parts in ROLES[arch].items():
            fq = qf.get_submodule(f"{LAYERS[arch]}.{i}.{role}")
            o = 0
            for p in parts:
                name = f"{LAYERS[arch]}.{i}.{p}"
                q = qu.get_submodule(name)
                inside.add(name)
                a, b = fq.lorc_a.clone(), fq.lorc_b[:, o:o + q.out_features].contiguous()
                o += q.out_features
                if not on_deq:
                    q.lorc_a, q.lorc_b = a, b
                    continue

                def hook(mod, inp, y, a=a, b=b):
                    x = inp[0].reshape(-1, mod.in_features)
                    xq, sx = zqkernels.quantize_per_token(x)
                    return y + ((xq.float() * sx[:, None]) @ a.float() @ b.float()).to(y.dtype).view(y.shape)

                q.register_forward_hook(hook)
            assert o == fq.out_features
    for name, q in qu.named_modules():  # lm_head / pooler: the same per-Linear LoRC in both models
        if isinstance(q, zqkernels.QLinear) and name not in inside:
            f = qf.get_submodule(name)
            q.lorc_a, q.lorc_b = f.lorc_a.clone(), f.lorc_b.clone()
    return qu


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_lorc_matches_per_linear(arch):
    """The fused model with LoRC == the per-Linear model given the same (merged, sliced) factors.
    Exactly so when the per-Linear LoRC term also reads deq(xq) (the block's input); with the term on
    float x (QLinear.forward) they differ by E_r (x - deq(xq)) per GEMM, second order, checked per
    GEMM on the same input."""
    m = _tiny(arch)
    with torch.no_grad():
        ref = _out(m, IDS)
        qf = zqkernels.quantize_model(copy.deepcopy(m))
        plain = _out(qf, IDS)
        zqkernels.lorc(qf, m, rank=8, dtype=torch.float32)
        yf = _out(qf, IDS)
        qu = _per_linear_with_fused_factors(m, qf, arch, on_deq=True)
        yu = _out(qu, IDS)
    effect = rel(yf, plain)
    assert effect > 1e-4  # LoRC changed the output ...
    assert rel(yf, yu) < 1e-6, (rel(yf, yu), effect)  # ... exactly as the per-Linear model's
    assert rel(yf, ref) < rel(plain, ref)  # and towards the float model

    # per GEMM, on the same float input x (captured from the float model): fused role via
    # forward_quantized(quantize_per_token(x)) vs the per-Linear parts' forward(x) (term on x)
    qx = _per_linear_with_fused_factors(m, qf, arch, on_deq=False)
    xs = {}

    def keep(mod, inp, y, n):
        xs.setdefault(n, inp[0].detach())

    hooks = [mod.register_forward_hook(lambda mod, inp, y, n=n: keep(mod, inp, y, n))
             for n, mod in m.named_modules() if isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"]
    with torch.no_grad():
        _out(m, IDS)
        for h in hooks:
            h.remove()
        for i in range(len(m.get_submodule(LAYERS[arch]))):
            for role, parts in ROLES[arch].items():
                names = [f"{LAYERS[arch]}.{i}.{p}" for p in parts]
                fq = qf.get_submodule(f"{LAYERS[arch]}.{i}.{role}")
                x = xs[names[0]].reshape(-1, fq.in_features)
                xq, sx = zqkernels.quantize_per_token(x)
                y_f = fq.forward_quantized(xq, sx, torch.float32)
                y_u = torch.cat([qx.get_submodule(n)(x) for n in names], 1)
                e_r = (fq.lorc_a.double() @ fq.lorc_b.double()).t()
                dx = x.double() - xq.double() * sx.double()[:, None]
                bound = float(torch.linalg.matrix_norm(e_r, 2)) * float(dx.norm())
                diff = float((y_f - y_u).double().norm())
                term = float((x.double() @ e_r.t()).norm())  # the LoRC correction itself
                assert diff <= 1.01 * bound + 1e-6 * float(y_u.norm()), (names, diff, bound)
                assert diff < 0.05 * term, (names, diff, term)


def test_fused_lorc_float_roles_and_missing_float_layers():
    m = _tiny("llama")
    qf = zqkernels.quantize_model(copy.deepcopy(m), level="balanced")  # fc2 (down_proj) stays float
    blk = qf.model.layers[0]
    assert isinstance(blk.fc2, nn.Linear) and isinstance(blk.fc1, zqkernels.QLinear)
    report = zqkernels.lorc(qf, m, rank=4)
    names = [r["module"] for r in report.layers]
    assert names == [f"model.layers.{i}.{r}" for i in (0, 1) for r in ("qkv", "attn_out", "fc1")] + ["lm_head"]
    assert not report.skipped
    # a float model without the layers: every merged QLinear is skipped, with why, and keeps no factors
    qf = zqkernels.quantize_model(copy.deepcopy(m))
    report = zqkernels.lorc(qf, nn.Sequential(), rank=4)
    assert report.layers == [] and len(report.skipped) == 9
    assert ("model.layers.0.qkv", "not in the float model") in report.skipped
    assert all(q.lorc_rank == 0 for q in qf.modules() if isinstance(q, zqkernels.QLinear))
    # a float layer that lacks a part (here k_proj is not a Linear): that role is skipped, others done
    m2 = copy.deepcopy(m)
    m2.model.layers[1].self_attn.k_proj = nn.Identity()
    report = zqkernels.lorc(qf, m2, rank=4)
    why = "its float part 'model.layers.1.self_attn.k_proj' is a Identity in the float model"
    assert report.skipped == [("model.layers.1.qkv", why)]
    assert len(report.layers) == 8 and qf.model.layers[1].qkv.lorc_rank == 0
    # rank is checked against the merged GEMM: qkv is [64 + 2 * 32, 64] -> at most 64
    with pytest.raises(ValueError, match=r"\[1, 64\]"):
        zqkernels.lorc(qf, m, rank=65)


def test_fused_lorc_checkpoints(tmp_path):
    """save_quantized refuses LoRC factors (fused or not); load_quantized's fused model takes LoRC like
    an in-memory one; the state_dict (torch.save) round trip keeps the fused blocks' factors."""
    pytest.importorskip("safetensors")
    m = _tiny("llama")
    with torch.no_grad():
        qf = zqkernels.quantize_model(copy.deepcopy(m))
        zqkernels.save_quantized(qf, tmp_path / "plain")  # before LoRC: fine
        zqkernels.lorc(qf, m, rank=8)
        with pytest.raises(NotImplementedError, match="model.layers.0.qkv' has LoRC factors"):
            zqkernels.save_quantized(qf, tmp_path / "lorc")
        y = _out(qf, IDS)

        loaded = zqkernels.load_quantized(tmp_path / "plain")
        assert type(loaded.model.layers[0]).__name__ == "QLlamaDecoderLayer"
        report = zqkernels.lorc(loaded, m, rank=8)
        assert len(report.layers) == 9 and not report.skipped
        assert rel(_out(loaded, IDS), y) < 1e-6

        buf = io.BytesIO()
        torch.save(qf.state_dict(), buf)
        buf.seek(0)
        fresh = zqkernels.quantize_model(copy.deepcopy(m))
        for name, q in qf.named_modules():
            if isinstance(q, zqkernels.QLinear):
                fresh.get_submodule(name).init_lorc(q.lorc_rank, dtype=q.lorc_a.dtype)
        fresh.load_state_dict(torch.load(buf, weights_only=False))
        assert torch.equal(_out(fresh, IDS), y)


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
    ("w4a8-zp", {"group_size": 64}, "int4"),
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
