"""zqkernels.info(), ``python -m zqkernels`` (in process and as a subprocess) and the demo.

The benchmark harness lives in benchmarks/, outside the package: nothing here imports it (its CPU
self-test runs as a subprocess from a source checkout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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
        "gemm_tiles",
        "torch",
        "gpu",
        "note",
    }
    assert d["version"] == zqkernels.__version__
    assert d["cuda_kernels"] is HAVE_KERNELS
    assert (d["gpu"] is None) is (not HAVE_CUDA)
    json.dumps(d)
    if not HAVE_KERNELS:
        assert d["compiled_archs"] == [] and d["backends"] == [] and d["gemm_tiles"] == {}
        if _ext.import_error is None:
            assert d["note"].startswith("built without CUDA kernels (")
            assert d["note"].endswith("ops run the pure-torch reference on CPU tensors; CUDA tensors raise")
    else:
        assert d["backends"] and set(d["backends"]) <= {"sm90", "sm80"}
        # tile names per kernel family ("<arch>_<recipe>"), each passed as int8_gemm(..., tile=name)
        assert d["gemm_tiles"] and all(d["gemm_tiles"].values())
        assert {family.split("_", 1)[0] for family in d["gemm_tiles"]} <= set(d["backends"])


def test_main_info(capsys):
    assert main(["info"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(zqkernels.info()))


def test_main_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("info", "bench", "demo"))


REPO = Path(__file__).resolve().parent.parent
NO_GPU = not _demo.gpu_ready()[0]


def test_benchmark_code_is_not_in_the_package():
    pkg = Path(zqkernels.__file__).parent
    assert not (pkg / "_bench.py").exists()
    quick = (pkg / "_quickbench.py").read_text()
    assert len(quick.splitlines()) <= 160 and "subprocess" not in quick and "selftest" not in quick


@pytest.mark.skipif(not NO_GPU, reason="on a GPU, no subcommand runs the benchmark (GPU scripts cover it)")
def test_main_without_command_and_gpu_runs_the_demo(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("zqkernels: no GPU benchmark here (")
    assert "W8A8 QLinear (bfloat16)" in out and "blocks.1.fc2" in out


@pytest.mark.skipif(not NO_GPU, reason="needs a machine whose GPU cannot run the kernels")
@pytest.mark.parametrize(
    "argv, what", [(["bench"], "bench"), (["demo", "--device", "cuda"], "demo --device cuda")]
)
def test_gpu_command_without_gpu_is_a_one_line_error(capsys, argv, what):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"zqkernels {what}: needs a CUDA GPU that runs the zqkernels kernels; ")
    if not torch.cuda.is_available() and torch.version.cuda is None:
        assert lines[0].endswith(f"this torch ({torch.__version__}) is built without CUDA")


@pytest.mark.skipif(not NO_GPU, reason="needs a machine whose GPU cannot run the kernels")
def test_demo_cuda_error_from_the_command_line():
    """The same through ``python -m zqkernels``: exit status 2, one line on stderr, no traceback."""
    r = subprocess.run(
        [sys.executable, "-m", "zqkernels", "demo", "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("zqkernels demo --device cuda: needs a CUDA GPU")


@pytest.mark.skipif(
    not (REPO / "benchmarks" / "bench_w8a8.py").exists(), reason="not a source checkout (no benchmarks/)"
)
def test_benchmark_harness_selftest():
    """benchmarks/bench_w8a8.py --selftest: tables, JSON and the measuring pipeline on CPU with a
    stand-in for zqkernels (run as a script, as scripts/gpu_check.sh runs the benchmark)."""
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_w8a8.py"), "--selftest"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "selftest_format: ok" in r.stdout and "selftest_cpu: ok" in r.stdout


def test_demo_numbers():
    res = _demo.run(device="cpu", print_fn=None)
    assert res["device"] == "cpu" and res["dtype"] == "bfloat16"
    rel, top1 = res["w8a8"]
    # measured: relative logit error ~0.6% (bf16 alone ~0.5%), top-1 agreement ~97%
    assert rel < 0.02 and top1 >= 0.9
    assert len(res["layers"]) == 12 and all(err < 0.01 for _, _, err in res["layers"])
