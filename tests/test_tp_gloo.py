"""Tensor parallelism across processes (torch.distributed, gloo backend, CPU reference kernels): a
quantized MLP split colwise (up) then rowwise (down) over 2 and 4 processes gives, on every rank, the
sum of its parts computed in one process (up to the all-reduce's float32 summation order) and the
unsplit MLP up to activation rounding; a gathered colwise layer gives the unsplit layer exactly."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist

SCHEMES = ("w8a8", "fp8", "w4a8", "w4a8-fp")
TOL = {"w8a8": 0.02, "w4a8": 0.02, "fp8": 0.05, "w4a8-fp": 0.05}


def _mlp(scheme):
    from zqkernels.nn import QLinear

    torch.manual_seed(0)
    up, down = torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 512)
    return QLinear.from_linear(up, scheme).eval(), QLinear.from_linear(down, scheme).eval()


def _worker(rank: int, world: int, init: str) -> None:
    from zqkernels.nn.tp import parallelize_qlinear, shard_qlinear

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(1)
        x = torch.randn(6, 512)
        act = torch.nn.functional.silu
        for scheme in SCHEMES:
            up, down = _mlp(scheme)
            tp_up = parallelize_qlinear(up, "colwise")
            tp_down = parallelize_qlinear(down, "rowwise", input_is_parallel=True)
            with torch.no_grad():
                y = tp_down(act(tp_up(x)))
                parts = sum(shard_qlinear(down, "rowwise", r, world)(act(shard_qlinear(up, "colwise", r, world)(x))).float()
                            for r in range(world))  # fmt: skip
                ref = down(act(up(x))).float()
            torch.testing.assert_close(y.float(), parts, rtol=1e-5, atol=1e-5, msg=lambda m: f"{scheme} rank {rank}: {m}")
            assert float((y.float() - ref).norm() / ref.norm()) < TOL[scheme], scheme
            gathered = parallelize_qlinear(up, "colwise", gather_output=True)
            with torch.no_grad():
                assert torch.equal(gathered(x), up(x)), scheme
            full_in = parallelize_qlinear(down, "rowwise")  # slices the whole input itself
            with torch.no_grad():
                h = act(up(x))
                torch.testing.assert_close(full_in(h), tp_down(act(tp_up(x))), rtol=1e-5, atol=1e-5)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo")
@pytest.mark.parametrize("world", [2, 4])
def test_mlp_across_processes(world):
    with tempfile.TemporaryDirectory() as d:
        init = "file://" + os.path.join(d, "rendezvous")
        torch.multiprocessing.spawn(_worker, args=(world, init), nprocs=world, join=True)


def test_needs_an_initialised_process_group():
    from zqkernels.nn import QLinear
    from zqkernels.nn.tp import parallelize_qlinear

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        parallelize_qlinear(QLinear.from_linear(torch.nn.Linear(64, 64)), "colwise")
