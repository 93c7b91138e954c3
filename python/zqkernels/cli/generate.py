"""``python -m zqkernels generate-bench MODEL_DIR``: HF ``generate`` with a static KV cache on the float
model and on the quantized one, side by side: prefill ms, decode tokens/s, memory (the recipe a user
follows, docs/GENERATE.md).

The recipe, per model: a ``StaticCache`` of prompt + new tokens (fixed shapes, so the decode step can
be captured), greedy ``generate`` with exactly --new-tokens tokens (min_new_tokens: no early EOS).
--mode compile (the default on a GPU) lets ``generate`` compile its decode step (transformers'
auto-compile of a static cache: torch.compile mode "reduce-overhead", i.e. CUDA graphs; the prefill
runs eagerly); eager passes ``disable_compile=True``; on the CPU it is eager only.

Timing: each repeat runs ``generate`` once with 1 new token (prefill + the first token) and once with
--new-tokens; prefill = the median of the first, decode tokens/s = batch * (new - 1) / (median of the
second - median of the first). Memory: the model's parameters and buffers, the KV cache, and on a GPU
the peak allocated during the timed runs (``torch.cuda.max_memory_allocated``, the model included:
one model is on the GPU at a time, the float one first, then converted in place or freed).
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..nn import blocks_base
from ..nn.blocks_base import DECODE_ATTENTION, DECODE_MODES, decode_attention_mode
from .common import (
    DTYPES,
    CLIError,
    add_command,
    conversion_flags_given,
    conversion_options,
    default_device,
    fmt_s,
    positive,
    say,
    verb,
)
from .convert import Conversion, calibration
from .load import checkpoint_label, is_quantized_dir, load_float, local_source
from .precheck import check_conversion

MODES = ("auto", "eager", "compile")


def add_parser(sub: Any) -> None:
    """Register the generate-bench subcommand on the subparsers action `sub`."""
    g = add_command(
        sub, "generate-bench", help="HF generate with a static cache: float vs quantized, prefill and decode speed",
        description="Run transformers' generate (greedy, static KV cache; its decode step compiled with CUDA graphs "
        "on a GPU, eager on the CPU) on the float model and on the quantized one, and report prefill ms, decode "
        "tokens/s and memory side by side (progress on stderr). MODEL_DIR is a float causal LM (quantized here, "
        "--scheme w8a8 by default) or a directory written by `quantize` (then --float MODEL_DIR adds the float "
        "side).", default_scheme="for a float MODEL_DIR",
    )
    g.add_argument("model_dir", metavar="MODEL_DIR", help="a float causal LM (local transformers directory or .gguf "
                   "file), or a directory written by `quantize`")
    g.add_argument("--float", dest="float_dir", default=None, metavar="MODEL_DIR",
                   help="the float model when MODEL_DIR was written by `quantize` (default: the quantized side only)")
    g.add_argument("--prompt-len", type=positive, default=128, metavar="T", help="prompt tokens (default: 128)")
    g.add_argument("--text", default=None, metavar="FILE",
                   help="take the prompts from this UTF-8 text (consecutive --prompt-len token windows, one per "
                   "sequence; needs the model's tokenizer; default: random token ids, seed 0)")
    g.add_argument("--new-tokens", type=positive, default=64, metavar="N",
                   help="tokens generated per sequence, at least 2 (default: 64)")
    g.add_argument("--batch", type=positive, default=1, metavar="B", help="sequences per generate call (default: 1)")
    g.add_argument("--repeats", type=positive, default=3, metavar="R", help="timed repeats, median taken (default: 3)")
    g.add_argument("--mode", default="auto", choices=MODES,
                   help="auto: compile on a GPU, eager on the CPU; compile: generate's compiled decode step "
                   "(torch.compile reduce-overhead: CUDA graphs; GPU only); eager: no compilation")
    g.add_argument("--plot", default=None, metavar="PATH.png", help="write a bar chart here (needs matplotlib)")
    g.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    conversion_options(g, default_scheme=None)
    g.add_argument("--dtype", default=None, choices=tuple(DTYPES),
                   help="dtype of the float model (default: bfloat16 on a GPU, float32 on the CPU; auto: as saved)")
    g.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="where the models run (default: cuda where the zqkernels kernels run, else cpu)")
    g.add_argument("--decode-attention", default=None, choices=DECODE_MODES,
                   help="how the quantized model's fused blocks attend at one-token steps (default: the library's, "
                   f"'{DECODE_ATTENTION}'); 'kernel' runs zqkernels.decode_attention on a GPU, 'auto' does up to 16 "
                   "sequences (docs/FUSED.md, "
                   "\"Decode attention\")")


# -- checks before anything loads ------------------------------------------------------------------


def _check(args: argparse.Namespace, quantized_dir: bool, device: str) -> tuple[Optional[Conversion], str]:
    """Refuse bad options; -> (the conversion for a float MODEL_DIR or None, the resolved mode)."""
    if args.new_tokens < 2:
        raise CLIError(f"--new-tokens must be at least 2 (decode tokens/s needs a step after the first token), got "
                       f"{args.new_tokens}")
    mode = args.mode if args.mode != "auto" else ("compile" if device == "cuda" else "eager")
    if mode == "compile" and device != "cuda":
        raise CLIError("--mode compile needs --device cuda (generate compiles its decode step with CUDA graphs); "
                       "on the CPU generate-bench runs eagerly")
    for opt, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None and not Path(path).expanduser().resolve().parent.is_dir():
            raise CLIError(f"{opt} {path!r}: the directory {str(Path(path).expanduser().parent)!r} does not exist")
    if quantized_dir:
        given = conversion_flags_given(args)
        if given:
            raise CLIError(f"MODEL_DIR {args.model_dir!r} is already quantized: {' / '.join(given)} {verb(given)} "
                           "to a float MODEL_DIR (converted here)")
        if args.float_dir is not None:
            local_source(args.float_dir, "--float")
        elif args.dtype is not None:
            raise CLIError("--dtype applies to the float model (a float MODEL_DIR or --float), and none is given")
        _check_length(Path(args.model_dir), {}, args)
        return None, mode
    root, kw = local_source(args.model_dir)
    if args.float_dir is not None:
        raise CLIError("--float applies when MODEL_DIR is a quantized checkpoint (written by `quantize`)")
    _check_length(root, kw, args)
    if args.scheme is None:
        args.scheme = "w8a8"
    return Conversion(args), mode


def _check_length(root: Path, kw: dict[str, Any], args: argparse.Namespace) -> None:
    """--prompt-len + --new-tokens within the model's max_position_embeddings (from its config)."""
    import transformers

    try:
        cfg = transformers.AutoConfig.from_pretrained(root, local_files_only=True, **kw)
    except Exception:  # noqa: BLE001 - the model load reports a bad config
        return
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    limit = getattr(cfg, "max_position_embeddings", None)
    total = args.prompt_len + args.new_tokens
    if isinstance(limit, int) and total > limit:
        raise CLIError(f"--prompt-len {args.prompt_len} + --new-tokens {args.new_tokens} = {total} is more than the "
                       f"model's max_position_embeddings ({limit})")


# -- the measurement -------------------------------------------------------------------------------


def _nbytes(model: nn.Module) -> int:
    seen, n = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.device.type != "meta" else id(t)
        if key not in seen:
            seen.add(key)
            n += t.numel() * t.element_size()
    return n


def _cache_bytes(cache: Any) -> Optional[int]:
    try:
        ts = [t for layer in cache.layers for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
              if isinstance(t, torch.Tensor)]
    except (AttributeError, TypeError):
        return None
    return sum(t.numel() * t.element_size() for t in ts) or None


class _Progress:
    """A tqdm bar on stderr (or one line per step where tqdm is missing)."""

    def __init__(self, total: int, desc: str) -> None:
        self.n, self.total, self.desc = 0, total, desc
        try:
            from tqdm.auto import tqdm

            self.bar: Any = tqdm(total=total, desc=desc, unit="call", file=sys.stderr, leave=False)
        except ImportError:
            self.bar = None

    def step(self, what: str) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=False)
            self.bar.update(1)
        else:
            print(f"generate-bench: {self.desc}: {self.n}/{self.total} {what}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _pad_id(model: nn.Module) -> int:
    gc = getattr(model, "generation_config", None)
    for v in (getattr(gc, "pad_token_id", None), getattr(gc, "eos_token_id", None)):
        v = v[0] if isinstance(v, (list, tuple)) and v else v
        if isinstance(v, int):
            return v
    return 0


@torch.no_grad()
def measure(model: nn.Module, ids: torch.Tensor, new_tokens: int, repeats: int, mode: str, label: str) -> dict[str, Any]:
    """Time ``generate`` on `model` (greedy, StaticCache of prompt + new tokens, exactly `new_tokens`
    tokens); -> {"prefill_ms", "decode_tok_s", "model_bytes", "cache_bytes", "peak_bytes", "tokens", ...}."""
    from transformers import StaticCache

    device = ids.device
    cuda = device.type == "cuda"
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + new_tokens)
    # transformers 5 names generate's cache argument `cache`, 4.x `past_key_values`
    key = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    kw: dict[str, Any] = {"do_sample": False, "pad_token_id": _pad_id(model), key: cache,
                          "disable_compile": mode != "compile"}

    def run(n: int) -> tuple[float, torch.Tensor]:
        cache.reset()
        if cuda:
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t, out

    warm = 2 if mode == "compile" else 1
    bar = _Progress(warm * 2 + repeats * 2, label)
    try:
        for i in range(warm):  # compiles (mode compile), allocates the cache, warms the allocator
            run(1)
            bar.step(f"warm-up {i + 1}/{warm}: prefill")
            run(new_tokens)
            bar.step(f"warm-up {i + 1}/{warm}: {new_tokens} tokens")
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t1, tn, out = [], [], None
        for r in range(repeats):
            t1.append(run(1)[0])
            bar.step(f"repeat {r + 1}/{repeats}: prefill")
            s, out = run(new_tokens)
            tn.append(s)
            bar.step(f"repeat {r + 1}/{repeats}: {new_tokens} tokens")
    finally:
        bar.close()
    m1, mn = statistics.median(t1), statistics.median(tn)
    decode_s = mn - m1
    return {
        "prefill_ms": m1 * 1e3,
        "generate_ms": mn * 1e3,
        "decode_tok_s": ids.shape[0] * (new_tokens - 1) / decode_s if decode_s > 0 else None,
        "model_bytes": _nbytes(model),
        "cache_bytes": _cache_bytes(cache),
        "peak_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "prefill_runs_ms": [s * 1e3 for s in t1], "generate_runs_ms": [s * 1e3 for s in tn],
        "tokens": out[:, ids.shape[1]:].tolist() if out is not None else None,
    }


def _same_prefix(a: Optional[list[list[int]]], b: Optional[list[list[int]]]) -> Optional[int]:
    """Leading generated tokens two runs agree on (the smallest over the batch)."""
    if not a or not b:
        return None
    n = []
    for x, y in zip(a, b):
        k = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        n.append(k)
    return min(n)


# -- the command ---------------------------------------------------------------------------------


def _mib(b: Optional[int]) -> str:
    return f"{b / 2**20:.1f}" if b else "n/a"


def _table(rows: list[dict[str, Any]], log: Callable[[str], None]) -> None:
    log(f"{'model':<30} {'prefill ms':>11} {'decode tok/s':>13} {'model MiB':>10} {'KV cache MiB':>13} {'peak MiB':>9}")
    for r in rows:
        tok = f"{r['decode_tok_s']:.1f}" if r["decode_tok_s"] else "n/a"
        log(f"{r['label']:<30} {r['prefill_ms']:11.2f} {tok:>13} {_mib(r['model_bytes']):>10} "
            f"{_mib(r['cache_bytes']):>13} {_mib(r['peak_bytes']):>9}")


def _ratios(f: dict[str, Any], q: dict[str, Any]) -> dict[str, Optional[float]]:
    """Quantized vs float: speedups (> 1: the quantized model is faster) and memory fractions."""
    def div(a: Any, b: Any) -> Optional[float]:
        return a / b if a and b else None

    return {"prefill_speedup": div(f["prefill_ms"], q["prefill_ms"]), "decode_speedup": div(q["decode_tok_s"], f["decode_tok_s"]),
            "model_bytes": div(q["model_bytes"], f["model_bytes"]), "peak_bytes": div(q["peak_bytes"], f["peak_bytes"])}


def cmd_generate_bench(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    quantized_dir = is_quantized_dir(args.model_dir)
    device = default_device(args.device)
    conv, mode = _check(args, quantized_dir, device)
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    res: dict[str, Any] = {"model_dir": str(args.model_dir), "device": device, "mode": mode, "batch": args.batch,
                           "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats}
    if conv is not None:
        t = time.perf_counter()
        _, what = check_conversion(*local_source(args.model_dir), dtype, conv)
        say(f"conversion check ({conv.label}, on {what}): ok in {fmt_s(time.perf_counter() - t)}")
        if args.calib:
            from .load import read_text

            read_text(args.calib, "--calib")

    ids: Optional[torch.Tensor] = None
    if args.text is not None:  # before any model loads: the tokenizer, and enough text
        ids = _text_prompts(args, quantized_dir)

    def prompt(model: nn.Module) -> torch.Tensor:
        nonlocal ids
        if ids is None:
            vocab = int(getattr(model.config, "vocab_size", 0) or 0) or 256
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(0, vocab, (args.batch, args.prompt_len), generator=g)
        return ids.to(device)

    rows: list[dict[str, Any]] = []
    src = f"from {Path(args.text).name}" if args.text is not None else "random ids"
    say(f"generate: batch {args.batch}, prompt {args.prompt_len} tokens ({src}), {args.new_tokens} new tokens, "
        f"static cache, {mode} on {device}, median of {args.repeats}"
        + (f"; decode attention '{args.decode_attention}'" if args.decode_attention else ""))

    res["decode_attention"] = args.decode_attention or blocks_base.DECODE_ATTENTION

    def bench(model: nn.Module, label: str, side: str) -> None:
        with decode_attention_mode(args.decode_attention if side == "quantized" else None):
            r = measure(model, prompt(model), args.new_tokens, args.repeats, mode, label)
        r.update(label=label, side=side)
        rows.append(r)
        tok = f"{r['decode_tok_s']:.1f} tok/s" if r["decode_tok_s"] else "n/a"
        say(f"  {label}: prefill {r['prefill_ms']:.2f} ms, decode {tok}")

    float_label = f"float ({dtype if dtype != 'auto' else 'as saved'})"
    if conv is not None:
        t = time.perf_counter()
        model, tok = load_float(args.model_dir, dtype, device, causal=True)
        say(f"loaded {type(model).__name__} from {args.model_dir} in {fmt_s(time.perf_counter() - t)}")
        _require_generate(model)
        bench(model, float_label, "float")
        calib = calibration(conv, args, tok, device)
        t = time.perf_counter()
        conv.convert(model, calib, sys.stderr.isatty(), say)  # in place: one model on the device at a time
        _free(device)
        say(f"converted in place: {conv.label} in {fmt_s(time.perf_counter() - t)}")
        bench(model.eval(), conv.label, "quantized")
    else:
        import zqkernels

        if args.float_dir is not None:
            t = time.perf_counter()
            model_f, _ = load_float(args.float_dir, dtype, device, causal=True, what="--float")
            say(f"loaded float {type(model_f).__name__} from {args.float_dir} in {fmt_s(time.perf_counter() - t)}")
            _require_generate(model_f)
            bench(model_f, float_label, "float")
            del model_f
            _free(device)
        t = time.perf_counter()
        try:
            model = zqkernels.load_quantized(args.model_dir).to(device).eval()
        except (NotImplementedError, ValueError) as e:
            raise CLIError(f"load_quantized: {e}") from e
        say(f"loaded quantized {type(model).__name__} from {args.model_dir} in {fmt_s(time.perf_counter() - t)}")
        _require_generate(model)
        bench(model, checkpoint_label(model), "quantized")

    say("")
    _table(rows, say)
    res["results"] = rows
    if len(rows) == 2:
        res["quantized_vs_float"] = rq = _ratios(rows[0], rows[1])
        rq["same_tokens"] = _same_prefix(rows[0]["tokens"], rows[1]["tokens"])
        fx = {k: f"{v:.2f}x" if v else "n/a" for k, v in rq.items() if k != "same_tokens"}
        say(f"quantized / float: prefill speed {fx['prefill_speedup']}, decode speed {fx['decode_speedup']} (> 1: "
            f"faster), model bytes {fx['model_bytes']}, peak memory {fx['peak_bytes']}; greedy tokens identical for "
            f"the first {rq['same_tokens']} of {args.new_tokens}")
    if any(r["decode_tok_s"] is None for r in rows):
        say("(decode tok/s n/a: the N-token calls took no longer than the 1-token ones; timing noise, raise --repeats "
            "or --new-tokens)")
    if device == "cpu":
        say("(CPU: the quantized model runs the pure-torch reference ops, not the kernels; peak memory is measured "
            "on a GPU only)")
    if args.plot:
        from .plot import plot_generate

        why = plot_generate(rows, args.plot, f"{Path(args.model_dir).name}: generate, {mode} on {device}, batch "
                            f"{args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens")
        say(f"plot: {why}" if why else f"plot written to {args.plot}")
    res["total_s"] = time.perf_counter() - t0
    if args.json:
        Path(args.json).expanduser().write_text(json.dumps(res, indent=2) + "\n")
    say(f"total time {fmt_s(res['total_s'])}")
    return 0


def _text_prompts(args: argparse.Namespace, quantized_dir: bool) -> torch.Tensor:
    """[batch, prompt_len] token ids: consecutive windows of --text, tokenized with MODEL_DIR's tokenizer
    (or --float's)."""
    from .load import read_text, token_ids, token_windows, tokenizer_or_why

    text = read_text(args.text, "--text")
    tried = [("MODEL_DIR", Path(args.model_dir), {}) if quantized_dir else ("MODEL_DIR", *local_source(args.model_dir))]
    if quantized_dir and args.float_dir is not None:
        tried.append(("--float", *local_source(args.float_dir, "--float")))
    whys = []
    for what, root, kw in tried:
        tok, why = tokenizer_or_why(root, kw)
        if tok is not None:
            win = token_windows(token_ids(tok, text), args.prompt_len, args.batch, f"--text {args.text!r}")
            if win.shape[0] < args.batch:
                raise CLIError(f"--text {args.text!r} has {win.shape[0]} windows of {args.prompt_len} tokens, fewer "
                               f"than --batch {args.batch}")
            return win
        whys.append(f"{what}: {why}")
    raise CLIError(f"--text needs the model's tokenizer, and none loads ({'; '.join(whys)})")


def _require_generate(model: nn.Module) -> None:
    if not hasattr(model, "generate") or getattr(model, "config", None) is None:
        raise CLIError(f"{type(model).__name__} has no generate(): generate-bench needs a causal language model")


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
