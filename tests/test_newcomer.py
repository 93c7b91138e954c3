"""What a new user hit first (issue 20), CPU: the packages a .gguf file needs, named before any load;
why a recognised layer was not fused; the report of a loaded checkpoint; out_dtype passed where the
GEMMs take bias; the GPU tests' skip reasons; the command line's help."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch
import zqkernels
from conftest import HAVE_CUDA, gpu_skip_reason, requires_gpu
from zqkernels import _ext
from zqkernels.__main__ import main
from zqkernels.cli import evaluate, load, quantize

# ------------------------------------------------------------------------------------------------
# 1. the packages a model needs, checked before anything is loaded


def _missing(monkeypatch, *names):
    """importlib.util.find_spec says `names` are not installed, and gguf and accelerate are (whether
    they are here or not) unless named."""
    real = importlib.util.find_spec

    def find_spec(name, *a, **kw):
        if name in names:
            return None
        return object() if name in ("gguf", "accelerate") else real(name, *a, **kw)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _no_loading(monkeypatch):
    """Anything slow the commands would do first fails the test."""
    def boom(*a, **kw):
        raise AssertionError("loaded something before checking the packages")

    for mod, name in ((evaluate, "load_float"), (evaluate, "_tokenizer"), (quantize, "load_float"),
                      (quantize, "check_checkpoint")):
        monkeypatch.setattr(mod, name, boom)


def _error_line(capsys, argv):
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == "", (rc, cap.out, cap.err)
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in cap.err, cap.err
    return lines[0]


@pytest.fixture
def gguf_file(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")  # never read: the check comes first
    (tmp_path / "text.txt").write_text("some text")
    return str(f), str(tmp_path / "text.txt")


@pytest.mark.parametrize("command", ["eval", "quantize"])
def test_gguf_without_gguf_and_accelerate_names_both(capsys, monkeypatch, gguf_file, tmp_path, command):
    path, text = gguf_file
    _missing(monkeypatch, "gguf", "accelerate")
    _no_loading(monkeypatch)
    argv = [command, path] + (["--text", text] if command == "eval" else ["--out", str(tmp_path / "out")])
    line = _error_line(capsys, argv)
    assert line == (
        f"zqkernels {command}: MODEL_DIR {path!r} is a GGUF file, which transformers reads only with the packages "
        "gguf and accelerate; not installed here: gguf, accelerate (pip install gguf accelerate)"
    )
    assert not (tmp_path / "out").exists()


def test_gguf_names_only_what_is_missing(capsys, monkeypatch, gguf_file):
    path, text = gguf_file
    _missing(monkeypatch, "accelerate")
    monkeypatch.setattr(load, "_version", lambda m: (0, 17))
    _no_loading(monkeypatch)
    line = _error_line(capsys, ["eval", path, "--text", text])
    assert line.endswith("; not installed here: accelerate (pip install accelerate)"), line


def test_gguf_too_old(capsys, monkeypatch, gguf_file):
    path, text = gguf_file
    _missing(monkeypatch)
    monkeypatch.setattr(load, "_version", lambda m: (0, 9))
    _no_loading(monkeypatch)
    line = _error_line(capsys, ["eval", path, "--text", text])
    assert "gguf 0.9 is too old (transformers needs >= 0.10)" in line and line.endswith("(pip install --upgrade gguf)")


def test_float_reference_gguf_is_checked_too(capsys, monkeypatch, gguf_file, tmp_path):
    path, text = gguf_file
    _missing(monkeypatch, "gguf")
    monkeypatch.setattr(load, "_version", lambda m: None)
    _no_loading(monkeypatch)
    line = _error_line(capsys, ["eval", str(tmp_path), "--float", path, "--text", text])
    assert f"--float {path!r} is a GGUF file" in line and line.endswith("(pip install gguf)")


def test_every_model_needs_transformers(capsys, monkeypatch, tmp_path):
    _missing(monkeypatch, "transformers")
    _no_loading(monkeypatch)
    line = _error_line(capsys, ["quantize", str(tmp_path), "--out", str(tmp_path / "o")])
    assert line == ("zqkernels quantize: loading a model needs the package transformers; not installed here: "
                    "transformers (pip install transformers)")


def test_no_tokenizer_says_why(capsys, tmp_path):
    """A model directory without a tokenizer: the error carries transformers' reason."""
    transformers = pytest.importorskip("transformers")
    transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                             num_attention_heads=4).save_pretrained(tmp_path / "m")
    (tmp_path / "t.txt").write_text("text")
    line = _error_line(capsys, ["eval", str(tmp_path / "m"), "--text", str(tmp_path / "t.txt")])
    assert re.match(r"zqkernels eval: no tokenizer loads from MODEL_DIR \(MODEL_DIR: \w+.*\)$", line), line


# ------------------------------------------------------------------------------------------------
# 2. why a recognised layer was not fused; 3. the report of a loaded model


def _llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_module_configs_none_inside_a_block_says_why_not_fused():
    """README's example: the down projections left in float cost the fusion; the summary says so, and
    that the config's level already keeps them in float inside fused blocks."""
    m = _llama()
    s = zqkernels.quantize_(m, zqkernels.W8A8Config(level="balanced"), module_configs={"*.mlp.down_proj": None})
    text = str(s)
    assert text.splitlines()[0] == (
        "quantize_: 12 converted, 3 left in float, 2 recognised layers not fused (the notes say why)")
    notes = dict(s.notes)
    assert set(notes) == {"model.layers.0", "model.layers.1"}
    assert notes["model.layers.0"] == (
        "not fused: mlp.down_proj stays in float (module_configs['*.mlp.down_proj'] is None), and a fused block "
        "needs every Linear in it quantized with one config. level='balanced' already keeps the fc2 GEMM in "
        "float inside the fused block: drop the module_configs entry to fuse it")
    assert "model.layers.0  " in text and "not fused: mlp.down_proj" in text
    # with level "int8" the hint names the level that would keep the block fused
    s = zqkernels.quantize_(_llama(), zqkernels.W8A8Config(), module_configs={"*.mlp.down_proj": None})
    assert dict(s.notes)["model.layers.1"].endswith(
        "To fuse it with the fc2 GEMM in float, drop the module_configs entry and use level='balanced'")
    # mixed configs (ZeroQuant's W4/8): which config each Linear gets
    s = zqkernels.quantize_(_llama(), zqkernels.W8A8Config(), module_configs=zqkernels.ZEROQUANT_W4_8)
    note = dict(s.notes)["model.layers.0"]
    assert note.startswith("not fused: its Linears get different configs: W8A8Config (w8a8) for self_attn.q_proj")
    assert "W4A8Config (w4a8" in note and "mlp.down_proj" in note


def test_quantize_model_skip_inside_a_block_is_kept():
    """quantize_model(skip=...) naming a Linear of a recognised layer: the Linear stays float (the
    block is not fused, said so in the report) instead of being quantized inside a fused block."""
    m = zqkernels.quantize_model(_llama(), skip=["*.mlp.down_proj"])
    assert type(m.model.layers[0].mlp.down_proj) is torch.nn.Linear
    assert isinstance(m.model.layers[0].self_attn.q_proj, zqkernels.QLinear)
    rep = zqkernels.conversion_report(m)
    assert rep.splitlines()[0] == (
        "quantize_model: 0 fused blocks, 13 QLinears, 2 left in float, 2 not fused (see below); schemes: w8a8")
    assert re.search(r"^model\.layers\.0 +per-linear +not fused: mlp\.down_proj stays in float \(skipped by "
                     r"pattern\).*drop the skip pattern and use level='balanced'$", rep, re.M), rep


@pytest.mark.parametrize("module_configs", [None, {"*.mlp.down_proj": None}], ids=["fused", "per-linear"])
def test_loaded_model_reports_its_conversion(tmp_path, module_configs):
    m = _llama()
    zqkernels.quantize_(m, zqkernels.W8A8Config(level="balanced"), module_configs=module_configs)
    zqkernels.save_quantized(m, tmp_path)
    loaded = zqkernels.load_quantized(tmp_path)
    rep, rep0 = zqkernels.conversion_report(loaded), zqkernels.conversion_report(m)
    head, head0 = rep.splitlines()[0], rep0.splitlines()[0]
    assert head.startswith(f"load_quantized({str(tmp_path)!r}): ") and head0.startswith("quantize_: ")
    if module_configs is None:
        assert head.endswith(": 2 fused blocks (QLlamaDecoderLayer), 0 QLinears, 1 left in float; schemes: w8a8")
        assert head.split(": ", 1)[1] == head0.split(": ", 1)[1]
    else:
        assert head.endswith(": 0 fused blocks, 12 QLinears, 3 left in float; schemes: w8a8")

    def rows(r):  # module -> path column (the why column differs: "from Linear" / "from the checkpoint")
        return {ln.split()[0]: ln.split()[1] for ln in r.splitlines()[1:] if ln.split()[1] != "per-linear"}

    assert rows(rep) == rows(rep0)
    assert re.search(r"^lm_head +float +float in the checkpoint$", rep, re.M), rep
    if module_configs is None:
        fused = [ln for ln in rep.splitlines() if "fused QLlamaDecoderLayer" in ln]
        assert fused == [ln for ln in rep0.splitlines() if "fused QLlamaDecoderLayer" in ln]
        assert fused[0].endswith("level=qkv=int8, attn_out=int8, fc1=int8, fc2=float")


def test_unconverted_model_report():
    assert zqkernels.conversion_report(torch.nn.Linear(2, 2)) == "quantize_model has not converted this model"


# ------------------------------------------------------------------------------------------------
# 4. out_dtype where the GEMMs take bias

_I8, _F8, _U8 = torch.int8, torch.float8_e4m3fn, torch.uint8


def _gemm_calls(dev):
    """(op name, fn(out_dtype-or-whatever in the bias slot)) for every public GEMM wrapper. The
    operands need not be valid: the argument check comes first."""
    M, N, K = 4, 16, 128
    xi, wi = torch.zeros(M, K, dtype=_I8, device=dev), torch.zeros(N, K, dtype=_I8, device=dev)
    xf, wf = torch.zeros(M, K, device=dev).to(_F8), torch.zeros(N, K, device=dev).to(_F8)
    w4 = torch.zeros(N, K // 2, dtype=_U8, device=dev)
    sx, sw = torch.ones(M, device=dev), torch.ones(N, device=dev)
    sg = torch.ones(N, 1, dtype=torch.int32, device=dev)
    return [
        ("int8_gemm", lambda b: zqkernels.int8_gemm(xi, wi, sx, sw, b)),
        ("fp8_gemm", lambda b: zqkernels.fp8_gemm(xf, wf, sx, sw, b)),
        ("fp8_block_gemm", lambda b: zqkernels.fp8_block_gemm(xf, wf, torch.ones(M, 1, device=dev),
                                                              torch.ones(1, 1, device=dev), b)),
        ("w4a8_fp_gemm", lambda b: zqkernels.w4a8_fp_gemm(xf, w4, sx, sw, sg.to(_I8), b)),
        ("w4a8_gemm", lambda b: zqkernels.w4a8_gemm(xi, w4, sx, sw, sg, b)),
        ("w8a8_group_gemm", lambda b: zqkernels.w8a8_group_gemm(xi, wi, sx, sw, sg, b)),
    ]


_DEVICES = ["cpu", pytest.param("cuda", marks=requires_gpu)]


@pytest.mark.parametrize("dev", _DEVICES)
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "make_fx"])
def test_out_dtype_in_the_bias_slot_is_one_line(dev, traced):
    from torch.fx.experimental.proxy_tensor import make_fx

    for op, call in _gemm_calls(dev):
        for bad in (torch.float32, torch.bfloat16):
            msg = (f"{op}: bias must be a tensor [N] or None, got {bad} (out_dtype is the next argument: "
                   f"pass out_dtype={bad})")
            with pytest.raises(TypeError) as e:
                make_fx(lambda: call(bad))() if traced else call(bad)
            assert str(e.value) == msg
        with pytest.raises(TypeError, match=rf"^{op}: bias must be a tensor \[N\] or None, got str: x$"):
            call("x")


def test_out_dtype_in_the_bias_slot_under_torch_compile():
    xq, wq = torch.zeros(4, 32, dtype=_I8), torch.zeros(8, 32, dtype=_I8)
    f = torch.compile(lambda a, b, c, d: zqkernels.int8_gemm(a, b, c, d, torch.float16), backend="eager")
    with pytest.raises(TypeError, match=r"^int8_gemm: bias must be a tensor \[N\] or None, got torch.float16 "
                       r"\(out_dtype is the next argument: pass out_dtype=torch.float16\)$"):
        f(xq, wq, torch.ones(4), torch.ones(8))


def test_out_dtype_in_the_sg_slot():
    with pytest.raises(TypeError, match=r"^w4a8_gemm: sg must be a tensor \[N, K // group_size\] \(the group "
                       r"scales\), got torch.float32 \(bias and out_dtype come after it: pass out_dtype=torch.float32\)$"):
        zqkernels.w4a8_gemm(torch.zeros(4, 64, dtype=_I8), torch.zeros(16, 32, dtype=_U8), torch.ones(4),
                            torch.ones(16), torch.float32)


def test_a_valid_bias_still_works():
    xq, wq = torch.randint(-5, 5, (4, 32), dtype=_I8), torch.randint(-5, 5, (8, 32), dtype=_I8)
    bias = torch.ones(8, dtype=torch.float32)
    y = zqkernels.int8_gemm(xq, wq, torch.ones(4), torch.ones(8), bias, torch.float32)
    torch.testing.assert_close(y, (xq.float() @ wq.float().T) + 1)


# ------------------------------------------------------------------------------------------------
# 5. the GPU tests' skip reasons


class _StubC:
    def __init__(self, archs):
        self.archs = archs

    def gemm_kernels(self):
        return [(a, "int8_rowwise", "t", 0, True) for a in self.archs]


@pytest.mark.skipif(HAVE_CUDA, reason="checks the reason on a machine without a GPU")
def test_skip_reason_without_a_gpu():
    why = gpu_skip_reason()
    assert why is not None and why.startswith("no CUDA GPU"), why
    assert gpu_skip_reason((9, 0), "sm90", "FP8 kernels") == why  # the GPU is missing, not a capability
    if torch.version.cuda is None:
        assert why == "no CUDA GPU (this torch is built without CUDA)"


def test_skip_reasons_in_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_skip_reason((9, 0), "sm90").startswith("no CUDA GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_ext, "_C", None)
    assert gpu_skip_reason((9, 0), "sm90").startswith("this build has no CUDA kernels")
    monkeypatch.setattr(_ext, "_C", _StubC(["sm80"]))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert gpu_skip_reason() is None
    assert gpu_skip_reason((9, 0), "sm90", "FP8 kernels") == "FP8 kernels: needs compute capability 9.0 (found 8.0)"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert gpu_skip_reason((9, 0), "sm90", "backend sm90") == "backend sm90: this build has no sm90 kernels (it has sm80)"
    monkeypatch.setattr(_ext, "_C", _StubC(["sm80", "sm90"]))
    assert gpu_skip_reason((9, 0), "sm90", "FP8 kernels") is None


# ------------------------------------------------------------------------------------------------
# 6. the help


def _help(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["quantize", "eval"])
def test_command_help_reads_for_a_newcomer(capsys, command):
    out = _help(capsys, [command])
    flat = " ".join(out.split())
    assert "pip install gguf accelerate" in flat
    assert "schemes (--scheme S):" in out
    for name in zqkernels.SCHEMES:  # every scheme on its own line, with its description
        assert re.search(rf"^  {re.escape(name)} +\S", out, re.M), name
    assert "w8a8 int8 per-token activations x int8 per-channel weights (default" in flat
    for needle in ("(default: auto, per layer the largest of 128 / 64 / 32", "(with --calib; default: 512)", "(with --calib; default: 16)",
                   "(with --lkd-steps; default: mse)", "(default: auto, as saved;"):
        assert needle in flat, needle
    if command == "eval":
        for needle in ("(default: 1024)", "(default: all of FILE)", "(default: 1)", "default: w8a8 for a float MODEL_DIR"):
            assert needle in flat, needle
    else:
        assert "(listed below; default: w8a8)" in flat and "new or empty (required)" in flat


def test_main_help_one_line_per_command(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    lines = _help(capsys, []).splitlines()
    for cmd in ("info", "bench", "demo", "quantize", "eval"):
        i = next(i for i, ln in enumerate(lines) if re.match(rf"^    {cmd} +\S", ln))
        assert not lines[i + 1].startswith(" " * 8), (cmd, lines[i: i + 2])  # not wrapped
