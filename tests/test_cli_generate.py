"""``python -m zqkernels generate-bench`` (issue 19, item 4) on the CPU with a tiny Llama built from its
config, and the generate() recipe of docs/GENERATE.md (its code block, run as written)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, run_cli

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parent.parent
FAST = ["--prompt-len", "8", "--new-tokens", "4", "--repeats", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer Llama (random weights, float32, max 64 positions) saved with save_pretrained, and its
    w8a8 checkpoint written by `quantize`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).eval().save_pretrained(root / "tiny")
    return {"dir": str(root / "tiny"), "root": root}


@pytest.fixture(scope="module")
def checkpoint(tiny):
    from zqkernels.__main__ import main

    out = tiny["root"] / "q"
    assert main(["quantize", tiny["dir"], "--out", str(out)]) == 0
    return str(out)


def test_float_model_side_by_side(capsys, tiny, tmp_path):
    js = tmp_path / "g.json"
    rc, out, err = run_cli(capsys, ["generate-bench", tiny["dir"], "--json", str(js), "--plot", str(tmp_path / "g.png"),
                                    *FAST])
    assert rc == 0, err
    assert "static cache, eager on cpu" in out and "conversion check (w8a8" in out
    table = out[out.index("prefill ms"):]
    # decode tok/s is n/a when timing noise (a shared CPU, 1 repeat) makes the 4-token call look faster than the
    # 1-token one
    assert re.search(r"^float \(float32\)\s+\d+\.\d+\s+(\d+\.\d|n/a)", table, re.M), table
    assert re.search(r"^w8a8\s+\d+\.\d+\s+(\d+\.\d|n/a)", table, re.M), table
    assert "quantized / float: prefill speed" in out and "greedy tokens identical for the first" in out
    assert "plot" in out  # written, or why not (no matplotlib)
    assert "float (float32)" in err and "w8a8" in err  # the progress bars (or lines) on stderr
    res = json.loads(js.read_text())
    assert res["mode"] == "eager" and res["device"] == "cpu" and len(res["results"]) == 2
    f, q = res["results"]
    assert f["side"] == "float" and q["side"] == "quantized" and q["label"] == "w8a8"
    for r in (f, q):
        assert r["prefill_ms"] > 0 and (r["decode_tok_s"] is None or r["decode_tok_s"] > 0) and r["peak_bytes"] is None
        assert len(r["tokens"]) == 1 and len(r["tokens"][0]) == 4  # exactly --new-tokens, no early EOS
    assert q["model_bytes"] < f["model_bytes"]  # int8 weights
    assert 0 <= res["quantized_vs_float"]["same_tokens"] <= 4


def test_scheme_and_lm_head_and_batch(capsys, tiny, tmp_path):
    js = tmp_path / "g.json"
    rc, out, err = run_cli(capsys, ["generate-bench", tiny["dir"], "--scheme", "w4a8", "--lm-head", "w8", "--batch", "2",
                                    "--json", str(js), *FAST])
    assert rc == 0, err
    q = json.loads(js.read_text())["results"][1]
    assert q["label"].startswith("w4a8") and "lm_head=w8" in q["label"]
    assert len(q["tokens"]) == 2


def test_decode_attention_option(capsys, tiny, tmp_path, monkeypatch):
    """--decode-attention: the quantized side's fused blocks attend that way (set while it runs,
    restored after), recorded in the JSON; an unknown mode is argparse's error."""
    from zqkernels.nn import blocks_base

    seen = []
    real = blocks_base.QuantizedBlock._sdpa

    def spy(self, *a, **kw):
        seen.append(blocks_base.DECODE_ATTENTION)
        return real(self, *a, **kw)

    monkeypatch.setattr(blocks_base.QuantizedBlock, "_sdpa", spy)
    js = tmp_path / "g.json"
    rc, out, err = run_cli(capsys, ["generate-bench", tiny["dir"], "--decode-attention", "packed", "--json", str(js),
                                    *FAST])
    assert rc == 0, err
    assert "decode attention 'packed'" in out
    assert json.loads(js.read_text())["decode_attention"] == "packed"
    assert seen and set(seen) == {"packed"}  # the fused blocks ran with it (only the quantized side has them)
    assert blocks_base.DECODE_ATTENTION == "auto"  # restored
    with pytest.raises(SystemExit):
        run_cli(capsys, ["generate-bench", tiny["dir"], "--decode-attention", "fast", *FAST])
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_prompts_from_a_text(capsys, tiny, tmp_path):
    """--text: the prompts are consecutive windows of the text (tokenizer needed); a text too short for
    --batch windows, or a model without a tokenizer, is a one-line error before loading."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    d = tmp_path / "withtok"
    shutil.copytree(tiny["dir"], d)
    words = "the of and to a in was her it".split()
    tk = Tokenizer(models.WordLevel({"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>").save_pretrained(d)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(words[i % len(words)] for i in range(20)))
    js = tmp_path / "g.json"
    rc, out, err = run_cli(capsys, ["generate-bench", str(d), "--text", str(text), "--batch", "2", "--json", str(js), *FAST])
    assert rc == 0, err
    assert "prompt 8 tokens (from t.txt)" in out
    rc, out, err = run_cli(capsys, ["generate-bench", str(d), "--text", str(text), "--batch", "3", *FAST])
    one_line_error(rc, out, err, "generate-bench", "fewer than --batch 3")
    rc, out, err = run_cli(capsys, ["generate-bench", tiny["dir"], "--text", str(text), *FAST])
    one_line_error(rc, out, err, "generate-bench", "--text needs the model's tokenizer")


def test_checkpoint_with_and_without_float(capsys, tiny, checkpoint, tmp_path):
    js = tmp_path / "g.json"
    rc, out, err = run_cli(capsys, ["generate-bench", checkpoint, "--float", tiny["dir"], "--json", str(js), *FAST])
    assert rc == 0, err
    res = json.loads(js.read_text())
    assert [r["side"] for r in res["results"]] == ["float", "quantized"]
    assert res["results"][1]["label"] == "w8a8 (checkpoint)" and "quantized_vs_float" in res
    rc, out, err = run_cli(capsys, ["generate-bench", checkpoint, "--json", str(js), *FAST])
    assert rc == 0, err
    res = json.loads(js.read_text())
    assert [r["side"] for r in res["results"]] == ["quantized"] and "quantized_vs_float" not in res


@pytest.mark.parametrize("extra, needles", [
    (["--new-tokens", "1"], ["--new-tokens must be at least 2"]),
    (["--mode", "compile"], ["--mode compile needs --device cuda"]),
    (["--prompt-len", "60", "--new-tokens", "8"], ["= 68 is more than the model's max_position_embeddings (64)"]),
    (["--scheme", "nope"], ["--scheme must be one of"]),
    (["--group-size", "64"], ["--group-size applies to the grouped schemes"]),
    (["--json", "/nonexistent_dir_zq/x.json"], ["--json", "does not exist"]),
    (["--float", "."], ["--float applies when MODEL_DIR is a quantized checkpoint"]),
])
def test_bad_options_are_one_line_errors_before_loading(capsys, tiny, extra, needles):
    argv = ["generate-bench", tiny["dir"], *FAST, *extra]  # the last of a repeated option wins
    rc, out, err = run_cli(capsys, argv)
    one_line_error(rc, out, err, "generate-bench", *needles)
    assert "loaded" not in out


def test_checkpoint_errors(capsys, checkpoint):
    rc, out, err = run_cli(capsys, ["generate-bench", checkpoint, "--scheme", "fp8", *FAST])
    one_line_error(rc, out, err, "generate-bench", "already quantized", "--scheme")
    rc, out, err = run_cli(capsys, ["generate-bench", checkpoint, "--dtype", "float32", *FAST])
    one_line_error(rc, out, err, "generate-bench", "--dtype applies to the float model")


def test_missing_model_and_usage_errors(capsys, tmp_path):
    rc, out, err = run_cli(capsys, ["generate-bench", str(tmp_path / "nope"), *FAST])
    one_line_error(rc, out, err, "generate-bench", "does not exist")
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, ["generate-bench", str(tmp_path), "--mode", "graphs"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help(capsys):
    from zqkernels.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "generate-bench" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["generate-bench", "--help"])
    out = capsys.readouterr().out
    assert all(f in out for f in ("--new-tokens", "--prompt-len", "--mode", "--plot", "--json", "--scheme", "--lm-head"))


def test_the_documented_recipe_runs(tiny):
    """docs/GENERATE.md's code block, as written, with MODEL_DIR pointing at the tiny model."""
    doc = (REPO / "docs" / "GENERATE.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    assert 'MODEL_DIR = "path/to/a/local/causal-lm"' in code
    code = code.replace('"path/to/a/local/causal-lm"', repr(tiny["dir"]))
    if torch.cuda.is_available():
        code = code.replace('"cuda" if torch.cuda.is_available() else "cpu"', '"cpu"')  # a CPU test
    ns: dict = {}
    exec(compile(code, "docs/GENERATE.md", "exec"), ns)  # noqa: S102 - our own documentation
    from zqkernels.nn import QuantizedBlock

    assert isinstance(ns["model"].model.layers[0], QuantizedBlock)
    assert ns["out"].shape == (1, 32 + 16)
