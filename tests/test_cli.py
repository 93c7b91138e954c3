"""zqkernels.info(), ``python -m zqkernels`` (in process and as a subprocess) and the demo.

The benchmark harness lives in benchmarks/, outside the package: nothing here imports it (its CPU
self-test runs as a subprocess from a source checkout)."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import zqkernels
from conftest import HAVE_CUDA, HAVE_KERNELS, one_line_error, plant_llama_outliers, run_cli
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


# ------------------------------------------------------------------------------------------------
# quantize / eval (zqkernels/cli/) on a tiny Llama built from its config, CPU

_WORDS = "the of and to a in was her it i that she not be as you he had his with for".split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer Llama (random weights, fp32) + a word-level tokenizer saved with save_pretrained,
    and a text of 3000 tokens. Skips the tests that use it where transformers is not installed."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("cli")
    d = root / "tiny"
    text = " ".join(_WORDS[(i * 7 + i // 3) % len(_WORDS)] for i in range(3000))
    (root / "text.txt").write_text(text)
    tk = Tokenizer(models.WordLevel({"<unk>": 0, **{w: i + 1 for i, w in enumerate(_WORDS)}}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).eval().save_pretrained(d)
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>").save_pretrained(d)
    return {"dir": str(d), "text": str(root / "text.txt"), "root": root}


_run = run_cli


_one_line_error = one_line_error


def test_main_help_lists_quantize_and_eval(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "quantize" in out and "eval" in out
    for cmd in ("quantize", "eval"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "--scheme" in capsys.readouterr().out


def test_quantize_then_eval_round_trip(capsys, tiny, tmp_path):
    out_dir = tmp_path / "q"
    rc, out, err = _run(capsys, ["quantize", tiny["dir"], "--out", str(out_dir)])
    assert rc == 0, err
    assert "checkpoint check (w8a8" in out and "quantize_: 2 converted, 1 left in float" in out
    assert "time: load" in out and "total" in out
    assert {"config.json", "model.safetensors", "zqkernels.json", "tokenizer.json"} <= {p.name for p in out_dir.iterdir()}
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "compressed-tensors"

    png, js = tmp_path / "err.png", tmp_path / "res.json"
    argv = ["--window", "32", "--max-windows", "4", "--text", tiny["text"]]
    rc, out, err = _run(capsys, ["eval", str(out_dir), "--float", tiny["dir"], "--plot", str(png), "--json", str(js), *argv])
    assert rc == 0, err
    assert "perplexity" in out and "float" in out and "w8a8 (checkpoint)" in out and "vs float" in out
    res = json.loads(js.read_text())
    assert res["windows"] == 4 and res["predicted_tokens"] == 4 * 31
    fp, qp = res["float"]["ppl"], res["quantized"]["ppl"]
    assert math.isfinite(fp) and abs(qp / fp - 1) < 0.05, (fp, qp)
    # every Linear of the 2 blocks (fused QKV / gate|up split back into q/k/v, gate/up), lm_head float
    rows = res["layer_errors"]
    assert len(rows) == 14 and {r["scheme"] for r in rows} == {"w8a8"}
    assert rows[0]["module"] == "model.layers.0.self_attn.q_proj"
    assert all(0 < r["rel_err"] < 0.05 for r in rows), rows
    if _has_matplotlib():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot written to {png}" in out
    else:
        assert "matplotlib is not installed" in out and not png.exists()

    # the same conversion done in process (eval on the float dir): the checkpoint round trip is exact
    rc, out, err = _run(capsys, ["eval", tiny["dir"], "--scheme", "w8a8", "--json", str(js), *argv])
    assert rc == 0, err
    res2 = json.loads(js.read_text())
    assert res2["float"]["ppl"] == fp and res2["quantized"]["ppl"] == qp
    assert [r["rel_err"] for r in res2["layer_errors"]] == [r["rel_err"] for r in rows]

    # without the float reference: the quantized perplexity alone, the plot is skipped (said so)
    rc, out, err = _run(capsys, ["eval", str(out_dir), "--plot", str(tmp_path / "none.png"), *argv])
    assert rc == 0, err
    assert f"{qp:10.3f}" in out and not any(line.startswith("float ") for line in out.splitlines())
    assert "plot: skipped" in out and not (tmp_path / "none.png").exists()


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_matplotlib(), reason="matplotlib is not installed")
def test_eval_plot_is_a_png(capsys, tiny, tmp_path):
    png = tmp_path / "sub" / "p.png"
    rc, out, err = _run(capsys, ["eval", tiny["dir"], "--text", tiny["text"], "--window", "32", "--max-windows", "2",
                                 "--scheme", "w4/8", "--group-size", "64", "--plot", str(png)])
    assert rc == 0, err
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "w4/8 g64" in out and "w4a8" in out  # the MLP's Linears are W4A8, listed among the worst


def test_eval_without_matplotlib_says_so(capsys, tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    png = tmp_path / "p.png"
    rc, out, err = _run(capsys, ["eval", tiny["dir"], "--text", tiny["text"], "--window", "32", "--max-windows", "1",
                                 "--plot", str(png)])
    assert rc == 0, err
    assert "plot: matplotlib is not installed" in out and not png.exists()


@pytest.mark.parametrize("scheme", ["fp8", "w4a8", "w4a8-floatscale", "w4a8-zp", "w4a8-fp", "w8a8-group", "w4/8"])
def test_eval_schemes_in_process(capsys, tiny, tmp_path, scheme):
    js = tmp_path / "r.json"
    rc, out, err = _run(capsys, ["eval", tiny["dir"], "--text", tiny["text"], "--window", "32", "--max-windows", "2",
                                 "--scheme", scheme, "--json", str(js)])
    assert rc == 0, err
    res = json.loads(js.read_text())
    assert res["scheme"].startswith(scheme) and len(res["layer_errors"]) == 14
    assert abs(res["quantized"]["ppl"] / res["float"]["ppl"] - 1) < 0.25
    want = {"w4/8": {"w4a8", "w8a8"}}.get(scheme, {scheme})
    assert {r["scheme"] for r in res["layer_errors"]} == want


@pytest.mark.parametrize("scheme", ["w8a8", "fp8", "w4a8", "w4a8-floatscale", "w4a8-zp", "w4a8-fp", "w8a8-group", "w4/8"])
def test_quantize_each_scheme_saves_or_fails_before_converting(capsys, tiny, tmp_path, scheme):
    """Whatever save_quantized / load_quantized support today: a scheme either round-trips through
    quantize + eval, or fails with one line before the model's weights are read (nothing written)."""
    out_dir = tmp_path / "q"
    rc, out, err = _run(capsys, ["quantize", tiny["dir"], "--out", str(out_dir), "--scheme", scheme])
    if rc == 2:
        line = _one_line_error(rc, out, err, "quantize")
        assert "cannot be saved as a checkpoint yet" in line or "cannot be loaded back yet" in line
        assert "loaded " not in out and "quantize_:" not in out
        assert not out_dir.exists() or not any(out_dir.iterdir())
        return
    assert rc == 0, err
    ev = ["--text", tiny["text"], "--window", "32", "--max-windows", "2", "--json", str(tmp_path / "r.json")]
    rc, out, err = _run(capsys, ["eval", str(out_dir), "--float", tiny["dir"], *ev])
    assert rc == 0, err
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["scheme"] == {"w4/8": "w4a8+w8a8"}.get(scheme, scheme) + " (checkpoint)"
    assert len(saved["layer_errors"]) == 14
    # the same conversion in memory: the checkpoint reproduces the quantized model
    rc, out, err = _run(capsys, ["eval", tiny["dir"], "--scheme", scheme, *ev])
    assert rc == 0, err
    direct = json.loads((tmp_path / "r.json").read_text())
    assert saved["quantized"]["ppl"] == pytest.approx(direct["quantized"]["ppl"], rel=1e-4)


def test_quantize_unsupported_checkpoint_fails_before_loading(capsys, tiny, tmp_path, monkeypatch):
    """A scheme save_quantized refuses: one line, exit 2, before the weights are loaded or converted."""
    from zqkernels.cli import quantize as cli_quantize

    def refuse(model, out_dir):
        raise NotImplementedError("save_quantized: scheme 'x' is not implemented\nin this layout")

    monkeypatch.setattr(zqkernels, "save_quantized", refuse)
    calls = []
    monkeypatch.setattr(cli_quantize, "load_float", lambda *a, **k: calls.append(a))
    out_dir = tmp_path / "q"
    rc, out, err = _run(capsys, ["quantize", tiny["dir"], "--out", str(out_dir), "--scheme", "w8a8"])
    line = _one_line_error(rc, out, err, "quantize", "scheme w8a8 cannot be saved as a checkpoint yet",
                           "not implemented in this layout")
    assert calls == [] and not out_dir.exists(), line


def test_quantize_conversion_error_is_one_line(capsys, tiny, tmp_path):
    # group 256 does not divide the tiny model's in_features 128 -> quantize_ raises, named layer
    rc, out, err = _run(capsys, ["quantize", tiny["dir"], "--out", str(tmp_path / "q"), "--scheme", "w8a8-group",
                                 "--group-size", "256"])
    _one_line_error(rc, out, err, "quantize", "conversion failed", "before reading the weights")


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["quantize", "{missing}", "--out", "{out}"], ["does not exist", "local directories"]),
        (["quantize", "HuggingFaceTB/SmolLM2-135M", "--out", "{out}"], ["looks like a Hub model id", "local directories only"]),
        (["eval", "someorg/somemodel", "--text", "{text}"], ["looks like a Hub model id"]),
        (["eval", "{missing}", "--text", "{text}"], ["does not exist"]),
        (["quantize", "{text}", "--out", "{out}"], ["not a .gguf file"]),
        (["quantize", "{root}", "--out", "{out}"], ["has no config.json"]),
        (["quantize", "{dir}", "--out", "{out}", "--scheme", "w9a9"], ["--scheme must be one of", "w4/8"]),
        (["quantize", "{dir}", "--out", "{out}", "--scheme", "w8a8", "--group-size", "64"], ["--group-size applies"]),
        (["quantize", "{dir}", "--out", "{out}", "--gptq"], ["--gptq needs calibration text"]),
        (["quantize", "{dir}", "--out", "{dir}", "--overwrite"], ["must not be the model's own directory"]),
        (["quantize", "{dir}", "--out", "{root}"], ["is not empty"]),
        (["quantize", "{dir}"], ["--out"]),
        (["quantize", "{dir}", "--out", "{out}", "--lorc-rank", "0"], ["--lorc-rank"]),
        (["eval", "{dir}", "--text", "{missing}"], ["--text", "is not a file"]),
        (["eval", "{dir}", "--text", "{text}", "--window", "5000"], ["fewer than one window of 5000"]),
        (["eval", "{dir}", "--text", "{text}", "--float", "{dir}"], ["--float applies when MODEL_DIR is a quantized"]),
        # flags that would be silently ignored
        (["quantize", "{dir}", "--out", "{out}", "--calib", "{text}"],
         ["--calib is only used by --smooth, --gptq and --lkd-steps"]),
        (["quantize", "{dir}", "--out", "{out}", "--calib", "{text}", "--lorc-rank", "4"],
         ["--calib is only used by --smooth, --gptq and --lkd-steps"]),
        (["eval", "{dir}", "--text", "{text}", "--calib", "{text}"], ["--calib is only used by --smooth, --gptq and --lkd-steps"]),
        (["quantize", "{dir}", "--out", "{out}", "--lkd-lr", "1e-5"], ["--lkd-lr applies only with --lkd-steps"]),
        (["quantize", "{dir}", "--out", "{out}", "--lkd-loss", "kl", "--gptq", "--calib", "{text}"],
         ["--lkd-loss applies only with --lkd-steps"]),
        (["eval", "{dir}", "--text", "{text}", "--lkd-lr", "1e-5", "--lkd-loss", "mse"],
         ["--lkd-lr / --lkd-loss apply only with --lkd-steps"]),
        (["quantize", "{dir}", "--out", "{out}", "--calib-window", "64"], ["--calib-window applies only with --calib"]),
        (["quantize", "{dir}", "--out", "{out}", "--gptq", "--calib-samples", "4"],
         ["--calib-samples applies only with --calib"]),
        (["eval", "{dir}", "--text", "{text}", "--calib-window", "64", "--calib-samples", "4"],
         ["--calib-window / --calib-samples apply only with --calib"]),
        (["eval", "{qdir}", "--text", "{text}", "--calib", "{text}", "--level", "balanced"],
         ["is already quantized: --level / --calib apply to a float MODEL_DIR"]),
        (["eval", "{qdir}", "--text", "{text}", "--float", "{dir}", "--lkd-lr", "1e-5"],
         ["is already quantized: --lkd-lr applies to a float MODEL_DIR"]),
        (["eval", "{qdir}", "--text", "{text}", "--calib-samples", "4", "--lkd-loss", "kl"],
         ["is already quantized: --lkd-loss / --calib-samples apply"]),
        (["eval", "{qdir}", "--text", "{text}", "--dtype", "bfloat16"], ["--dtype applies to the float model"]),
        (["eval", "{qdir}", "--text", "{text}", "--error-windows", "2"],
         ["--error-windows: the per-layer error needs the float model"]),
        (["eval", "{dir}", "--text", "{text}", "--window", "32", "--max-windows", "2", "--error-windows", "3"],
         ["--error-windows 3 is more than the 2 windows evaluated"]),
    ],
)
def test_cli_errors_are_one_line_exit_2(capsys, tiny, tmp_path, argv, needles):
    # a directory that reads as a quantized checkpoint (its config has a quantization_config); every
    # error above comes before anything is loaded from it
    qdir = tmp_path / "qdir"
    qdir.mkdir()
    cfg = json.loads((Path(tiny["dir"]) / "config.json").read_text())
    (qdir / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "compressed-tensors"}}))
    subst = {"missing": str(tmp_path / "nope"), "out": str(tmp_path / "out"), "text": tiny["text"],
             "root": str(tiny["root"]), "dir": tiny["dir"], "qdir": str(qdir)}
    argv = [a.format(**subst) for a in argv]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    captured = capsys.readouterr()
    _one_line_error(rc, captured.out, captured.err, argv[0], *needles)


def test_lkd_steps(capsys, tiny, tmp_path):
    """--lkd-steps runs zqkernels.lkd."""
    argv = ["eval", tiny["dir"], "--text", tiny["text"], "--window", "32", "--max-windows", "1", "--lkd-steps", "1",
            "--calib", tiny["text"], "--calib-window", "32", "--calib-samples", "2"]
    rc, out, err = _run(capsys, argv)
    assert rc == 0, err
    assert "LKD 1 steps" in out and "lkd" in out


def test_quantize_gptq_lorc_lkd_checked_before_loading(capsys, tiny, tmp_path, monkeypatch):
    """GPTQ / LoRC / LKD run on the one-layer copy first: a failure there stops before the weights."""
    from zqkernels.cli import quantize as cli_quantize

    def broken(*a, **k):
        raise NotImplementedError("gptq: not for this scheme")

    monkeypatch.setattr(zqkernels, "gptq", broken)
    monkeypatch.setattr(cli_quantize, "load_float", lambda *a, **k: pytest.fail("loaded the model"))
    rc, out, err = _run(capsys, ["quantize", tiny["dir"], "--out", str(tmp_path / "q"), "--gptq", "--calib",
                                 tiny["text"]])
    _one_line_error(rc, out, err, "quantize", "w8a8 + GPTQ: conversion failed: gptq: not for this scheme",
                    "found on a one-layer copy of the model")


def test_eval_lorc(capsys, tiny, tmp_path):
    js = tmp_path / "r.json"
    argv = ["eval", tiny["dir"], "--text", tiny["text"], "--window", "32", "--max-windows", "2", "--json", str(js)]
    rc, out, err = _run(capsys, argv + ["--scheme", "w8a8"])
    assert rc == 0, err
    plain = json.loads(js.read_text())
    rc, out, err = _run(capsys, argv + ["--lorc-rank", "16"])
    assert rc == 0, err
    res = json.loads(js.read_text())
    assert res["scheme"] == "w8a8 + LoRC r16" and "lorc" in out
    # LoRC compensates part of the weight error: every layer's output error goes down
    assert all(r["rel_err"] < p["rel_err"] for r, p in zip(res["layer_errors"], plain["layer_errors"]))


@pytest.mark.skipif(not callable(getattr(zqkernels, "lkd", None)), reason="this zqkernels has no lkd")
def test_eval_lkd_then_lorc(capsys, tiny, tmp_path):
    """--lkd-steps with --lorc-rank: LKD runs first (it refuses layers that already have LoRC factors),
    then LoRC factors the error of the distilled weights."""
    js = tmp_path / "r.json"
    rc, out, err = _run(capsys, ["eval", tiny["dir"], "--text", tiny["text"], "--window", "32", "--max-windows", "1",
                                 "--lkd-steps", "1", "--lkd-lr", "1e-6", "--lorc-rank", "4", "--calib", tiny["text"],
                                 "--calib-window", "32", "--calib-samples", "2", "--json", str(js)])
    assert rc == 0, err
    res = json.loads(js.read_text())
    assert res["scheme"] == "w8a8 + LKD 1 steps + LoRC r4"
    steps = out[out.index("quantized a copy"):].splitlines()[0]
    assert steps.index("lkd ") < steps.index("lorc "), steps  # the order they ran in
    assert math.isfinite(res["quantized"]["ppl"])


def test_conversion_lorc_keeps_fused_blocks(tiny):
    """--lorc-rank no longer turns the fused blocks off: one rank-R pair per merged GEMM, reported."""
    import argparse

    from transformers import LlamaForCausalLM
    from zqkernels import cli

    p = argparse.ArgumentParser()
    cli.add_parsers(p.add_subparsers(dest="command"))
    args = p.parse_args(["eval", tiny["dir"], "--text", tiny["text"], "--lorc-rank", "8", "--level", "balanced"])
    args.scheme = "w8a8"
    conv = cli.Conversion(args)
    model = LlamaForCausalLM.from_pretrained(tiny["dir"]).eval()
    log = []
    conv.convert(model, None, False, log.append)
    blocks = model.model.layers
    assert [type(b).__name__ for b in blocks] == ["QLlamaDecoderLayer"] * 2
    assert blocks[0].level == {"qkv": True, "attn_out": True, "fc1": True, "fc2": False}  # --level is used
    assert blocks[0].qkv.lorc_rank == 8 and blocks[0].fc1.lorc_rank == 8 and blocks[1].attn_out.lorc_rank == 8
    line = next(x for x in log if x.startswith("LoRC rank 8"))
    # qkv, attn_out, fc1 per block (fc2 is float at level balanced; lm_head stays float)
    assert line.startswith("LoRC rank 8: 6 layers (4 of them merged fused-block GEMMs, one rank-8 pair each), ")
    assert "bytes added" in line and "quantized weight bytes" in line and line.endswith("0 skipped")


def test_gptq_from_the_command_line(capsys, tiny, tmp_path):
    js = tmp_path / "r.json"
    rc, out, err = _run(capsys, ["eval", tiny["dir"], "--text", tiny["text"], "--window", "32", "--max-windows", "2",
                                 "--gptq", "--calib", tiny["text"], "--calib-window", "32", "--calib-samples", "4",
                                 "--json", str(js)])
    assert rc == 0, err
    assert "note: the calibration text is the evaluation text" in out and "gptq" in out
    assert json.loads(js.read_text())["scheme"] == "w8a8 + GPTQ"


@pytest.mark.parametrize("scheme", ["w4a8", "w4/8"])
def test_gptq_and_lorc_with_w4_schemes(capsys, tiny, tmp_path, scheme):
    js = tmp_path / "r.json"
    rc, out, err = _run(capsys, ["eval", tiny["dir"], "--text", tiny["text"], "--window", "32", "--max-windows", "2",
                                 "--scheme", scheme, "--group-size", "64", "--gptq", "--lorc-rank", "8",
                                 "--calib", tiny["text"], "--calib-window", "32", "--calib-samples", "4",
                                 "--json", str(js)])
    assert rc == 0, err
    res = json.loads(js.read_text())
    assert res["scheme"] == f"{scheme} g64 + GPTQ + LoRC r8" and len(res["layer_errors"]) == 14


def test_remote_id_refused_from_the_command_line(tmp_path):
    """Through ``python -m zqkernels``: exit status 2, one line on stderr, nothing downloaded."""
    r = subprocess.run(
        [sys.executable, "-m", "zqkernels", "quantize", "HuggingFaceTB/SmolLM2-135M", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        "zqkernels quantize: MODEL_DIR 'HuggingFaceTB/SmolLM2-135M' is not a local directory; it looks like a Hub "
        "model id, and models load from local directories only (download it first, then pass the directory)"
    ]
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not NO_GPU, reason="needs a machine whose GPU cannot run the kernels")
def test_eval_device_cuda_without_gpu(capsys, tiny):
    rc, out, err = _run(capsys, ["eval", tiny["dir"], "--text", tiny["text"], "--device", "cuda"])
    _one_line_error(rc, out, err, "eval", "--device cuda: needs a CUDA GPU that runs the zqkernels kernels")


_GGUF = os.environ.get("ZQ_TEST_GGUF")  # e.g. SmolLM2-135M-Instruct.Q4_1.gguf (benchmarks/accuracy_fp.py)


@pytest.mark.skipif(not _GGUF, reason="set ZQ_TEST_GGUF to a causal-LM .gguf file (needs the gguf package)")
def test_quantize_and_eval_a_gguf_file(capsys, tiny, tmp_path):
    """A .gguf path loads with gguf_file= (float32), quantizes, saves with its tokenizer, evaluates."""
    out_dir = tmp_path / "q"
    rc, out, err = _run(capsys, ["quantize", _GGUF, "--out", str(out_dir)])
    assert rc == 0, err
    assert "float32" in out and (out_dir / "tokenizer.json").exists()
    js = tmp_path / "r.json"
    rc, out, err = _run(capsys, ["eval", str(out_dir), "--float", _GGUF, "--text", tiny["text"], "--window", "64",
                                 "--max-windows", "1", "--json", str(js)])
    assert rc == 0, err
    res = json.loads(js.read_text())
    assert res["scheme"] == "w8a8 (checkpoint)" and res["layer_errors"]
    assert abs(res["quantized"]["ppl"] / res["float"]["ppl"] - 1) < 0.2


# ------------------------------------------------------------------------------------------------
# --smooth ALPHA (zqkernels.smooth_ before quantization)


@pytest.fixture(scope="module")
def tiny_outliers(tiny):
    """The tiny Llama with planted activation outliers (as tests/test_smooth.py plants them): a few
    channels 40x larger at every norm output, at down_proj's input and at o_proj's input."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    d = tiny["root"] / "tiny_outliers"
    m = LlamaForCausalLM.from_pretrained(tiny["dir"]).eval()
    plant_llama_outliers(m)
    m.save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny["dir"]).save_pretrained(d)
    return {**tiny, "dir": str(d)}


_CALIB = ["--calib-window", "32", "--calib-samples", "4"]


def test_eval_smooth_lowers_the_quantized_error(capsys, tiny_outliers, tmp_path):
    """--smooth 0.5 on a model with activation outliers: labelled, timed, and the per-layer output
    error of the quantized Linears (against the smoothed float model, whose inputs they expect) and
    the perplexity gap to the float model both go down."""
    t = tiny_outliers
    js = tmp_path / "r.json"
    argv = ["eval", t["dir"], "--text", t["text"], "--window", "32", "--max-windows", "4", "--json", str(js)]
    rc, out, err = _run(capsys, argv)
    assert rc == 0, err
    plain = json.loads(js.read_text())
    rc, out, err = _run(capsys, argv + ["--smooth", "0.5", "--calib", t["text"], *_CALIB])
    assert rc == 0, err
    res = json.loads(js.read_text())
    assert res["scheme"] == "w8a8 + smooth a=0.5"
    steps = next(x for x in out.splitlines() if x.startswith("smoothed and quantized a copy: w8a8 + smooth a=0.5 in "))
    assert steps.index("(smooth ") < steps.index("rtn "), steps  # smoothing ran first, and is timed
    assert "tokens of smoothed float inputs" in out
    # the float reference is the model as loaded (smoothing changes its function by rounding only)
    assert res["float"]["ppl"] == plain["float"]["ppl"]
    errs = {r["module"]: r["rel_err"] for r in res["layer_errors"]}
    base = {r["module"]: r["rel_err"] for r in plain["layer_errors"]}
    assert errs.keys() == base.keys() and len(errs) == 14
    assert sum(errs.values()) < 0.7 * sum(base.values()), (errs, base)
    gap = lambda r: abs(r["quantized"]["ppl"] / r["float"]["ppl"] - 1)  # noqa: E731
    assert gap(res) < gap(plain), (gap(res), gap(plain))


def test_smooth_runs_before_gptq_and_is_lkds_teacher(capsys, tiny, tmp_path, monkeypatch):
    """--smooth with --gptq, --lkd-steps and --lorc-rank: smoothing runs first on the float model,
    GPTQ quantizes the smoothed model, and LKD's teacher / LoRC's reference is the smoothed float model."""
    calls = []
    real = {n: getattr(zqkernels, n) for n in ("smooth_", "gptq", "lkd", "lorc")}

    def spy(name):
        @functools.wraps(real[name])
        def f(*a, **k):
            calls.append((name, a))
            return real[name](*a, **k)
        return f

    for n in real:
        monkeypatch.setattr(zqkernels, n, spy(n))
    js = tmp_path / "r.json"
    rc, out, err = _run(capsys, ["eval", tiny["dir"], "--text", tiny["text"], "--window", "32", "--max-windows", "1",
                                 "--smooth", "0.8", "--gptq", "--lkd-steps", "1", "--lkd-lr", "1e-6", "--lorc-rank", "4",
                                 "--calib", tiny["text"], *_CALIB, "--json", str(js)])
    assert rc == 0, err
    assert json.loads(js.read_text())["scheme"] == "w8a8 + smooth a=0.8 + GPTQ + LKD 1 steps + LoRC r4"
    # the conversion check first (on a one-layer copy, before loading), then the model's own conversion
    assert [c[0] for c in calls] == ["smooth_", "gptq", "lkd", "lorc"] * 2
    calls = calls[4:]
    smoothed = calls[0][1][0]
    assert calls[2][1][0] is smoothed and calls[3][1][1] is smoothed  # lkd(teacher, ...), lorc(model, float)
    assert not any(isinstance(m, zqkernels.nn.QLinear) for m in smoothed.modules())
    line = out[out.index("smoothed and quantized a copy"):].splitlines()[0]
    steps = line[line.rindex("("):]  # the seconds per step, in the order they ran
    assert steps.index("smooth ") < steps.index("gptq ") < steps.index("lkd ") < steps.index("lorc "), line


def test_quantize_smooth_saves_and_evaluates(capsys, tiny, tmp_path):
    """quantize --smooth: logged and timed; the checkpoint reproduces the in-memory conversion, is
    labelled smoothed, and its per-layer error against an unsmoothed --float model is skipped, said so."""
    out_dir = tmp_path / "q"
    rc, out, err = _run(capsys, ["quantize", tiny["dir"], "--out", str(out_dir), "--smooth", "0.5",
                                 "--calib", tiny["text"], *_CALIB])
    assert rc == 0, err
    assert "checkpoint check (w8a8 + smooth a=0.5, on a one-layer copy of the model): ok" in out
    assert "converting: w8a8 + smooth a=0.5 (4 calibration samples of 32 tokens)" in out
    assert "smooth_: alpha 0.5, 8 groups" in out
    time_line = next(x for x in out.splitlines() if x.startswith("time: load"))
    assert time_line.index("smooth ") < time_line.index("rtn ") < time_line.index("save "), time_line
    assert json.loads((out_dir / "zqkernels_cli.json").read_text()) == {"conversion": "w8a8 + smooth a=0.5",
                                                                         "smooth": 0.5}
    js = tmp_path / "r.json"
    ev = ["--text", tiny["text"], "--window", "32", "--max-windows", "2", "--json", str(js)]
    rc, out, err = _run(capsys, ["eval", str(out_dir), "--float", tiny["dir"], "--plot", str(tmp_path / "p.png"), *ev])
    assert rc == 0, err
    saved = json.loads(js.read_text())
    assert saved["scheme"] == "w8a8 + smooth a=0.5 (checkpoint)" and "layer_errors" not in saved
    assert "per-layer error: skipped (the checkpoint was smoothed" in out and "plot: skipped" in out
    assert not (tmp_path / "p.png").exists()
    rc, out, err = _run(capsys, ["eval", tiny["dir"], "--smooth", "0.5", "--calib", tiny["text"], *_CALIB, *ev])
    assert rc == 0, err
    direct = json.loads(js.read_text())
    assert saved["quantized"]["ppl"] == pytest.approx(direct["quantized"]["ppl"], rel=1e-4)
    assert saved["float"]["ppl"] == direct["float"]["ppl"]


def test_smooth_unsupported_model_is_one_line(capsys, tmp_path, monkeypatch):
    """A model with no block smooth_ supports (BERT): smooth_'s message, one line, before the weights load."""
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertForMaskedLM
    from zqkernels.cli import quantize as cli_quantize

    d = tmp_path / "bert"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=128, max_position_embeddings=64)).save_pretrained(d)
    text = tmp_path / "t.txt"
    text.write_text("x")
    capsys.readouterr()  # save_pretrained's progress bar
    monkeypatch.setattr(cli_quantize, "load_float", lambda *a, **k: pytest.fail("loaded the model"))
    rc, out, err = _run(capsys, ["quantize", str(d), "--out", str(tmp_path / "q"), "--smooth", "0.5",
                                 "--calib", str(text)])
    _one_line_error(rc, out, err, "quantize", "scheme w8a8 + smooth a=0.5: smoothing failed: smooth_: found no "
                    "supported transformer block in BertForMaskedLM (BertLayer: post-norm: ", "; supported: ",
                    "before reading the weights")


def test_smooth_unsupported_model_in_eval(capsys, tiny, tmp_path, monkeypatch):
    """eval converts after loading: smooth_'s refusal is still one line, exit 2."""
    def refuse(model, calib, alpha=0.5):
        raise ValueError("smooth_: found no supported transformer block in X; supported: [...]")

    monkeypatch.setattr(zqkernels, "smooth_", refuse)
    rc, out, err = _run(capsys, ["eval", tiny["dir"], "--text", tiny["text"], "--window", "32", "--max-windows", "1",
                                 "--smooth", "0.5", "--calib", tiny["text"], *_CALIB])
    _one_line_error(rc, out, err, "eval", "smoothing failed: smooth_: found no supported transformer block in X")


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["quantize", "{dir}", "--out", "{out}", "--smooth", "0.5"], ["--smooth needs calibration text: --calib FILE"]),
        (["eval", "{dir}", "--text", "{text}", "--smooth", "0"], ["--smooth needs calibration text"]),
        (["eval", "{dir}", "--text", "{text}", "--smooth", "0.5", "--gptq"], ["--smooth needs calibration text"]),
        (["quantize", "{dir}", "--out", "{out}", "--smooth", "1.5", "--calib", "{text}"],
         ["python -m zqkernels quantize: error: argument --smooth: expected a number in [0, 1]", "'1.5'"]),
        (["eval", "{dir}", "--text", "{text}", "--smooth", "-0.1"], ["argument --smooth: expected a number in [0, 1]"]),
        (["eval", "{dir}", "--text", "{text}", "--smooth", "nan"], ["argument --smooth: expected a number in [0, 1]"]),
        (["eval", "{dir}", "--text", "{text}", "--smooth", "half"], ["argument --smooth: expected a number in [0, 1]"]),
        (["eval", "{qdir}", "--text", "{text}", "--smooth", "0.5", "--calib", "{text}"],
         ["is already quantized: --smooth / --calib apply to a float MODEL_DIR"]),
        (["quantize", "{dir}", "--out", "{out}", "--smooth", "0.5", "--calib", "{missing}"], ["--calib", "is not a file"]),
    ],
)
def test_smooth_errors_are_one_line_exit_2(capsys, tiny, tmp_path, argv, needles):
    test_cli_errors_are_one_line_exit_2(capsys, tiny, tmp_path, argv, needles)


def test_calib_with_smooth_alone_is_used(capsys, tiny):
    """--calib is not "ignored" with --smooth alone (the pre-check no longer refuses it), and without
    any of --smooth / --gptq / --lkd-steps the error names all three."""
    import argparse

    from zqkernels import cli

    p = argparse.ArgumentParser()
    cli.add_parsers(p.add_subparsers(dest="command"))
    args = p.parse_args(["eval", tiny["dir"], "--text", tiny["text"], "--smooth", "0", "--calib", tiny["text"]])
    args.scheme = "w8a8"
    conv = cli.Conversion(args)
    assert conv.smooth == 0.0 and conv.calibrated and conv.label == "w8a8 + smooth a=0"
    args.smooth = None
    with pytest.raises(cli.CLIError, match=r"--calib is only used by --smooth, --gptq and --lkd-steps \(none was given\)"):
        cli.Conversion(args)
