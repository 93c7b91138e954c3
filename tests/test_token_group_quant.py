"""Per-token-group FP8 E4M3 quantization (DeepSeek-V3 / Qwen3-FP8 block-scaled activations):
``quantize_per_token_group``, the fused row ops' ``group_size=`` output and their reference
(``zqkernels.reference.token_group``).

CPU: the reference against an independent float64 formulation (its own E4M3 rounding from frexp,
no torch float8 cast, no zqkernels code) bit for bit, zero / saturating / subnormal / tiny / NaN
groups, the M-major scale layout, every fused op's group output against the group quantization of
its unfused row output, opcheck, torch.compile and argument errors.
GPU (skipped without a GPU and CUDA kernels): the kernel against the reference bit for bit (plain
quantization), the fused kernels' group output against their own per-token output and the
reference, the padding rows, CUDA graphs, torch.compile and opcheck on CUDA tensors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import zqkernels
from conftest import poison_next_allocation, requires_gpu
from zqkernels.reference import quantize_per_token_group_ref, row_quant_group_ref
from zqkernels.reference.fused import row_output_ref
from zqkernels.reference.token_group import quantize_groups_ref, scale_rows_padded

F8 = torch.float8_e4m3fn
X_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


# ------------------------------------------------------------------------------------------------
# An independent formulation in float64.


def e4m3_grid(v: torch.Tensor) -> torch.Tensor:
    """float64 values -> the nearest E4M3 value (ties to even), saturated to +-448, as float64.
    E4M3: 3 mantissa bits, normal exponents -6..8, subnormal step 2^-9."""
    a = v.abs()
    _, ex = torch.frexp(a)  # a = m * 2^ex, m in [0.5, 1): floor(log2 a) = ex - 1 (exact)
    e = torch.clamp(ex - 1, min=-6).to(torch.float64)
    ulp = torch.pow(2.0, e - 3)
    r = torch.round(a / ulp) * ulp  # a / ulp exact (power of two); torch.round: half to even
    return torch.sign(v) * r.clamp(max=448.0)


def group_quant_f64(x: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes as float64 [M, K], scales float32 [M, K // g]) from the definition: fp32 division
    results computed in float64 and rounded once to fp32 (exact: float64 has > 2 * 24 + 2 bits),
    the fp32 product likewise, then rounded to E4M3."""
    M, K = x.shape
    G = K // g
    v = x.double().reshape(M, G, g)
    amax = v.abs().amax(dim=2)  # exact
    s = (amax / 448.0).float()
    pre = torch.where(amax < 2.0**-64, torch.full_like(amax, 2.0**64), torch.ones_like(amax))
    inv = (448.0 / (amax * pre)).float().double()
    inv = torch.where(amax == 0, torch.zeros_like(inv), inv)
    prod = ((v * pre[..., None]) * inv[..., None]).float().double()
    return e4m3_grid(prod).reshape(M, K), s


def assert_m_major(s: torch.Tensor, M: int, G: int) -> None:
    Mp = scale_rows_padded(M)
    assert s.dtype == torch.float32 and tuple(s.shape) == (M, G)
    if M > 0 and G > 0:
        assert s.stride() == (1, Mp), s.stride()
        assert s.untyped_storage().nbytes() >= G * Mp * 4
        buf = s.as_strided((G, Mp), (Mp, 1))  # the storage as the GEMM reads it
        assert not buf[:, M:].cpu().any(), "padding rows must be 0"


def awkward(M: int, K: int, dtype: torch.dtype, g: int) -> torch.Tensor:
    """Groups of widely different magnitudes, outliers, a zero group, a tiny group."""
    G = K // g
    span = 2.0 if dtype == torch.float16 else 4.0  # fp16 overflows at 65504
    mag = torch.pow(10.0, torch.empty(M, G).uniform_(-span, span)).repeat_interleave(g, dim=1)
    x = torch.randn(M, K) * mag
    x[0, 3] = 30.0 * mag[0, 3]
    if M > 2 and G > 1:
        x[2, g : 2 * g] = 0
    if M > 1:
        x[1, :g] = torch.randn(g) * 1e-30  # fp32 only; bf16 keeps it, fp16 flushes to 0
    return x.to(dtype)


# ------------------------------------------------------------------------------------------------
# CPU: the reference.


@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("M", [1, 3, 17, 130])
@pytest.mark.parametrize("K", [128, 384, 4096])
def test_reference_matches_float64_definition(dtype, M, K):
    for g in (128, 64, 32) if K == 384 else (128,):
        x = awkward(M, K, dtype, g)
        q, s = quantize_per_token_group_ref(x, g)
        q_def, s_def = group_quant_f64(x, g)
        assert q.dtype == F8 and q.is_contiguous() and tuple(q.shape) == (M, K)
        assert_m_major(s, M, K // g)
        assert torch.equal(s, s_def), f"scales differ: g={g}"
        assert torch.equal(q.double(), q_def), f"codes differ: g={g}"


def test_reference_is_per_token_fp8_per_group():
    """Group quantization of x == per-token FP8 quantization of x's groups as rows."""
    x = torch.randn(5, 512, dtype=torch.bfloat16) * 7
    q, s = quantize_per_token_group_ref(x, 128)
    q_rows, s_rows = zqkernels.quantize_per_token(x.reshape(20, 128), dtype=F8)
    assert torch.equal(q.view(torch.uint8), q_rows.reshape(5, 512).view(torch.uint8))
    assert torch.equal(s, s_rows.reshape(5, 4))


def test_zero_groups_saturation_and_subnormals():
    g = 128
    x = torch.randn(4, 4 * g)
    x[0, :g] = 0  # zero group: s = 0, q = 0 (never NaN)
    x[1, g : 2 * g] = torch.linspace(-1, 1, g) * 1e-4
    x[1, g + 5] = 1.0  # one big value: the rest lands in E4M3 subnormals (< 2^-6 after scaling)
    x[2, 2 * g : 3 * g] = torch.randn(g) * 1e-40  # fp32 subnormals: amax < 2^-64, prescaled
    x[3, 3 * g] = -5.0e4  # a large negative maximum maps to -448 exactly
    q, s = quantize_per_token_group_ref(x, g)
    qf = q.float().reshape(4, 4, g)
    assert float(s[0, 0]) == 0 and not qf[0, 0].any()
    nonzero = s > 0
    assert torch.equal(qf.abs().amax(dim=2)[nonzero], torch.full_like(s[nonzero], 448.0))  # every group's max hits 448
    assert float(qf[3, 3, 0]) == -448.0
    sub = qf[1, 1].abs()
    assert bool(((sub > 0) & (sub < 2.0**-6)).any()), "expected E4M3 subnormal codes"
    assert float(s[2, 2]) > 0 and qf[2, 2].abs().max() == 448.0
    q_def, s_def = group_quant_f64(x, g)
    assert torch.equal(s, s_def) and torch.equal(q.double(), q_def)


def test_nan_and_inf_groups_are_visible_and_contained():
    g = 64
    x = torch.randn(2, 3 * g)
    x[0, 5] = float("nan")
    x[1, g + 1] = float("inf")
    q, s = quantize_per_token_group_ref(x, g)
    assert torch.isnan(s[0, 0]) and torch.isinf(s[1, 1])
    clean = torch.ones_like(s, dtype=torch.bool)
    clean[0, 0] = clean[1, 1] = False
    assert torch.isfinite(s[clean]).all()
    # the reference writes 0 codes in a non-finite group (the kernel's are unspecified) ...
    assert not q.float()[0, :g].any() and not q.float()[1, g : 2 * g].any()
    # ... and the other groups of those rows are quantized as if the bad group were not there
    xc = x.clone()
    xc[0, :g] = 1.0
    xc[1, g : 2 * g] = 1.0
    qc, sc = quantize_per_token_group_ref(xc, g)
    assert torch.equal(s[clean], sc[clean])
    keep = clean.repeat_interleave(g, dim=1)
    assert torch.equal(q.view(torch.uint8)[keep], qc.view(torch.uint8)[keep])


@pytest.mark.parametrize("M", [0, 1, 4, 5, 130])
def test_m_major_layout(M):
    x = torch.randn(M, 256)
    q, s = zqkernels.quantize_per_token_group(x, 64)
    assert_m_major(s, M, 4)
    if M:
        assert torch.equal(s.contiguous(), quantize_per_token_group_ref(x, 64)[1].contiguous())
    q, s = zqkernels.quantize_per_token_group(torch.randn(3, 0), 128)  # K == 0: no groups
    assert tuple(q.shape) == (3, 0) and tuple(s.shape) == (3, 0)


# ------------------------------------------------------------------------------------------------
# CPU: the fused ops' group output.

FUSED = [  # (name, call(x, res, w, b, **kw), op, kwargs of row_output_ref)
    ("rmsnorm_quant", lambda x, r, w, b, **k: zqkernels.rmsnorm_quant(x, w, 1e-6, **k), "rmsnorm",
     dict(w=True, eps=1e-6)),
    ("layernorm_quant", lambda x, r, w, b, **k: zqkernels.layernorm_quant(x, w, b, 1e-5, **k), "layernorm",
     dict(w=True, b=True, eps=1e-5)),
    ("add_rmsnorm_quant", lambda x, r, w, b, **k: zqkernels.add_rmsnorm_quant(x, r, w, 1e-6, **k), "rmsnorm",
     dict(r=True, w=True, eps=1e-6, mode="sum")),
    ("add_layernorm_quant sum", lambda x, r, w, b, **k: zqkernels.add_layernorm_quant(x, r, w, b, 1e-5, **k),
     "layernorm", dict(r=True, w=True, b=True, eps=1e-5, mode="sum")),
    ("add_layernorm_quant normed",
     lambda x, r, w, b, **k: zqkernels.add_layernorm_quant(x, r, w, b, 1e-5, residual_out="normed", **k),
     "layernorm", dict(r=True, w=True, b=True, eps=1e-5, mode="normed")),
    ("bias_gelu_quant", lambda x, r, w, b, **k: zqkernels.bias_gelu_quant(x, b, **k), "gelu", dict(b=True)),
    ("bias_gelu_quant tanh", lambda x, r, w, b, **k: zqkernels.bias_gelu_quant(x, b, "tanh", **k), "gelu_tanh",
     dict(b=True)),
    ("silu_mul_quant", lambda x, r, w, b, **k: zqkernels.silu_mul_quant(x, **k), "silu_mul", dict()),
    ("gelu_mul_quant", lambda x, r, w, b, **k: zqkernels.gelu_mul_quant(x, **k), "gelu_tanh_mul", dict()),
    ("row_quant identity", lambda x, r, w, b, **k: zqkernels.ops.fused.row_quant("q", "identity", x, **k)[:2],
     "identity", dict()),
]


def fused_inputs(M, K, dtype, device="cpu"):
    x = (torch.randn(M, K) * 3).to(dtype).to(device)
    x[0, :128] *= 50  # an outlier group
    r = torch.randn(M, K).to(dtype).to(device)
    w = (torch.rand(K) + 0.5).to(device)
    b = (torch.randn(K) * 0.1).to(device)
    return x, r, w, b


def ref_row(op, kw, x, r, w, b):
    return row_output_ref(op, x, r if kw.get("r") else None, w if kw.get("w") else None,
                          b if kw.get("b") else None, kw.get("eps", 0.0), kw.get("mode", "none"))


@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("g", [128, 64])
@pytest.mark.parametrize("name, call, op, kw", FUSED, ids=[f[0] for f in FUSED])
def test_fused_group_output_is_group_quant_of_the_row(dtype, g, name, call, op, kw):
    M, K = 7, 768
    x, r, w, b = fused_inputs(M, K, dtype)
    if op in ("silu_mul", "gelu_tanh_mul"):
        x = torch.cat([x, r], 1)
    out = call(x, r.clone(), w, b, dtype=F8, group_size=g)
    q, s = out[0], out[1]
    y, r_ref = ref_row(op, kw, x, r, w, b)
    q_ref, s_ref = quantize_per_token_group_ref(y, g)  # y is fp32: no rounding before the groups
    assert_m_major(s, M, K // g)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)), name
    assert torch.equal(s, s_ref), name
    if r_ref is not None:
        assert torch.equal(out[2], r_ref), name
    # the per-token output of the same op: its scale is the largest group scale of the row
    out_row = call(x, r.clone(), w, b, dtype=F8)
    assert torch.equal(out_row[1], s.amax(dim=1)), name


@pytest.mark.parametrize("op", ["rmsnorm", "layernorm", "silu_mul", "gelu"])
def test_fused_group_output_close_to_torch_sequence(op):
    """Against torch's own F.rms_norm / F.layer_norm / F.silu / F.gelu, then the group quantizer:
    scales to ~1e-6 relative, codes one E4M3 step apart at most, and rarely."""
    M, K, g = 9, 1024, 128
    x, r, w, b = fused_inputs(M, K, torch.bfloat16)
    if op == "rmsnorm":
        q, s = zqkernels.rmsnorm_quant(x, w, 1e-6, dtype=F8, group_size=g)
        y = F.rms_norm(x.float(), (K,), w, 1e-6)
    elif op == "layernorm":
        q, s = zqkernels.layernorm_quant(x, w, b, 1e-5, dtype=F8, group_size=g)
        y = F.layer_norm(x.float(), (K,), w, b, 1e-5)
    elif op == "silu_mul":
        q, s = zqkernels.silu_mul_quant(torch.cat([x, r], 1), dtype=F8, group_size=g)
        y = (F.silu(x.float()) * r.float()).to(torch.bfloat16)
    else:
        q, s = zqkernels.bias_gelu_quant(x, b, dtype=F8, group_size=g)
        y = F.gelu(x.float() + b).to(torch.bfloat16)
    q_ref, s_ref = quantize_per_token_group_ref(y, g)
    torch.testing.assert_close(s, s_ref, rtol=2e-5, atol=0)
    a, e = q.double(), q_ref.double()
    step = torch.pow(2.0, torch.clamp(torch.frexp(torch.maximum(a.abs(), e.abs()))[1] - 1, min=-6) - 3)
    d = (a - e).abs()
    assert bool((d <= step).all()), "codes differ by more than one E4M3 step"
    assert float((d > 0).double().mean()) < 0.01


def test_group_size_none_is_the_per_token_path():
    x, r, w, b = fused_inputs(5, 256, torch.bfloat16)
    for dt in (torch.int8, F8):
        q1, s1 = zqkernels.rmsnorm_quant(x, w, dtype=dt)
        q2, s2 = zqkernels.rmsnorm_quant(x, w, dtype=dt, group_size=None)
        assert s1.shape == (5,) and torch.equal(s1, s2) and torch.equal(q1.view(torch.uint8), q2.view(torch.uint8))


def test_inplace_residual_with_groups():
    x, r, w, b = fused_inputs(6, 512, torch.float16)
    r2 = r.clone()
    q, s, out = zqkernels.add_rmsnorm_quant(x, r2, w, inplace=True, dtype=F8, group_size=128)
    assert out is r2 and torch.equal(r2, (x.float() + r.float()).to(torch.float16))
    assert_m_major(s, 6, 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_opcheck_cpu(dtype):
    x, r, w, b = fused_inputs(5, 256, dtype)
    torch.library.opcheck(torch.ops.zqkernels.quantize_per_token_group.default, (x,))
    torch.library.opcheck(torch.ops.zqkernels.quantize_per_token_group.default, (x, 64, F8))
    op = torch.ops.zqkernels.row_quant.default
    torch.library.opcheck(op, (1, x, None, w, None, 1e-6, 0, F8, 128))
    torch.library.opcheck(op, (2, x, r, w, b, 1e-5, 2, F8, 64))
    torch.library.opcheck(op, (5, torch.cat([x, r], 1), None, None, None, 0.0, 0, F8, 32))
    torch.library.opcheck(torch.ops.zqkernels.row_quant_.default, (1, x, r.clone(), w, None, 1e-6, 1, F8, 128))


def test_compile_matches_eager_cpu():
    x, r, w, b = fused_inputs(6, 256, torch.bfloat16)

    def f(x, r):
        q1, s1, h = zqkernels.add_rmsnorm_quant(x, r, w, dtype=F8, group_size=128)
        q2, s2 = zqkernels.quantize_per_token_group(h, 64)
        return q1.view(torch.uint8), s1, h, q2.view(torch.uint8), s2

    for a, e in zip(torch.compile(f, fullgraph=True)(x, r), f(x, r)):
        assert a.stride() == e.stride() and torch.equal(a, e)


X = torch.randn(4, 256, dtype=torch.bfloat16)
W = torch.ones(256)
QG = zqkernels.quantize_per_token_group


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: QG(X, 100), ValueError, r"quantize_per_token_group: group_size must be one of \(32, 64, 128\), got 100"),
        (lambda: QG(X, True), ValueError, r"group_size must be one of"),
        (lambda: QG(X, 128.0), ValueError, r"group_size must be one of"),
        (lambda: QG(X[:, :192], 128), ValueError, r"group_size 128 must divide K == 192"),
        (lambda: QG(X, 128, torch.int8), TypeError, r"dtype must be torch.float8_e4m3fn"),
        (lambda: QG(X[0], 128), ValueError, r"x must be 2-D"),
        (lambda: QG(X.int(), 128), TypeError, r"x must be bfloat16, float16 or float32"),
        (lambda: QG(X.t(), 32), ValueError, r"unit stride along K"),
        (lambda: QG([[1.0]], 128), TypeError, r"x must be a torch.Tensor"),
        (lambda: quantize_per_token_group_ref(X, 48), ValueError, r"quantize_per_token_group_ref: group_size must"),
        (lambda: quantize_per_token_group_ref(X[:, :96], 64), ValueError, r"group_size 64 must divide K == 96"),
        (lambda: quantize_per_token_group_ref(X[0], 128), ValueError, r"quantize_per_token_group_ref: x must be 2-D"),
        (lambda: quantize_per_token_group_ref(X.int(), 128), TypeError, r"x must be a bfloat16"),
        (lambda: quantize_per_token_group_ref(X, 128, torch.int8), TypeError, r"FP8 E4M3 only"),
        (lambda: zqkernels.rmsnorm_quant(X, W, group_size=128), TypeError,
         r"rmsnorm_quant: group_size=128 \(per-token-group scales\) needs dtype=torch.float8_e4m3fn"),
        (lambda: zqkernels.rmsnorm_quant(X, W, dtype=F8, group_size=0), ValueError,
         r"rmsnorm_quant: group_size must be None \(a scale per token\) or one of"),
        (lambda: zqkernels.layernorm_quant(X[:, :96], W[:96], dtype=F8, group_size=64), ValueError,
         r"layernorm_quant: group_size 64 must divide the output width K == 96"),
        (lambda: zqkernels.silu_mul_quant(X, dtype=F8, group_size=256), ValueError, r"silu_mul_quant: group_size"),
        (lambda: zqkernels.silu_mul_quant(X[:, :192], dtype=F8, group_size=64), ValueError,
         r"silu_mul_quant: group_size 64 must divide the output width K == 96"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------------------
# GPU: the kernel.

DEV = "cuda"


def gpu_ref_check(x, g, what=""):
    poison_next_allocation(x.shape[0] * x.shape[1], 0x7F)
    q, s = zqkernels.quantize_per_token_group(x, g)
    q_ref, s_ref = quantize_per_token_group_ref(x.cpu(), g)
    assert_m_major(s, *s_ref.shape)
    assert torch.equal(s.cpu(), s_ref), f"{what}: scales"
    assert torch.equal(q.cpu().view(torch.uint8), q_ref.view(torch.uint8)), f"{what}: codes"


@requires_gpu
@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("M", [1, 3, 17, 130])
@pytest.mark.parametrize("K", [128, 384, 4096, 7168, 40960])
def test_kernel_matches_reference(dtype, M, K):
    """Every launch shape: warp rows (K <= 2048 bf16), CTA rows, the streaming path (40960)."""
    for g in (128, 64, 32) if K in (384, 7168) else (128,):
        gpu_ref_check(awkward(M, K, dtype, g).to(DEV), g, f"{dtype} M={M} K={K} g={g}")


@requires_gpu
@pytest.mark.parametrize("dtype", X_DTYPES)
def test_kernel_strided_and_unaligned_rows(dtype):
    base = torch.randn(33, 4096 + 136, dtype=dtype, device=DEV)
    gpu_ref_check(base[:, 8 : 8 + 4096], 128, "strided rows")
    gpu_ref_check(base[:, 1 : 1 + 4096], 128, "unaligned rows (element path)")
    # a fused op on the element path: its largest group scale is its per-token scale
    x, w = base[:, 1 : 1 + 4096], torch.rand(4096, device=DEV) + 0.5
    q, s = zqkernels.rmsnorm_quant(x, w, dtype=F8, group_size=128)
    q_row, s_row = zqkernels.rmsnorm_quant(x, w, dtype=F8)
    assert_m_major(s, 33, 32)
    assert torch.equal(s.amax(dim=1), s_row)
    q_ref, s_ref, _ = row_quant_group_ref("rmsnorm", x.cpu(), None, w.cpu(), None, 1e-6, group_size=128)
    torch.testing.assert_close(s.cpu(), s_ref.contiguous(), rtol=2e-5, atol=0)


@requires_gpu
def test_kernel_zero_tiny_nan_groups():
    g = 128
    x = torch.randn(5, 8 * g, device=DEV)
    x[0, :g] = 0
    x[1, g : 2 * g] *= 1e-40
    x[2, 2 * g + 3] = float("nan")
    x[3, 3 * g + 3] = float("inf")
    q, s = zqkernels.quantize_per_token_group(x, g)
    q_ref, s_ref = quantize_per_token_group_ref(x.cpu(), g)
    s = s.cpu()
    assert torch.isnan(s[2, 2]) and torch.isinf(s[3, 3])
    finite = torch.isfinite(s_ref)
    assert torch.equal(s[finite], s_ref[finite])
    keep = finite.repeat_interleave(g, dim=1)
    assert torch.equal(q.cpu().view(torch.uint8)[keep], q_ref.view(torch.uint8)[keep])


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("K", [768, 4096, 7168, 40960])
@pytest.mark.parametrize("name, call, op, kw", FUSED, ids=[f[0] for f in FUSED])
def test_fused_kernel_group_output(dtype, K, name, call, op, kw):
    """Exact where the math allows: the group kernel's scales / codes against the per-token FP8
    kernel of the same op (same launch shape, same statistics: the row's largest group scale is the
    row scale, and that group's codes are the row's); against the reference to the statistics'
    summation order (scales ~1e-6, codes one E4M3 step)."""
    M, g = 37, 128
    x, r, w, b = fused_inputs(M, K, dtype, DEV)
    if op in ("silu_mul", "gelu_tanh_mul"):
        x = torch.cat([x, r], 1)
    poison_next_allocation(M * K, 0x7F)
    out = call(x, r.clone(), w, b, dtype=F8, group_size=g)
    out_row = call(x, r.clone(), w, b, dtype=F8)
    q, s = out[0].cpu(), out[1]
    assert_m_major(s, M, K // g)
    s = s.cpu()
    assert torch.equal(s.amax(dim=1), out_row[1].cpu()), name
    top = s.argmax(dim=1)
    qr = out_row[0].cpu().view(torch.uint8).reshape(M, K // g, g)
    qg = q.view(torch.uint8).reshape(M, K // g, g)
    rows = torch.arange(M)
    assert torch.equal(qg[rows, top], qr[rows, top]), name
    if len(out) > 2:
        assert torch.equal(out[2].cpu(), out_row[2].cpu()), name
    y, _ = ref_row(op, kw, *(t.cpu() for t in (x, r, w, b)))
    q_ref, s_ref = quantize_groups_ref(y, g)
    torch.testing.assert_close(s, s_ref.contiguous(), rtol=2e-5, atol=0)
    a, e = q.double(), q_ref.double()
    step = torch.pow(2.0, torch.clamp(torch.frexp(torch.maximum(a.abs(), e.abs()))[1] - 1, min=-6) - 3)
    assert bool(((a - e).abs() <= step).all()), name


@requires_gpu
def test_fused_kernel_matches_reference_exactly_for_identity():
    x = torch.randn(19, 4096, dtype=torch.bfloat16, device=DEV) * 5
    q, s, _ = zqkernels.ops.fused.row_quant("q", "identity", x, dtype=F8, group_size=128)
    q_ref, s_ref = quantize_per_token_group_ref(x.cpu(), 128)
    assert torch.equal(s.cpu(), s_ref) and torch.equal(q.cpu().view(torch.uint8), q_ref.view(torch.uint8))


@requires_gpu
def test_graph_and_compile_equal_eager_gpu():
    x, r, w, b = fused_inputs(16, 4096, torch.bfloat16, DEV)

    def f(x, r):
        q1, s1, h = zqkernels.add_rmsnorm_quant(x, r, w, dtype=F8, group_size=128)
        q2, s2 = zqkernels.silu_mul_quant(torch.cat([h, x], 1), dtype=F8, group_size=128)
        q3, s3 = zqkernels.quantize_per_token_group(h, 128)
        return q1.view(torch.uint8), s1, h, q2.view(torch.uint8), s2, q3.view(torch.uint8), s3

    eager = f(x, r)
    compiled = torch.compile(f, fullgraph=True)(x, r)
    for a, e in zip(compiled, eager):
        assert a.stride() == e.stride() and torch.equal(a, e)
    f(x, r)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        captured = f(x, r)
    g.replay()
    torch.cuda.synchronize()
    for a, e in zip(captured, eager):
        assert a.stride() == e.stride() and torch.equal(a, e)


@requires_gpu
def test_opcheck_gpu():
    x, r, w, b = fused_inputs(5, 256, torch.bfloat16, DEV)
    torch.library.opcheck(torch.ops.zqkernels.quantize_per_token_group.default, (x, 128, F8))
    torch.library.opcheck(torch.ops.zqkernels.row_quant.default, (2, x, r, w, b, 1e-5, 2, F8, 64))
    torch.library.opcheck(torch.ops.zqkernels.row_quant_.default, (1, x, r.clone(), w, None, 1e-6, 1, F8, 128))
