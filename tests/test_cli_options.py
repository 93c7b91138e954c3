"""The command line's conversion options (issue 22), CPU: the per-layer default group size ("auto"),
--scale-policy (a scheme option with a fixed set of values), every option checked before a model
loads (eval as quantize), eval's conversion summary, and its per-window statistics (cli/stats.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import zqkernels
from conftest import one_line_error, run_cli
from zqkernels import schemes
from zqkernels.__main__ import main
from zqkernels.cli import evaluate, quantize
from zqkernels.cli.stats import paired_nll_diff

REPO = Path(__file__).resolve().parent.parent
_WORDS = "the of and to a in was her it i that she not be as you he had his with for".split()


# ------------------------------------------------------------------------------------------------
# statistics: a pure function, known numbers


def test_paired_nll_diff_known_numbers():
    # d = [0.1, 0.3, 0.0, 0.2]: mean 0.15, sd (ddof 1) sqrt(0.05 / 3), SE = sd / 2
    st = paired_nll_diff([1.0, 2.0, 3.0, 4.0], [1.1, 2.3, 3.0, 4.2])
    assert st["windows"] == 4
    assert st["mean_diff"] == pytest.approx(0.15)
    assert st["se"] == pytest.approx(0.0645497224, rel=1e-8)
    assert st["ppl_ratio"] == pytest.approx(1.1618342427, rel=1e-9)
    assert st["ratio_low"] == pytest.approx(math.exp(0.15 - 1.96 * 0.0645497224), rel=1e-8)
    assert st["ratio_low"] == pytest.approx(1.0237606, rel=1e-6)
    assert st["ratio_high"] == pytest.approx(1.3185300, rel=1e-6)
    # a constant shift: no spread, the interval is the point
    st = paired_nll_diff([2.0, 3.0], [2.5, 3.5])
    assert st["se"] == 0.0 and st["ratio_low"] == st["ratio_high"] == pytest.approx(math.exp(0.5))
    # one window: no standard error
    st = paired_nll_diff([2.0], [2.1])
    assert st["se"] is None and st["ratio_low"] is None and st["ppl_ratio"] == pytest.approx(math.exp(0.1))
    with pytest.raises(ValueError, match="one value per window each, got 2 and 1"):
        paired_nll_diff([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no windows"):
        paired_nll_diff([], [])


# ------------------------------------------------------------------------------------------------
# group_size "auto" on the scheme objects


@pytest.mark.parametrize("cls", [schemes.W4A8, schemes.W4A8FloatScale, schemes.W8A8Group, schemes.W4A8FP])
def test_auto_group_size_per_layer(cls):
    s = cls(group_size="auto")
    assert s.auto and s.group_size == "auto" and s == cls(group_size="AUTO") and hash(s) == hash(cls(group_size="auto"))
    assert s.describe().startswith("group_size=auto")
    # SmolLM2-135M: hidden 576 (64), intermediate 1536 (128)
    assert s.for_layer("t", 576, 576).group_size == 64
    assert s.for_layer("t", 576, 1536).group_size == 128
    assert s.for_layer("t", 576, 1536).general() == cls(group_size=128)
    assert s.group(576) == 64  # fake quantization of a [*, 576] weight: the size for_layer picks


def test_auto_group_size_falls_to_32_and_names_the_rule():
    assert schemes.W8A8Group(group_size="auto").for_layer("t", 96, 96).group_size == 32
    # the packed INT4 layout needs in_features % 64 == 0: no size fits; the largest size's error
    with pytest.raises(ValueError, match=r"group_size 'auto' \(tried 128, 64, 32; none fits this layer\): t: scheme "
                       r"'w4a8' \(packed INT4 layout m16k32\) needs"):
        schemes.W4A8(group_size="auto").for_layer("t", 96, 96)
    # w4a8-fp has no 256, the integer schemes do; auto tries 128 / 64 / 32 for both
    assert schemes.W4A8FP(group_size="auto").auto_candidates() == (128, 64, 32)
    assert schemes.W4A8(group_size="auto").auto_candidates() == (128, 64, 32)


def test_auto_group_size_in_quantize_():
    """A config with group_size "auto": fused blocks keep one scheme, each GEMM its own group size."""
    pytest.importorskip("transformers")
    m = _llama192()
    zqkernels.quantize_(m, zqkernels.SchemeConfig(schemes.W4A8(group_size="auto")))
    blk = m.model.layers[0]
    assert isinstance(blk, zqkernels.nn.QuantizedBlock)
    gs = {n: q.qscheme.group_size for n, q in blk.named_modules() if isinstance(q, zqkernels.nn.QLinear)}
    assert sorted(gs.values()) == [64, 64, 64, 128], gs  # qkv, gate|up, o (in 192), down (in 256)


# ------------------------------------------------------------------------------------------------
# the command line


def _llama192():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=192, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({"<unk>": 0, **{w: i + 1 for i, w in enumerate(_WORDS)}}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


@pytest.fixture(scope="module")
def m192(tmp_path_factory):
    """A 2-layer Llama whose hidden size, 192, 128 does not divide (intermediate 256), its tokenizer,
    and a text of 3000 tokens."""
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("cli_opts")
    d = root / "m192"
    _llama192().save_pretrained(d)
    _tokenizer().save_pretrained(d)
    (root / "text.txt").write_text(" ".join(_WORDS[(i * 7 + i // 3) % len(_WORDS)] for i in range(3000)))
    return {"dir": str(d), "text": str(root / "text.txt"), "root": root}


_run = run_cli


_one_line_error = one_line_error


def _no_load(monkeypatch):
    for mod in (evaluate, quantize):
        monkeypatch.setattr(mod, "load_float", lambda *a, **k: pytest.fail("loaded the model"))


_EV = ["--window", "32", "--max-windows", "4"]
_AUTO_LINE = ("group size auto (the largest of 128 / 64 / 32 each layer takes): 128 for 2 GEMMs, 64 for 6 GEMMs "
              "(in_features 192 % 128 != 0), 32 for 0 GEMMs")


def test_eval_default_group_size_fits_every_layer(capsys, m192, tmp_path):
    """w4a8 without --group-size on hidden 192: per layer 64 or 128; eval prints the conversion summary,
    the per-window statistics, and writes the per-window NLLs."""
    js = tmp_path / "r.json"
    rc, out, err = _run(capsys, ["eval", m192["dir"], "--text", m192["text"], "--scheme", "w4a8", "--json", str(js), *_EV])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("conversion check (w4a8 g=auto, on a one-layer copy of the model): ok in ")
    assert "quantize_: 2 converted, 1 left in float" in out and "converted fused QLlamaDecoderLayer" in out
    assert _AUTO_LINE in lines
    assert out.index("quantize_:") < out.index("quantized a copy: w4a8 g=auto")
    res = json.loads(js.read_text())
    for k in ("float", "quantized"):
        assert len(res[k]["window_nll"]) == 4 and res[k]["window_tokens"] == [31] * 4
        assert math.exp(sum(res[k]["window_nll"]) / 4) == pytest.approx(res[k]["ppl"], rel=1e-9)
    st = res["quantized"]["vs_float"]
    assert st == paired_nll_diff(res["float"]["window_nll"], res["quantized"]["window_nll"])
    assert st["ppl_ratio"] == pytest.approx(res["quantized"]["ppl"] / res["float"]["ppl"], rel=1e-9)
    row = next(ln for ln in lines if ln.startswith("w4a8 g=auto "))
    assert f"{st['mean_diff']:+.4f} +- {st['se']:.4f}" in row
    assert f"{st['ppl_ratio']:.4f} [{st['ratio_low']:.4f}, {st['ratio_high']:.4f}]" in row
    assert "dNLL +- SE" in out and "interval exp(dNLL +- 1.96 SE)" in out


def test_eval_one_window_has_no_standard_error(capsys, m192, tmp_path):
    js = tmp_path / "r.json"
    rc, out, err = _run(capsys, ["eval", m192["dir"], "--text", m192["text"], "--window", "32", "--max-windows", "1",
                                 "--json", str(js)])
    assert rc == 0, err
    assert json.loads(js.read_text())["quantized"]["vs_float"]["se"] is None
    assert "+- n/a" in out and "one window: no SE" in out


def test_explicit_group_size_that_does_not_divide_fails_before_loading(capsys, m192, monkeypatch):
    _no_load(monkeypatch)
    for cmd in (["eval", m192["dir"], "--text", m192["text"]], ["quantize", m192["dir"], "--out", "/nonexistent/q"]):
        rc, out, err = _run(capsys, [*cmd, "--scheme", "w4a8", "--group-size", "128"])
        _one_line_error(rc, out, err, cmd[0], "scheme w4a8 g128: conversion failed", "needs group_size to divide "
                        "in_features, got group_size 128", "choose group_size in [32, 64]", "before reading the weights")


def test_quantize_auto_round_trip(capsys, m192, tmp_path):
    out_dir = tmp_path / "q"
    rc, out, err = _run(capsys, ["quantize", m192["dir"], "--scheme", "w4a8", "--out", str(out_dir)])
    assert rc == 0, err
    assert _AUTO_LINE in out.splitlines()
    js = tmp_path / "r.json"
    rc, out, err = _run(capsys, ["eval", str(out_dir), "--float", m192["dir"], "--text", m192["text"], "--json", str(js),
                                 *_EV])
    assert rc == 0, err
    saved = json.loads(js.read_text())
    rc, out, err = _run(capsys, ["eval", m192["dir"], "--scheme", "w4a8", "--text", m192["text"], "--json", str(js), *_EV])
    assert rc == 0, err
    assert saved["quantized"]["ppl"] == pytest.approx(json.loads(js.read_text())["quantized"]["ppl"], rel=1e-4)


def test_scale_policy_reaches_the_layers(capsys, m192, tmp_path):
    out_dir = tmp_path / "q"
    rc, out, err = _run(capsys, ["quantize", m192["dir"], "--scheme", "w4a8-fp", "--scale-policy", "m1", "--out",
                                 str(out_dir)])
    assert rc == 0, err
    assert "checkpoint check (w4a8-fp g=auto scale_policy=m1, on a one-layer copy" in out
    q = zqkernels.load_quantized(out_dir)
    pols = {m.qscheme.scale_policy for m in q.modules() if isinstance(m, zqkernels.nn.QLinear)}
    assert pols == {"m1"}
    js = tmp_path / "r.json"
    rc, out, err = _run(capsys, ["eval", m192["dir"], "--text", m192["text"], "--scheme", "w4a8-fp", "--scale-policy",
                                 "free", "--json", str(js), *_EV])
    assert rc == 0, err
    assert json.loads(js.read_text())["scheme"] == "w4a8-fp g=auto scale_policy=free"


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["eval", "{dir}", "--text", "{text}", "--scheme", "w4a8", "--scale-policy", "m1"],
         ["--scale-policy applies to the schemes with a scale_policy option (w4a8-fp), not 'w4a8'"]),
        (["quantize", "{dir}", "--out", "{out}", "--scale-policy", "m2"],
         ["--scale-policy applies to the schemes with a scale_policy option (w4a8-fp), not 'w8a8'"]),
        (["eval", "{dir}", "--text", "{text}", "--scheme", "w4a8-fp", "--scale-policy", "m3"],
         ["argument --scale-policy: invalid choice: 'm3'"]),
        (["eval", "{dir}", "--text", "{text}", "--scheme", "w8a8", "--group-size", "auto"],
         ["--group-size applies to the grouped schemes"]),
        (["eval", "{dir}", "--text", "{text}", "--scheme", "w4a8", "--group-size", "big"],
         ["argument --group-size: expected an int, 'channel' or 'auto', got 'big'"]),
    ],
)
def test_option_errors_before_loading(capsys, m192, tmp_path, monkeypatch, argv, needles):
    _no_load(monkeypatch)
    monkeypatch.setattr(evaluate, "check_conversion", lambda *a, **k: pytest.fail("ran the conversion check"))
    argv = [a.format(dir=m192["dir"], text=m192["text"], out=str(tmp_path / "q")) for a in argv]
    try:
        rc, out, err = _run(capsys, argv)
    except SystemExit as e:  # argparse
        rc, cap = e.code, capsys.readouterr()
        out, err = cap.out, cap.err.strip().splitlines()[-1]
    _one_line_error(rc, out, err, argv[0], *needles)


def test_scale_policy_on_a_checkpoint_is_refused(capsys, m192, tmp_path):
    out_dir = tmp_path / "q"
    assert _run(capsys, ["quantize", m192["dir"], "--out", str(out_dir)])[0] == 0
    rc, out, err = _run(capsys, ["eval", str(out_dir), "--text", m192["text"], "--scale-policy", "m1"])
    _one_line_error(rc, out, err, "eval", "is already quantized: --scale-policy applies to a float MODEL_DIR")


def test_eval_smooth_unsupported_architecture_fails_before_loading(capsys, tmp_path, monkeypatch):
    """BERT (no block smooth_ supports): eval refuses --smooth from the config, before the weights load."""
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertForMaskedLM

    d = tmp_path / "bert"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=128, max_position_embeddings=64)).save_pretrained(d)
    _tokenizer().save_pretrained(d)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(_WORDS * 10))
    capsys.readouterr()
    _no_load(monkeypatch)
    rc, out, err = _run(capsys, ["eval", str(d), "--text", str(text), "--window", "16", "--smooth", "0.5",
                                 "--calib", str(text), "--calib-window", "16", "--calib-samples", "2"])
    _one_line_error(rc, out, err, "eval", "scheme w8a8 + smooth a=0.5: smoothing failed: smooth_: found no supported "
                    "transformer block in BertForMaskedLM", "before reading the weights")


def test_help_lists_scale_policy(capsys):
    for cmd in ("quantize", "eval"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        flat = " ".join(capsys.readouterr().out.split())
        assert "--scale-policy {m2,m1,free}" in flat and "the scale_policy option of w4a8-fp (default: m2)" in flat
        assert "[--group-size, default auto] [--scale-policy]" in flat  # w4a8-fp's line of the epilog
        assert "(default: auto, per layer the largest of 128 / 64 / 32" in flat


def test_auto_group_size_from_the_command_line(m192, tmp_path):
    """The same through ``python -m zqkernels`` (absolute PYTHONPATH: the package from this checkout)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "python")}
    r = subprocess.run([sys.executable, "-m", "zqkernels", "eval", m192["dir"], "--text", m192["text"], "--scheme",
                        "w4/8", *_EV], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, check=False)
    assert r.returncode == 0, r.stderr
    # the preset's w4a8 part (the MLP, per Linear: gate, up in 192, down in 256) is auto; w8a8 has none
    assert ("group size auto (the largest of 128 / 64 / 32 each layer takes): 128 for 2 GEMMs, 64 for 4 GEMMs "
            "(in_features 192 % 128 != 0), 32 for 0 GEMMs") in r.stdout.splitlines(), r.stdout
