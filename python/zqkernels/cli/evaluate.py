"""``python -m zqkernels eval MODEL_DIR --text FILE``: perplexity of the float model and the quantized one
over non-overlapping windows of FILE, the time each took, and the relative output error of every
quantized Linear (PNG plot). MODEL_DIR is a float model (converted here, as `quantize` would) or a
directory `quantize` wrote (then --float gives the float reference)."""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .common import (
    CONVERSION_FILE,
    ERROR_WINDOWS,
    CLIError,
    add_command,
    conversion_flags_given,
    conversion_options,
    default_device,
    device_options,
    fmt_s,
    positive,
    say,
    verb,
)
from .convert import Conversion, calibration
from .load import (
    checkpoint_label,
    is_quantized_dir,
    load_float,
    local_source,
    read_text,
    token_ids,
    token_windows,
    tokenizer_or_why,
)
from .perplexity import layer_errors, perplexity
from .plot import plot_errors
from .precheck import check_conversion
from .stats import Z95, paired_nll_diff


def add_parser(sub: Any) -> None:
    """Register the eval subcommand on the subparsers action `sub`."""
    e = add_command(
        sub, "eval", help="perplexity and per-layer error, float vs quantized",
        description="Perplexity of the float model and the quantized one on the text FILE (non-overlapping "
        "windows), with the time each took, and the relative output error of every quantized Linear on the "
        "float model's inputs (--plot draws it). MODEL_DIR is a float model (quantized here, --scheme w8a8 by "
        "default) or a directory written by `quantize` (then --float MODEL_DIR adds the float reference).",
        default_scheme="for a float MODEL_DIR",
    )
    e.add_argument("model_dir", metavar="MODEL_DIR", help="a float model (local transformers directory or .gguf "
                   "file), or a directory written by `quantize`")
    e.add_argument("--text", required=True, metavar="FILE", help="evaluation text, UTF-8 (required)")
    e.add_argument("--float", dest="float_dir", default=None, metavar="MODEL_DIR",
                   help="the float model when MODEL_DIR was written by `quantize`: adds the float perplexity and "
                   "the per-layer errors")
    e.add_argument("--window", type=positive, default=1024, metavar="T", help="tokens per window (default: 1024)")
    e.add_argument("--max-windows", type=positive, default=None, metavar="N",
                   help="evaluate the first N windows only (default: all of FILE)")
    e.add_argument("--batch", type=positive, default=1, metavar="B", help="windows per forward pass (default: 1)")
    e.add_argument("--error-windows", type=positive, default=None, metavar="N",
                   help=f"windows the per-layer error is measured on (needs the float model; default: {ERROR_WINDOWS})")
    e.add_argument("--plot", default=None, metavar="PATH.png",
                   help="write the per-layer error plot here (needs matplotlib; default: no plot)")
    e.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    conversion_options(e, default_scheme=None)
    device_options(e)


def _conversion_of_checkpoint(path: str) -> dict[str, Any]:
    """What `quantize` recorded in CONVERSION_FILE ({} for a checkpoint written otherwise)."""
    try:
        d = json.loads((Path(path) / CONVERSION_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _lm_head_of(model: nn.Module) -> str:
    """A loaded checkpoint's lm_head: its scheme, or "float"."""
    from ..nn import QLinear

    head = getattr(model, "lm_head", None)
    return head.scheme if isinstance(head, QLinear) else "float"


def _check_options(args: argparse.Namespace, quantized_dir: bool) -> Optional[Conversion]:
    """Refuse options that do not apply (before anything is loaded); -> the conversion for a float
    MODEL_DIR (--scheme defaults to w8a8), None for a quantized checkpoint."""
    if quantized_dir:
        conversion = conversion_flags_given(args)
        if conversion:
            raise CLIError(f"MODEL_DIR {args.model_dir!r} is already quantized: {' / '.join(conversion)} "
                           f"{verb(conversion)} to a float MODEL_DIR (converted here)")
        if args.float_dir is not None:
            local_source(args.float_dir, "--float")
        else:
            # what only the float reference uses
            if args.dtype != "auto":
                raise CLIError("--dtype applies to the float model (a float MODEL_DIR or --float), and none is given")
            if args.error_windows is not None:
                raise CLIError("--error-windows: the per-layer error needs the float model (--float MODEL_DIR)")
        return None
    local_source(args.model_dir)
    if args.float_dir is not None:
        raise CLIError("--float applies when MODEL_DIR is a quantized checkpoint (written by `quantize`)")
    if args.scheme is None:
        args.scheme = "w8a8"
    return Conversion(args)


def _tokenizer(args: argparse.Namespace, quantized_dir: bool) -> Any:
    """The tokenizer of MODEL_DIR (or of --float for a checkpoint saved without one); CLIError with
    transformers' reason if none loads."""
    tried = [("MODEL_DIR", Path(args.model_dir), {}) if quantized_dir else ("MODEL_DIR", *local_source(args.model_dir))]
    if quantized_dir and args.float_dir is not None:
        tried.append(("--float", *local_source(args.float_dir, "--float")))
    whys = []
    for what, root, kw in tried:
        tok, why = tokenizer_or_why(root, kw)
        if tok is not None:
            return tok
        whys.append(f"{what}: {why}")
    raise CLIError(f"no tokenizer loads from {' or '.join(w for w, _, _ in tried)} ({'; '.join(whys)})")


def _load_checkpoint(args: argparse.Namespace, device: str) -> tuple[nn.Module, Optional[nn.Module], str, Optional[float]]:
    """(quantized model, --float model or None, label, the --smooth alpha `quantize` recorded or None)."""
    import zqkernels

    t = time.perf_counter()
    try:
        model_q = zqkernels.load_quantized(args.model_dir)
    except (NotImplementedError, ValueError) as e:
        raise CLIError(f"load_quantized: {e}") from e
    model_q = model_q.to(device).eval()
    smoothed = _conversion_of_checkpoint(args.model_dir).get("smooth")
    if isinstance(smoothed, bool) or not isinstance(smoothed, (int, float)):
        smoothed = None
    label = checkpoint_label(model_q, smoothed)
    say(f"loaded quantized {type(model_q).__name__} from {args.model_dir} in {fmt_s(time.perf_counter() - t)}")
    model_f = None
    if args.float_dir is not None:
        t = time.perf_counter()
        model_f, _ = load_float(args.float_dir, args.dtype, device, causal=True, what="--float")
        say(f"loaded float {type(model_f).__name__} from {args.float_dir} in {fmt_s(time.perf_counter() - t)}")
    return model_q, model_f, label, smoothed


def _load_and_convert(
    args: argparse.Namespace, conv: Conversion, tok: Any, device: str, res: dict[str, Any]
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(float model as loaded, the per-layer error's reference, quantized copy); sets res["convert_s"].

    With --smooth the reference is a smoothed float copy and the quantized model a copy of that: it is
    LKD's teacher / LoRC's reference and the per-layer error's reference (its Linears' inputs are the
    smoothed ones the quantized Linears expect); the perplexity reference stays the model as loaded."""
    t = time.perf_counter()
    model_f, _ = load_float(args.model_dir, args.dtype, device, causal=True)
    say(f"loaded {type(model_f).__name__} from {args.model_dir} in {fmt_s(time.perf_counter() - t)}")
    calib = calibration(conv, args, tok, device)
    if calib is not None and Path(args.calib).resolve() == Path(args.text).resolve():
        say("note: the calibration text is the evaluation text (not held out)")
    t = time.perf_counter()
    times: dict[str, float] = {}
    model_ref = model_f
    if conv.smooth is not None:
        model_ref = copy.deepcopy(model_f)
        times["smooth"] = conv.smooth_float(model_ref, calib, say)
    model_q = copy.deepcopy(model_ref)
    # the conversion summary (what each module became, and why a layer fell back to per-Linear) as quantize prints it
    times.update(conv.convert(model_q, calib, sys.stderr.isatty(), say, float_model=model_ref))
    res["convert_s"] = time.perf_counter() - t
    what = "smoothed and quantized a copy" if conv.smooth is not None else "quantized a copy"
    say(f"{what}: {conv.label} in {fmt_s(res['convert_s'])} ({', '.join(f'{k} {fmt_s(v)}' for k, v in times.items())})")
    return model_f, model_ref, model_q


def _perplexities(
    args: argparse.Namespace, model_f: Optional[nn.Module], model_q: nn.Module, label: str, windows: torch.Tensor,
    device: str, res: dict[str, Any],
) -> None:
    """Measure and print the perplexity table (float, if given, and quantized): with the float model,
    the quantized model's ppl ratio and the paired standard error of the mean NLL difference over the
    windows (stats.py); res gets every window's mean NLL and token count."""
    table = []
    if model_f is not None:
        ppl, cnt, s, nll_f, toks = perplexity(model_f, windows, args.batch, device)
        table.append(("float", ppl, s, None))
        res["float"] = {"ppl": ppl, "seconds": s, "window_nll": nll_f, "window_tokens": toks}
    ppl, cnt, s, nll_q, toks = perplexity(model_q, windows, args.batch, device)
    res["quantized"] = {"ppl": ppl, "seconds": s, "window_nll": nll_q, "window_tokens": toks}
    st = None
    if model_f is not None:
        st = paired_nll_diff(nll_f, nll_q)
        res["quantized"]["vs_float"] = st
    table.append((label, ppl, s, st))
    res["predicted_tokens"] = cnt
    say("")
    vs = model_f is not None
    head = f"{'model':<36} {'perplexity':>10} "
    if vs:
        head += f"{'vs float':>9} {'dNLL +- SE':>19} {'ppl ratio [95%]':>24} "
    say(head + f"{'time':>9}")
    for name, p, s, st in table:
        row = f"{name:<36} {p:10.3f} "
        if vs:
            rel = f"{(p / table[0][1] - 1) * 100:+.2f}%" if st is not None else ""
            dn = ci = ""
            if st is not None:
                se = st["se"]
                dn = f"{st['mean_diff']:+.4f} +- " + (f"{se:.4f}" if se is not None else "n/a")
                ci = f"{st['ppl_ratio']:.4f}" + (f" [{st['ratio_low']:.4f}, {st['ratio_high']:.4f}]" if se is not None
                                                  else " [n/a]")
            row += f"{rel:>9} {dn:>19} {ci:>24} "
        say(row + f"{fmt_s(s):>9}")
    say(f"({cnt} predicted tokens per model)")
    if st is not None:
        say(f"(dNLL: mean over the {st['windows']} windows of the quantized minus the float model's mean NLL per token, "
            f"nats; SE paired over windows; ppl ratio exp(dNLL), interval exp(dNLL +- {Z95} SE)"
            + ("; one window: no SE" if st["se"] is None else "") + ")")


def _per_layer_error(
    args: argparse.Namespace, ref: nn.Module, smoothed_ref: bool, model_q: nn.Module, label: str,
    windows: torch.Tensor, device: str, res: dict[str, Any],
) -> None:
    """Measure and print the per-layer error on `windows` (ref: the float model whose Linear inputs are
    used, smoothed_ref: whether it is the smoothed copy); plot it with --plot."""
    t = time.perf_counter()
    rows, notes = layer_errors(ref, model_q, windows, device)
    res["layer_errors"] = rows
    res["layer_error_tokens"] = int(windows.numel())
    if rows:
        errs = sorted(r["rel_err"] for r in rows)
        worst = sorted(rows, key=lambda r: -r["rel_err"])[:5]
        say("")
        src = "smoothed float" if smoothed_ref else "float"
        say(f"per-layer relative output error ({len(rows)} quantized Linears, {windows.numel()} tokens of {src} "
            f"inputs): median {errs[len(errs) // 2]:.4f}, max {errs[-1]:.4f} ({fmt_s(time.perf_counter() - t)})")
        for r in worst:
            say(f"  {r['module']:<50} {r['scheme']:<16} {r['rel_err']:.4f}")
    for n in notes:
        say(f"  note: {n}")
    if args.plot:
        title = f"{Path(args.model_dir).name}: {label}, per-layer relative error"
        why = plot_errors(rows, args.plot, title) if rows else "no quantized Linear to plot"
        say(f"plot: {why}" if why else f"plot written to {args.plot}")


def cmd_eval(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    text = read_text(args.text, "--text")
    quantized_dir = is_quantized_dir(args.model_dir)
    conv = _check_options(args, quantized_dir)
    device = default_device(args.device)
    res: dict[str, Any] = {"model_dir": str(args.model_dir), "text": str(args.text), "window": args.window, "device": device}
    if conv is not None and args.calib:
        read_text(args.calib, "--calib")

    # the tokenizer and the windows first: a text too short fails before any model is loaded
    tok = _tokenizer(args, quantized_dir)
    ids = token_ids(tok, text)
    windows = token_windows(ids, args.window, args.max_windows, f"--text {args.text!r}")
    error_windows = args.error_windows or ERROR_WINDOWS
    if error_windows > windows.shape[0]:
        raise CLIError(f"--error-windows {error_windows} is more than the {windows.shape[0]} windows evaluated")
    res["tokens"] = int(ids.numel())
    res["windows"] = int(windows.shape[0])
    if conv is not None:
        # every option checked before a weight is read, as quantize does: the conversion (smoothing /
        # scheme / GPTQ / LKD / LoRC) on a one-layer copy of the architecture, built from its config
        t = time.perf_counter()
        _, what = check_conversion(*local_source(args.model_dir), args.dtype, conv)
        say(f"conversion check ({conv.label}, on {what}): ok in {fmt_s(time.perf_counter() - t)}")

    smoothed = None
    if conv is None:
        model_q, model_f, label, smoothed = _load_checkpoint(args, device)
        model_ref = model_f
        res["convert_s"] = None
    else:
        model_f, model_ref, model_q = _load_and_convert(args, conv, tok, device, res)
        label = conv.label
    res["scheme"] = label
    res["lm_head"] = conv.lm_head if conv is not None else _lm_head_of(model_q)
    say(f"text: {ids.numel()} tokens; {windows.shape[0]} non-overlapping windows of {args.window}")
    _perplexities(args, model_f, model_q, label, windows, device, res)

    if model_f is not None and smoothed is not None:
        # the checkpoint's Linears' weights carry the smoothing factors: the --float model's inputs to them
        # are not the (smoothed) inputs they expect, so the per-layer error would be meaningless
        say("")
        say(f"per-layer error: skipped (the checkpoint was smoothed, quantize --smooth {smoothed:g}, and the --float "
            "model's Linear inputs are not smoothed; eval the float MODEL_DIR with --smooth --calib instead)")
        if args.plot:
            say("plot: skipped (no per-layer error)")
    elif model_f is not None:
        _per_layer_error(args, model_ref, model_ref is not model_f, model_q, label, windows[:error_windows], device, res)
    elif args.plot:
        say("plot: skipped (the per-layer error needs the float model: --float MODEL_DIR)")
    res["total_s"] = time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    say(f"total time {fmt_s(res['total_s'])}")
    return 0
