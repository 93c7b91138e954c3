"""zqkernels.info(), ``python -m zqkernels`` (in process) and the demo."""

from __future__ import annotations

import json
import os

import pytest
import zqkernels
from conftest import HAVE_CUDA, HAVE_KERNELS
from zqkernels import _demo, _ext
from zqkernels.__main__ import main


@pytest.mark.skipif(not HAVE_CUDA, reason="torch sees no CUDA GPU")
def test_gpu_machine_has_the_kernels():
    """With a GPU but no kernels every GPU test would skip: that is an install error, so fail here.
    Set ZQ_TESTS_ALLOW_NO_KERNELS=1 to run a CPU-only build on a GPU machine on purpose."""
    if os.environ.get("ZQ_TESTS_ALLOW_NO_KERNELS") == "1":
        pytest.skip("ZQ_TESTS_ALLOW_NO_KERNELS=1")
    assert HAVE_KERNELS, _ext.no_kernels_reason()


def test_info_prints_nothing_and_is_json(capsys):
    d = zqkernels.info()
    assert capsys.readouterr().out == ""
    assert set(d) == {
        "version",
        "cuda_kernels",
        "compiled_archs",
        "backends",
        "gemm_configs",
        "torch",
        "gpu",
        "note",
    }
    assert d["version"] == zqkernels.__version__
    assert d["cuda_kernels"] is HAVE_KERNELS
    assert (d["gpu"] is None) is (not HAVE_CUDA)
    json.dumps(d)
    if not HAVE_KERNELS:
        assert d["compiled_archs"] == [] and d["backends"] == [] and d["gemm_configs"] == {}
        if _ext.import_error is None:
            assert d["note"].startswith("built without CUDA kernels (")
            assert d["note"].endswith("ops run the pure-torch reference on CPU tensors; CUDA tensors raise")
    else:
        assert d["backends"] and set(d["backends"]) <= {"sm90", "sm80"}
        assert all(d["gemm_configs"][b] for b in d["backends"])


def test_main_info(capsys):
    assert main(["info"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(zqkernels.info()))


def test_main_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("info", "bench", "demo"))


@pytest.mark.skipif(
    _demo.gpu_ready()[0], reason="on a GPU, bench runs the benchmark (covered by the GPU scripts)"
)
def test_main_bench_without_gpu_runs_the_demo(capsys):
    assert main([]) == 0  # no subcommand = bench
    out = capsys.readouterr().out
    assert "zqkernels bench needs a CUDA GPU that runs the zqkernels kernels" in out
    assert "W8A8 QLinear (bfloat16)" in out and "blocks.1.fc2" in out


def test_demo_numbers():
    res = _demo.run(device="cpu", print_fn=None)
    assert res["device"] == "cpu" and res["dtype"] == "bfloat16"
    rel, top1 = res["w8a8"]
    # measured: relative logit error ~0.6% (bf16 alone ~0.5%), top-1 agreement ~97%
    assert rel < 0.02 and top1 >= 0.9
    assert len(res["layers"]) == 12 and all(err < 0.01 for _, _, err in res["layers"])
