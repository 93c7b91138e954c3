"""QLinear on the GPU: accuracy, CPU agreement, CUDA graphs, torch.compile, padded heads."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import (
    DEV,
    OUT_DTYPES,
    assert_gemm_close,
    rel_err,
    requires_gpu,
)
from torch import nn
from zqkernels import QLinear, _ext

pytestmark = requires_gpu

C = _ext._C


def gaussian_qlinear(k=1024, n=512, dtype=torch.bfloat16) -> tuple[nn.Linear, QLinear]:
    lin = nn.Linear(k, n, device=DEV, dtype=dtype)
    with torch.no_grad():
        lin.weight.normal_(0, k**-0.5)
        lin.bias.normal_(0, 0.5)
    return lin, QLinear.from_linear(lin)


@pytest.mark.parametrize("M", [1, 16, 200])
def test_cuda_graph_capture_and_replay(M):
    _, q = gaussian_qlinear()
    static_x = torch.randn(M, 1024, device=DEV, dtype=torch.bfloat16)
    with torch.inference_mode():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm up outside the capture, as torch's docs advise
            for _ in range(2):
                q(static_x)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_y = q(static_x)
        for _ in range(3):
            new_x = torch.randn_like(static_x)
            static_x.copy_(new_x)
            g.replay()
            torch.cuda.synchronize()
            assert torch.equal(static_y, q(new_x))  # integer accumulation: bit-identical


def test_compile_inductor_cuda():
    torch._dynamo.reset()
    _, q = gaussian_qlinear()
    x = torch.randn(3, 7, 1024, device=DEV, dtype=torch.bfloat16)
    with torch.inference_mode():
        compiled = torch.compile(q, fullgraph=True)
        assert torch.equal(compiled(x), q(x))


# ------------------------------------------------------------------------------------------------
# QLinear on the GPU.


@pytest.mark.parametrize("dtype", OUT_DTYPES)
def test_qlinear_gpu_accuracy_and_cpu_agreement(dtype):
    lin, q = gaussian_qlinear(dtype=dtype)
    x = torch.randn(4, 33, 1024, device=DEV, dtype=dtype)
    with torch.no_grad():
        y = q(x)
        ref = nn.functional.linear(x.double(), lin.weight.double(), lin.bias.double())
        assert rel_err(y, ref) < 0.02
        # the same module on the CPU runs the reference: equal quantization, one-ulp GEMM
        y_cpu = q.to("cpu")(x.cpu())
    assert q.weight_scale.dtype == torch.float32
    assert_gemm_close(y.reshape(-1, 512).cpu(), y_cpu.reshape(-1, 512), "QLinear cuda vs cpu")


@pytest.mark.parametrize("n", [3, 50257])
def test_qlinear_unaligned_out_features_on_gpu(n):
    """A vocabulary-sized head with out_features % 8 != 0 runs on the kernels via padded rows."""
    torch.manual_seed(0)
    lin = nn.Linear(256, n, dtype=torch.bfloat16, device=DEV)
    q = QLinear.from_linear(lin)
    x = torch.randn(3, 7, 256, dtype=torch.bfloat16, device=DEV)
    with torch.no_grad():
        y = q(x)
        y_cpu = q.cpu()(x.cpu())
    assert y.shape == (3, 7, n) and y.is_contiguous()
    torch.testing.assert_close(
        y.cpu().float(), y_cpu.float(), rtol=2**-7, atol=1e-3 * y_cpu.abs().max().item()
    )




def test_qlinear_fp32_model_on_gpu():
    lin = nn.Linear(256, 72, device=DEV)
    q = QLinear.from_linear(lin)
    x = torch.randn(5, 256, device=DEV)
    with torch.no_grad():
        y = q(x)
        ref = lin(x.double().float())
        y_cpu = q.cpu()(x.cpu())
    assert y.dtype == torch.float32 and rel_err(y, ref) < 0.02
    assert_gemm_close(y.cpu(), y_cpu, "fp32 QLinear cuda vs cpu")


def test_qlinear_eager_scratch_reuse_across_layers_sizes_and_streams():
    """Eager QLinear keeps xq / sx in per-stream scratch (ops/_common.scratch_ptr): layers of
    different shapes, growing M and a second stream must each give the result of the checked
    path, computed here from the public ops."""
    torch.manual_seed(0)
    layers = [QLinear.from_linear(nn.Linear(k, n, device=DEV, dtype=torch.bfloat16)) for k, n in
              ((256, 512), (512, 264), (1024, 4096))]

    def reference(q, x):
        xq, sx = zqkernels.quantize_per_token(x.reshape(-1, x.shape[-1]).contiguous())
        return zqkernels.int8_gemm(xq, q.weight_q, sx, q.weight_scale, q.bias)[:, : q.out_features]

    side = torch.cuda.Stream()
    with torch.inference_mode():
        for M in (1, 7, 64, 300, 2, 4096):
            for q in layers:
                x = torch.randn(M, q.in_features, device=DEV, dtype=torch.bfloat16)
                assert torch.equal(q(x), reference(q, x)), (M, q)
            with torch.cuda.stream(side):
                x = torch.randn(M, 256, device=DEV, dtype=torch.bfloat16)
                y = layers[0](x)
                r = reference(layers[0], x)
            torch.cuda.current_stream().wait_stream(side)
            assert torch.equal(y, r)


def test_torch_export_on_gpu():
    q = QLinear.from_linear(nn.Linear(256, 72, device=DEV, dtype=torch.bfloat16))
    x = torch.randn(3, 5, 256, device=DEV, dtype=torch.bfloat16)
    with torch.no_grad():
        ep = torch.export.export(q, (x,))
        assert torch.equal(ep.module()(x), q(x))
