"""rope_qkv on CPU (the reference path): HF's own rotary and StaticLayer cache write as the yardstick,
bit for bit; the custom ops (opcheck, torch.compile); argument checks."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from zqkernels.reference.rope import rope_qkv_ref

hf_llama = pytest.importorskip("transformers.models.llama.modeling_llama")


def inputs(B=2, S=5, H=4, KV=2, hd=16, rd=None, dtype=torch.bfloat16, cos_batch=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    rd = hd if rd is None else rd
    qkv = (torch.randn(B * S, (H + 2 * KV) * hd, generator=g) * 2).to(dtype).view(B, S, -1)
    pos = torch.arange(S)[None].expand(cos_batch or B, S) + 7
    inv = 1.0 / (10000 ** (torch.arange(0, rd, 2).float() / rd))
    f = pos[..., None].float() * inv
    emb = torch.cat((f, f), -1)
    return qkv, emb.cos().to(dtype), emb.sin().to(dtype)


def hf_sequence(qkv, cos, sin, H, KV, hd):
    """What HF's LlamaAttention does: views, transposes, apply_rotary_pos_emb (on the first rd channels)."""
    B, S, _ = qkv.shape
    q, k, v = qkv.split((H * hd, KV * hd, KV * hd), dim=-1)
    q, k, v = (t.reshape(B, S, -1, hd).transpose(1, 2) for t in (q, k, v))
    rd = cos.shape[-1]
    qr, kr = hf_llama.apply_rotary_pos_emb(q[..., :rd], k[..., :rd], cos, sin)
    return torch.cat((qr, q[..., rd:]), -1), torch.cat((kr, k[..., rd:]), -1), v


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rd, cos_batch", [(None, None), (8, None), (None, 1)])
def test_matches_hf_bit_for_bit(dtype, rd, cos_batch):
    H, KV, hd = 4, 2, 16
    qkv, cos, sin = inputs(rd=rd, dtype=dtype, cos_batch=cos_batch)
    q, k, v = zqkernels.rope_qkv(qkv, cos, sin, H, KV, hd)
    qh, kh, vh = hf_sequence(qkv, cos, sin, H, KV, hd)
    assert q.shape == (2, H, 5, hd) and k.shape == (2, KV, 5, hd)
    for a, b in ((q, qh), (k, kh), (v, vh)):
        assert torch.equal(a, b)


def test_cache_write_matches_hf_static_layer():
    from transformers.cache_utils import StaticLayer

    H, KV, hd, L = 4, 2, 16, 12
    layer = StaticLayer(max_cache_len=L)
    keys, values = torch.zeros(2, KV, L, hd, dtype=torch.bfloat16), torch.zeros(2, KV, L, hd, dtype=torch.bfloat16)
    off = torch.tensor(0)
    for step, S in enumerate((5, 1, 1)):
        qkv, cos, sin = inputs(S=S, seed=step)
        q, kc, vc = zqkernels.rope_qkv(qkv, cos, sin, H, KV, hd, k_cache=keys, v_cache=values, cache_offset=off)
        off += S
        qh, kh, vh = hf_sequence(qkv, cos, sin, H, KV, hd)
        hk, hv = layer.update(kh, vh)
        assert kc is keys and vc is values and torch.equal(q, qh)
        assert torch.equal(keys, hk) and torch.equal(values, hv)


def test_advance_moves_the_offset_as_hf_does():
    """advance=True: the same writes as without it, and the offset advanced by S (HF StaticLayer.update)."""
    H, KV, hd, L = 4, 2, 16, 12
    keys, values = torch.zeros(2, KV, L, hd, dtype=torch.bfloat16), torch.zeros(2, KV, L, hd, dtype=torch.bfloat16)
    k2, v2 = keys.clone(), values.clone()
    off, off2 = torch.tensor(0), torch.tensor(0)
    for step, S in enumerate((5, 1, 1)):
        qkv, cos, sin = inputs(S=S, seed=step)
        q, _, _ = zqkernels.rope_qkv(qkv, cos, sin, H, KV, hd, k_cache=keys, v_cache=values, cache_offset=off,
                                     advance=True)  # fmt: skip
        q2, _, _ = zqkernels.rope_qkv(qkv, cos, sin, H, KV, hd, k_cache=k2, v_cache=v2, cache_offset=off2)
        off2 += S
        assert int(off) == int(off2) and torch.equal(q, q2) and torch.equal(keys, k2) and torch.equal(values, v2)
    with pytest.raises(ValueError, match=r"rope_qkv: advance=True needs a cache"):
        zqkernels.rope_qkv(qkv, cos, sin, H, KV, hd, advance=True)
    with pytest.raises(TypeError, match=r"rope_qkv: advance must be a bool, got int"):
        zqkernels.rope_qkv(qkv, cos, sin, H, KV, hd, k_cache=keys, v_cache=values, cache_offset=off, advance=1)


def test_cache_positions_past_the_end_are_not_written():
    H, KV, hd, L = 2, 1, 8, 6
    qkv, cos, sin = inputs(B=1, S=4, H=H, KV=KV, hd=hd)
    keys, values = torch.zeros(1, KV, L, hd, dtype=torch.bfloat16), torch.zeros(1, KV, L, hd, dtype=torch.bfloat16)
    zqkernels.rope_qkv(qkv, cos, sin, H, KV, hd, k_cache=keys, v_cache=values, cache_offset=torch.tensor(4))
    _, k, v = rope_qkv_ref(qkv, cos, sin, H, KV, hd)
    assert not keys[:, :, :4].any() and torch.equal(keys[:, :, 4:], k[:, :, :2])
    assert torch.equal(values[:, :, 4:], v[:, :, :2])


def test_custom_ops_opcheck_and_compile():
    H, KV, hd = 4, 2, 16
    qkv, cos, sin = inputs(H=H, KV=KV, hd=hd)
    torch.library.opcheck(torch.ops.zqkernels.rope_qkv.default, (qkv, cos, sin, H, KV, hd))
    keys, values = torch.zeros(2, KV, 9, hd, dtype=torch.bfloat16), torch.zeros(2, KV, 9, hd, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.zqkernels.rope_qkv_cache_.default,
                          (qkv, cos, sin, H, KV, hd, keys, values, torch.tensor(2)))
    torch.library.opcheck(torch.ops.zqkernels.rope_qkv_cache_advance_.default,
                          (qkv, cos, sin, H, KV, hd, keys, values, torch.tensor(2)))

    def g(x, c, s, kc, vc, off):
        q, _, _ = zqkernels.rope_qkv(x, c, s, H, KV, hd, k_cache=kc, v_cache=vc, cache_offset=off, advance=True)
        return q.float().sum(1)

    offs = (torch.tensor(1), torch.tensor(1))
    caches = [(keys.clone(), values.clone()) for _ in range(2)]
    ya = torch.compile(g, fullgraph=True)(qkv, cos, sin, *caches[0], offs[0])
    ye = g(qkv, cos, sin, *caches[1], offs[1])
    assert torch.equal(ya, ye) and int(offs[0]) == int(offs[1]) == 1 + qkv.shape[1]
    assert torch.equal(caches[0][0], caches[1][0]) and torch.equal(caches[0][1], caches[1][1])

    def f(x, c, s):
        q, k, v = zqkernels.rope_qkv(x, c, s, H, KV, hd)
        return q.float().sum(1), k, v

    for a, e in zip(torch.compile(f, fullgraph=True)(qkv, cos, sin), f(qkv, cos, sin)):
        assert torch.equal(a, e)


QKV, COS, SIN = inputs()
KC = torch.zeros(2, 2, 8, 16, dtype=torch.bfloat16)


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(qkv=QKV.float()), TypeError, r"rope_qkv: cos must have qkv's dtype float32, got bfloat16"),
        (dict(qkv=QKV[..., :-16]), ValueError, r"rope_qkv: qkv must be \[B, S, \(heads \+ 2 \* kv_heads\)"),
        (dict(qkv=QKV.int()), TypeError, r"rope_qkv: qkv must be bfloat16, float16 or float32, got int32"),
        (dict(cos=COS[:, :3]), ValueError, r"rope_qkv: cos must be \[B or 1, S, rotary dim\]"),
        (dict(cos=COS[..., :6], sin=SIN[..., :6].contiguous()), ValueError, r"cos and sin must have unit stride"),
        (dict(cos=COS[..., :5].contiguous(), sin=SIN[..., :5].contiguous()), ValueError, r"must be even"),
        (dict(heads=0), ValueError, r"rope_qkv: heads must be a positive int, got 0"),
        (dict(k_cache=KC), ValueError, r"k_cache, v_cache and cache_offset go together"),
        (dict(k_cache=KC, v_cache=KC.clone(), cache_offset=torch.tensor(1.0)), TypeError,
         r"cache_offset must be an int64 tensor"),
        (dict(k_cache=KC[:, :1], v_cache=KC[:, :1], cache_offset=torch.tensor(0)), ValueError,
         r"k_cache must be \[B, kv_heads, L, head_dim\]"),
        (dict(k_cache=KC.float(), v_cache=KC.float(), cache_offset=torch.tensor(0)), TypeError,
         r"k_cache must be a tensor of qkv's dtype"),
    ],
)
def test_bad_input(kw, exc, match):
    a = dict(qkv=QKV, cos=COS, sin=SIN, heads=4, kv_heads=2, head_dim=16)
    a.update(kw)
    cache = {k: a.pop(k) for k in ("k_cache", "v_cache", "cache_offset") if k in a}
    with pytest.raises(exc, match=match):
        zqkernels.rope_qkv(a["qkv"], a["cos"], a["sin"], a["heads"], a["kv_heads"], a["head_dim"], **cache)
