"""quantize_per_token / quantize_weight on CPU: reference dispatch, opcheck, argument checks (one
property at a time, each error naming the op and the argument)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import zqkernels
from conftest import X_DTYPES
from zqkernels.ops.quantize import WeightFormat, resolve_weight_format
from zqkernels.reference import quantize_per_token_ref, quantize_weight_ref

QUANT_OP = torch.ops.zqkernels.quantize_per_token.default
I8 = torch.int8


@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("M,K", [(1, 1), (3, 7), (17, 100), (64, 256)])
def test_quantize_cpu_is_reference(dtype, M, K):
    x = torch.randn(M, K).to(dtype)
    xq, sx = zqkernels.quantize_per_token(x)
    xq_ref, sx_ref = quantize_per_token_ref(x)
    assert torch.equal(xq, xq_ref) and torch.equal(sx, sx_ref)


def test_quantize_cpu_strided_rows():
    big = torch.randn(10, 48, dtype=torch.bfloat16)
    for x in (big[:, :40], big[::3], big[2:7, 8:]):
        xq, sx = zqkernels.quantize_per_token(x)
        xq_ref, sx_ref = quantize_per_token_ref(x.contiguous())
        assert torch.equal(xq, xq_ref) and torch.equal(sx, sx_ref)


def test_quantize_weight_returns_constants():
    lin = torch.nn.Linear(32, 16)
    wq, sw = zqkernels.quantize_weight(lin.weight)
    assert not sw.requires_grad and not wq.requires_grad
    assert all(torch.equal(a, b) for a, b in zip((wq, sw), quantize_weight_ref(lin.weight.detach())))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_opcheck_quantize_per_token(dtype):
    x = torch.randn(12, 40, dtype=dtype)
    torch.library.opcheck(QUANT_OP, (x,))
    torch.library.opcheck(QUANT_OP, (torch.randn(6, 64, dtype=dtype)[:, 8:48],))  # strided rows


QUANT_ERRORS = [
    (
        "int8",
        lambda: torch.zeros(4, 16, dtype=I8),
        TypeError,
        r"quantize_per_token: x must be bfloat16, float16 or float32 \[M, K\], got int8 \[4, 16\]",
    ),
    (
        "float64",
        lambda: torch.zeros(4, 16, dtype=torch.float64),
        TypeError,
        r"quantize_per_token: x must be bfloat16",
    ),
    (
        "rank3",
        lambda: torch.zeros(2, 4, 16),
        ValueError,
        r"quantize_per_token: x must be 2-D \[M, K\] \(flatten leading dims .*\), got float32 \[2, 4, 16\]",
    ),
    ("rank1", lambda: torch.zeros(16), ValueError, r"quantize_per_token: x must be 2-D"),
    (
        "col_stride",
        lambda: torch.zeros(16, 4).t(),
        ValueError,
        r"quantize_per_token: x must have unit stride along K \(x.stride\(1\) == 1\), got float32 \[4, 16\] "
        r"with strides \(1, 4\)",
    ),
    (
        "overlapping_rows",
        lambda: torch.zeros(1, 16).expand(4, 16),
        ValueError,
        r"quantize_per_token: rows of x must not overlap \(x.stride\(0\) >= K == 16\)",
    ),
]


@pytest.mark.parametrize("build,exc,match", [c[1:] for c in QUANT_ERRORS], ids=[c[0] for c in QUANT_ERRORS])
def test_quantize_per_token_bad_input(build, exc, match):
    with pytest.raises(exc, match=match):
        zqkernels.quantize_per_token(build())


def test_quantize_weight_bad_input():
    with pytest.raises(
        TypeError, match=r"quantize_weight: w must be a floating-point tensor \[N, K\], got int8"
    ):
        zqkernels.quantize_weight(torch.zeros(4, 4, dtype=I8))
    with pytest.raises(TypeError, match=r"quantize_weight: w must be a torch.Tensor"):
        zqkernels.quantize_weight([[1.0]])
    with pytest.raises(ValueError, match=r"quantize_weight: w must be 2-D \[N, K\]"):
        zqkernels.quantize_weight(torch.zeros(16))
    with pytest.raises(ValueError, match=r"quantize_weight: bits must be 8 or 4, got 2"):
        zqkernels.quantize_weight(torch.zeros(4, 4), bits=2)
    w = torch.randn(6, 8)
    w[2, 3] = float("nan")
    w[5, 0] = float("-inf")
    with pytest.raises(
        ValueError, match=r"quantize_weight: w has NaN/Inf values in 2 rows \(output channels \[2, 5\]\)"
    ):
        zqkernels.quantize_weight(w)




# ------------------------------------------------------------------------------------------------
# quantize_weight: one spelling per format (fmt= plus the options it takes), the old ones deprecated.

QW = zqkernels.quantize_weight
U8, I32, F8 = torch.uint8, torch.int32, torch.float8_e4m3fn

# (new spelling, (dtype, shape) of wq, sg dtype or None) for w [32, 128]
FORMATS = [
    (dict(fmt="int8"), (I8, (32, 128)), None),
    (dict(fmt="int8", scale="int", group_size=64), (I8, (32, 128)), I32),
    (dict(fmt="int8", scale="float", group_size=32), (I8, (32, 128)), torch.float32),
    (dict(fmt="int8", scale="int"), (I8, (32, 128)), I32),  # one group per row
    (dict(fmt="int8", scale="int", group_size=64, alpha=256), (I8, (32, 128)), I32),
    (dict(fmt="int4"), (I8, (32, 128)), None),  # INT4 values in an int8 container, per channel
    (dict(fmt="int4", scale="int", group_size=128), (U8, (32, 64)), I32),
    (dict(fmt="int4", scale="float", group_size=32), (U8, (32, 64)), torch.float32),
    (dict(fmt="int4", scale="int", alpha=64), (U8, (32, 64)), I32),
    (dict(fmt="fp8"), (F8, (32, 128)), None),
    (dict(fmt="fp4"), (U8, (32, 64)), torch.int8),
    (dict(fmt="fp4", scale="free", group_size=64), (U8, (32, 64)), torch.float32),
]


@pytest.mark.parametrize("kw,wq_kind,sg_dtype", FORMATS, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_quantize_weight_formats_new_spelling(kw, wq_kind, sg_dtype):
    w = torch.randn(32, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the current spelling never warns
        out = QW(w, **kw)
    assert (out[0].dtype, tuple(out[0].shape)) == wq_kind
    assert out[1].dtype == torch.float32 and out[1].shape == (32,)
    if sg_dtype is None:
        assert len(out) == 2
    else:
        g = kw.get("group_size") or 128
        assert len(out) == 3 and out[2].dtype == sg_dtype and out[2].shape == (32, 128 // g)
    deq = zqkernels.dequantize(*out, fmt=kw["fmt"])  # every format dequantizes back near w
    tol = {"int8": 0.02, "fp8": 0.05}.get(kw["fmt"], 0.2)
    assert float((deq - w).norm() / w.norm()) < tol


# (old spelling, the new one it means): the same tensors bit for bit, plus a DeprecationWarning
# that names the new spelling.
OLD_SPELLINGS = [
    (dict(bits=8), dict(fmt="int8"), "fmt='int8'"),
    (dict(bits=4), dict(fmt="int4"), "fmt='int4'"),
    (dict(bits=8, fmt="int8"), dict(fmt="int8"), "fmt='int8'"),
    (dict(bits=8, fmt="fp8"), dict(fmt="fp8"), "fmt='fp8'"),
    (dict(bits=4, fmt="fp4", group_size=64), dict(fmt="fp4", group_size=64), "fmt='fp4', scale='m2', group_size=64"),
    (dict(bits=4, group_size=64), dict(fmt="int4", scale="int", group_size=64), "fmt='int4', scale='int', group_size=64"),
    (dict(bits=4, scale="float", group_size=32), dict(fmt="int4", scale="float", group_size=32),
     "fmt='int4', scale='float', group_size=32"),
    (dict(bits=4, scale="int"), dict(fmt="int4", scale="int"), "fmt='int4', scale='int'"),
    (dict(bits=8, group_size=64, alpha=128), dict(fmt="int8", scale="int", group_size=64, alpha=128),
     "fmt='int8', scale='int', group_size=64, alpha=128"),
    (dict(bits=8, scale="float", group_size=32), dict(fmt="int8", scale="float", group_size=32),
     "fmt='int8', scale='float', group_size=32"),
    (dict(fmt="int4", group_size=128), dict(fmt="int4", scale="int", group_size=128),
     "fmt='int4', scale='int', group_size=128"),
    (dict(fmt="int8", group_size=32, alpha=64), dict(fmt="int8", scale="int", group_size=32, alpha=64),
     "fmt='int8', scale='int', group_size=32, alpha=64"),
]


@pytest.mark.parametrize("old,new,spelled", OLD_SPELLINGS, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_quantize_weight_old_spellings_warn_and_match(old, new, spelled):
    w = torch.randn(32, 128)
    want = QW(w, **new)
    old = dict(old)
    bits = old.pop("bits", None)
    for args, kw in (((), dict(old, bits=bits)), (((bits,), old) if bits is not None else ((), old))):
        with pytest.warns(DeprecationWarning, match=r"quantize_weight: .* is deprecated; name the format as "
                          rf"quantize_weight\(w, {re.escape(spelled)}\) \(same result\)") as rec:
            got = QW(w, *args, **kw)
        assert rec[0].filename == __file__  # the warning points at the caller
        assert len(got) == len(want) and all(torch.equal(a.view(torch.uint8), b.view(torch.uint8))
                                              for a, b in zip(got, want))


BAD_COMBINATIONS = [
    (dict(fmt="fp8", group_size=32), r"quantize_weight: fmt='fp8' takes no group_size, scale or alpha"),
    (dict(fmt="fp8", scale="int"), r"quantize_weight: fmt='fp8' takes no group_size, scale or alpha .*scale='int'"),
    (dict(fmt="fp8", alpha=64), r"quantize_weight: fmt='fp8' takes no group_size, scale or alpha .*alpha=64"),
    (dict(fmt="fp4", alpha=64), r"quantize_weight: alpha applies to integer group scales only .*got fmt='fp4'"),
    (dict(fmt="fp4", scale="int"), r"quantize_weight: scale must be one of \('free', 'm1', 'm2'\) \(fmt='fp4'\)"),
    (dict(fmt="int4", alpha=64), r"quantize_weight: alpha applies to integer group scales only \(fmt='int4' with "
                                 r"scale='int'; without scale the weight has one float scale per row\)"),
    (dict(fmt="int8", scale="float", alpha=64), r"quantize_weight: alpha applies to integer group scales only "
                                                r"\(scale='int'\), got scale='float' with alpha=64"),
    (dict(fmt="int8", scale="m2"), r"quantize_weight: scale must be one of \('int', 'float'\) \(fmt='int8'\)"),
    (dict(fmt="int4", scale="int", group_size=48), r"quantize_weight: group_size must be one of \(32, 64, 128, 256\)"),
    (dict(fmt="fp4", group_size=256), r"quantize_weight: group_size must be one of \(32, 64, 128\)"),
    (dict(fmt="int6"), r"quantize_weight: fmt must be one of \('int8', 'int4', 'fp8', 'fp4'\), got 'int6'"),
    (dict(fmt=4), r"quantize_weight: fmt must be one of .*got 4"),
    (dict(bits=4, fmt="fp8"), r"quantize_weight: bits=4 contradicts fmt='fp8' \(8 bits\); pass fmt alone"),
    (dict(bits=16), r"quantize_weight: bits must be 8 or 4, got 16 \(bits is deprecated: name the format with fmt="),
    (dict(bits=True), r"quantize_weight: bits must be 8 or 4, got True"),
]


@pytest.mark.parametrize("kw,match", BAD_COMBINATIONS, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_quantize_weight_bad_combinations(kw, match):
    with pytest.raises(ValueError, match=match):
        QW(torch.randn(32, 128), **kw)


def test_resolve_weight_format():
    r = resolve_weight_format
    assert r("op", 32, 128) == WeightFormat("int8", None, None, None)
    assert r("op", 32, 128, fmt="int4") == WeightFormat("int4", None, None, None)
    assert r("op", 32, 128, fmt="int4", scale="int") == WeightFormat("int4", 128, "int", None)  # g = K
    assert r("op", 32, 128, fmt="int8", scale="float", group_size=32) == WeightFormat("int8", 32, "float", None)
    assert r("op", 32, 128, fmt="fp4") == WeightFormat("fp4", 128, "m2", None)
    assert r("op", 32, 128, fmt="fp8") == WeightFormat("fp8", None, None, None)
    with pytest.warns(DeprecationWarning, match=r"gptq: bits=4 and group_size without scale is deprecated"):
        assert r("gptq", 32, 128, bits=4, group_size=64) == WeightFormat("int4", 64, "int", None)
    with pytest.raises(ValueError, match=r"gptq: fmt='fp8' takes no group_size"):
        r("gptq", 32, 128, fmt="fp8", group_size=32)
