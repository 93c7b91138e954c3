"""--lm-head {skip,w8,scheme} of ``quantize`` / ``eval`` (issue 19, item 3): lm_head stays float by
default; w8 / scheme quantize it, the choice is checked before any weight is read, shown in the
conversion summary, recorded in the checkpoint (load_quantized restores it) and in the eval label.
A tied lm_head (SmolLM2: lm_head.weight is embed_tokens.weight) is untied: the embedding stays float."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import one_line_error, run_cli

pytest.importorskip("transformers")

_WORDS = "the of and to a in was her it i that she not be as you he had his with for".split()


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """A 2-layer Llama whose lm_head is tied to embed_tokens (as SmolLM2's), a word-level tokenizer
    and a text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("lmhead")
    d = root / "tied"
    (root / "text.txt").write_text(" ".join(_WORDS[(i * 7 + i // 3) % len(_WORDS)] for i in range(1200)))
    tk = Tokenizer(models.WordLevel({"<unk>": 0, **{w: i + 1 for i, w in enumerate(_WORDS)}}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(d)
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>").save_pretrained(d)
    return {"dir": str(d), "text": str(root / "text.txt"), "embed": model.model.embed_tokens.weight.detach().clone()}


def _summary_line(out: str) -> str:
    return next(ln for ln in out.splitlines() if ln.startswith("--lm-head "))


def test_default_keeps_lm_head_float_and_tied(capsys, tied, tmp_path):
    import zqkernels

    rc, out, err = run_cli(capsys, ["quantize", tied["dir"], "--out", str(tmp_path / "q")])
    assert rc == 0, err
    assert _summary_line(out).startswith("--lm-head skip (the default): lm_head stays in float")
    assert "weight tied to input embedding 'model.embed_tokens'" in out
    assert "lm_head" not in json.loads((tmp_path / "q" / "zqkernels_cli.json").read_text())  # skip: not recorded
    m = zqkernels.load_quantized(tmp_path / "q")
    assert isinstance(m.lm_head, torch.nn.Linear) and m.lm_head.weight is m.model.embed_tokens.weight


@pytest.mark.parametrize("choice, scheme, want", [("w8", "w8a8", "w8a8"), ("w8", "w4a8", "w8a8"),
                                                  ("scheme", "w4a8", "w4a8")])
def test_quantized_lm_head_round_trip_keeps_the_embedding(capsys, tied, tmp_path, choice, scheme, want):
    import zqkernels
    from zqkernels import QLinear

    out_dir = tmp_path / "q"
    rc, out, err = run_cli(capsys, ["quantize", tied["dir"], "--scheme", scheme, "--lm-head", choice, "--out", str(out_dir)])
    assert rc == 0, err
    assert f"checkpoint check ({scheme}" in out and f"lm_head={choice}" in out
    line = _summary_line(out)
    assert line.startswith(f"--lm-head {choice}: lm_head quantized, {want}"), line
    assert "tied to 'model.embed_tokens', which stays float (untied)" in line
    assert json.loads((out_dir / "zqkernels_cli.json").read_text())["lm_head"] == choice
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False  # no loader ties the float embedding to the quantized head again
    assert "lm_head" in json.loads((out_dir / "zqkernels.json").read_text())["quantized"]

    m = zqkernels.load_quantized(out_dir)
    assert isinstance(m.lm_head, QLinear) and m.lm_head.scheme == want and not m.training
    torch.testing.assert_close(m.model.embed_tokens.weight, tied["embed"], rtol=0, atol=0)  # the embedding: float, unchanged
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tied["dir"]).eval()
    x = torch.randint(1, 64, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        yf, yq = ref(x).logits, m(x).logits
    assert ((yq - yf).norm() / yf.norm()).item() < (0.3 if scheme == "w4a8" else 0.05)  # random weights: w4a8 is coarse
    assert torch.equal(ref.model.embed_tokens.weight, tied["embed"])


def test_python_api_quantizing_a_tied_lm_head_leaves_the_embedding(tied):
    """The library rule the CLI relies on: module_configs={"lm_head": cfg} converts a tied lm_head to a
    QLinear with its own buffers; the nn.Embedding keeps its float Parameter."""
    import zqkernels
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tied["dir"]).eval()
    emb = m.model.embed_tokens.weight
    zqkernels.quantize_(m, zqkernels.W8A8Config(), module_configs={"lm_head": zqkernels.W8A8Config()})
    assert isinstance(m.lm_head, zqkernels.QLinear)
    assert m.model.embed_tokens.weight is emb and torch.equal(emb, tied["embed"])


def test_eval_labels_and_json(capsys, tied, tmp_path):
    js = tmp_path / "r.json"
    argv = ["--text", tied["text"], "--window", "32", "--max-windows", "3"]
    rc, out, err = run_cli(capsys, ["eval", tied["dir"], "--lm-head", "w8", "--json", str(js), *argv])
    assert rc == 0, err
    assert "w8a8 lm_head=w8 " in out and _summary_line(out).startswith("--lm-head w8: lm_head quantized, w8a8")
    res = json.loads(js.read_text())
    assert res["lm_head"] == "w8" and res["scheme"] == "w8a8 lm_head=w8"
    assert any(r["module"] == "lm_head" for r in res["layer_errors"])  # lm_head's own error is measured
    # the checkpoint: the label says so, read off the loaded model
    q = tmp_path / "q"
    assert run_cli(capsys, ["quantize", tied["dir"], "--lm-head", "w8", "--out", str(q)])[0] == 0
    rc, out, err = run_cli(capsys, ["eval", str(q), "--json", str(js), *argv])
    assert rc == 0, err
    assert "w8a8 lm_head=w8a8 (checkpoint)" in out and json.loads(js.read_text())["lm_head"] == "w8a8"


def test_bad_value_is_a_usage_error(capsys, tied, tmp_path):
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, ["quantize", tied["dir"], "--lm-head", "int4", "--out", str(tmp_path / "q")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--lm-head" in err and "invalid choice" in err and len(err.strip().splitlines()) == 1


def test_lm_head_on_a_quantized_checkpoint_is_an_error(capsys, tied, tmp_path):
    q = tmp_path / "q"
    assert run_cli(capsys, ["quantize", tied["dir"], "--out", str(q)])[0] == 0
    rc, out, err = run_cli(capsys, ["eval", str(q), "--text", tied["text"], "--window", "32", "--lm-head", "w8"])
    one_line_error(rc, out, err, "eval", "already quantized", "--lm-head")


def test_model_without_lm_head_fails_before_loading(capsys, tmp_path):
    """A model with no Linear named lm_head (BertModel): --lm-head w8 is refused by the conversion check on
    the one-layer copy, before the weights are read."""
    from transformers import BertConfig, BertModel

    d = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=64)).save_pretrained(d)
    capsys.readouterr()
    rc, out, err = run_cli(capsys, ["quantize", str(d), "--lm-head", "w8", "--out", str(tmp_path / "q")])
    line = one_line_error(rc, out, err, "quantize", "--lm-head w8: the model has no Linear named lm_head",
                          "before reading the weights")
    assert "loaded" not in out, line
    # and the default is fine
    assert run_cli(capsys, ["quantize", str(d), "--out", str(tmp_path / "q2")])[0] == 0


def test_help_lists_lm_head(capsys):
    for cmd in ("quantize", "eval"):
        with pytest.raises(SystemExit):
            run_cli(capsys, [cmd, "--help"])
        out = capsys.readouterr().out
        assert "--lm-head {skip,w8,scheme}" in out
