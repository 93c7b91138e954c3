"""The conversion quantize and eval run: --scheme (see schemes.py) and smoothing / GPTQ / LKD / LoRC."""

from __future__ import annotations

import argparse
import copy
import fnmatch
import time
from typing import Any, Callable, Optional

from torch import nn

from . import schemes
from .common import CALIB_SAMPLES, CALIB_WINDOW, UNSET, CLIError, fmt_s, verb
from .load import read_text, token_ids, token_windows


class Conversion:
    """What --scheme and friends ask for: quantize_'s config and module_configs, and the extras."""

    def __init__(self, args: argparse.Namespace) -> None:
        scheme = args.scheme
        g_given = args.group_size is not UNSET
        # the CHOICE_OPTIONS flags (--scale-policy ...): None where not given
        self.options = {o: getattr(args, o, None) for o in schemes.CHOICE_OPTIONS}
        try:
            schemes.check_options(scheme, g_given, self.options)
        except ValueError as e:
            raise CLIError(str(e)) from e
        g = args.group_size if g_given else schemes.DEFAULT_GROUP_SIZE
        self.scheme, self.group_size = scheme, g
        self.gptq, self.lorc_rank, self.lkd_steps = args.gptq, args.lorc_rank, args.lkd_steps
        self.lkd_lr, self.lkd_loss = args.lkd_lr, args.lkd_loss
        self.smooth: Optional[float] = args.smooth  # None: off (0.0 is a valid alpha)
        # options that would be silently ignored are errors (no static-activation scheme calibrates)
        lkd_opts = [f for f, v in (("--lkd-lr", self.lkd_lr), ("--lkd-loss", self.lkd_loss)) if v is not None]
        if lkd_opts and self.lkd_steps is None:
            raise CLIError(f"{' / '.join(lkd_opts)} {verb(lkd_opts)} only with --lkd-steps (LKD), which was not given")
        if args.calib is not None and not self.calibrated:
            raise CLIError("--calib is only used by --smooth, --gptq and --lkd-steps (none was given)")
        calib_opts = [f for f, v in (("--calib-window", args.calib_window), ("--calib-samples", args.calib_samples))
                      if v is not None]
        if calib_opts and args.calib is None:
            raise CLIError(f"{' / '.join(calib_opts)} {verb(calib_opts)} only with --calib FILE (for --smooth / "
                           "--gptq / --lkd-steps)")
        self.calib_window = args.calib_window or CALIB_WINDOW
        self.calib_samples = args.calib_samples or CALIB_SAMPLES
        self.lm_head: str = getattr(args, "lm_head", None) or "skip"  # --lm-head
        try:
            self.config, self.module_configs = schemes.configs(scheme, g, args.level, self.options)
            head = schemes.lm_head_configs(self.lm_head, self.config)
        except (ValueError, TypeError) as e:
            raise CLIError(str(e)) from e
        if head:  # first: module_configs' first matching pattern wins (w4/8 has a "*" entry)
            self.module_configs = {**head, **(self.module_configs or {})}
        if self.calibrated and not args.calib:
            which = "--smooth" if self.smooth is not None else "--gptq" if self.gptq else "--lkd-steps"
            raise CLIError(f"{which} needs calibration text: --calib FILE")

    @property
    def calibrated(self) -> bool:
        """Whether a step that needs calibration data (smoothing, GPTQ, LKD) is on."""
        return self.smooth is not None or bool(self.gptq) or bool(self.lkd_steps)

    @property
    def label(self) -> str:
        s = self.scheme
        if s in schemes.GROUPED:
            g = self.group_size
            s += f" g{g}" if isinstance(g, int) else f" g={'channel' if g is None else g}"
        s += "".join(f" {o}={v}" for o, v in self.options.items() if v is not None)
        s += f" lm_head={self.lm_head}" if self.lm_head != "skip" else ""
        # in the order they run
        extras = [f"smooth a={self.smooth:g}"] if self.smooth is not None else []
        extras += [n for n, on in (("GPTQ", self.gptq), (f"LKD {self.lkd_steps} steps", self.lkd_steps),
                                    (f"LoRC r{self.lorc_rank}", self.lorc_rank)) if on]
        return s + (" + " + " + ".join(extras) if extras else "")

    def smooth_float(self, model: nn.Module, calib: Optional[list[Any]], log: Callable[[str], None]) -> float:
        """Smooth the float `model` in place (zqkernels.smooth_ with alpha --smooth); -> seconds.
        smooth_'s errors (e.g. a model with no block it supports) become CLIError."""
        import zqkernels

        t = time.perf_counter()
        try:
            rep = zqkernels.smooth_(model, calib, alpha=self.smooth)
        except (ValueError, TypeError, NotImplementedError) as e:
            raise CLIError(f"smoothing failed: {e}") from e
        groups = rep.groups
        if groups:
            before = sorted(g["act_ratio_before"] for g in groups)
            after = sorted(g["act_ratio_after"] for g in groups)
            log(f"smooth_: alpha {rep.alpha:g}, {len(groups)} groups (a norm or Linear folded into the Linears it "
                f"feeds); activation max/median channel ratio: median {before[len(before) // 2]:.1f} -> "
                f"{after[len(after) // 2]:.1f}, max {before[-1]:.1f} -> {after[-1]:.1f}")
        else:
            log(str(rep))
        return time.perf_counter() - t

    def convert(
        self, model: nn.Module, calib: Optional[list[Any]], progress: bool, log: Callable[[str], None],
        float_model: Optional[nn.Module] = None,
    ) -> dict[str, float]:
        """Convert `model` in place; -> seconds per step. Library errors become CLIError.

        Smoothing (--smooth) runs first, on the float `model`; LKD's teacher and LoRC's reference are
        then a float copy of the smoothed model (its weights are what the quantized ones approximate).
        float_model: the caller's float model that `model` is a copy of, already smoothed by
        ``smooth_float`` when --smooth is on; then smoothing is not redone here and it serves as LKD's
        teacher / LoRC's reference (both leave it unchanged) instead of a new copy."""
        import zqkernels

        times: dict[str, float] = {}
        if self.smooth is not None and float_model is None:
            times["smooth"] = self.smooth_float(model, calib, log)
        model_float = None
        if self.lorc_rank or self.lkd_steps:
            model_float = float_model if float_model is not None else copy.deepcopy(model)
        tied_heads = _tied_lm_heads(model)
        t = time.perf_counter()
        try:
            if self.gptq:
                summary = zqkernels.gptq(
                    model, calib, config=self.config, module_configs=self.module_configs, progress=progress
                )
            else:
                summary = zqkernels.quantize_(model, self.config, module_configs=self.module_configs, progress=progress)
        except (ValueError, TypeError, NotImplementedError) as e:
            raise CLIError(f"conversion failed: {e}") from e
        times["gptq" if self.gptq else "rtn"] = time.perf_counter() - t
        log(str(summary))
        log(self._lm_head_line(model, tied_heads))
        groups = schemes.group_size_report(model, schemes.auto_group_sizes(self.config, self.module_configs))
        if groups:
            log(groups)
        # LKD first: it refuses layers with LoRC factors, and LoRC then factors the error of the
        # distilled weights
        if self.lkd_steps:
            t = time.perf_counter()
            kw: dict[str, Any] = {"lr": self.lkd_lr, "loss": self.lkd_loss}
            kw = {k: v for k, v in kw.items() if v is not None}  # not given: lkd's defaults
            try:
                res = zqkernels.lkd(model_float, model, calib, steps=self.lkd_steps, progress=progress, **kw)
            except (ValueError, TypeError, NotImplementedError) as e:
                raise CLIError(f"LKD failed: {e}") from e
            times["lkd"] = time.perf_counter() - t
            _log_lkd(res, log)
        if self.lorc_rank:
            t = time.perf_counter()
            try:
                rep = zqkernels.lorc(model, model_float, rank=self.lorc_rank)
            except (ValueError, TypeError, NotImplementedError) as e:
                raise CLIError(f"LoRC failed: {e}") from e
            times["lorc"] = time.perf_counter() - t
            merged = sum(1 for r in rep.layers if len(r.get("parts", ())) > 1)
            log(
                f"LoRC rank {self.lorc_rank}: {len(rep.layers)} layers"
                + (f" ({merged} of them merged fused-block GEMMs, one rank-{self.lorc_rank} pair each)" if merged else "")
                + f", {rep.total_bytes} bytes added ({rep.relative:.2%} of {rep.weight_bytes} quantized weight "
                f"bytes, {rep.scale_bytes} scale bytes), {len(rep.skipped)} skipped"
            )
        del model_float
        return times

    def _lm_head_line(self, model: nn.Module, tied: dict[str, str]) -> str:
        """Check and report what --lm-head did: CLIError when w8 / scheme converted no lm_head; -> the
        summary's lm_head line. A converted lm_head whose weight was an input embedding's (`tied`: lm_head
        name -> that embedding) is a QLinear with its own weights now, the embedding still float: the
        model's HF config is set to tie_word_embeddings=False here, so that no loader ties them again
        (the checkpoint holds the quantized lm_head and the float embedding)."""
        from ..nn import QLinear

        heads = {n: m for n, m in model.named_modules() if _is_lm_head(n) and isinstance(m, QLinear)}
        if self.lm_head == "skip":
            return "--lm-head skip (the default): lm_head stays in float (--lm-head w8 / scheme quantizes it)"
        if not heads:
            raise CLIError(f"--lm-head {self.lm_head}: the model has no Linear named lm_head to quantize "
                           f"(module names matched: {', '.join(schemes.LM_HEAD_PATTERNS)})")
        parts = []
        for n, m in heads.items():
            what = f"{n} quantized, {m.qscheme.label()}"
            if n in tied:
                what += f"; its weight was tied to {tied[n]!r}, which stays float (untied)"
                cfg = getattr(model, "config", None)
                if getattr(cfg, "tie_word_embeddings", False):
                    cfg.tie_word_embeddings = False
            parts.append(what)
        return f"--lm-head {self.lm_head}: " + "; ".join(parts)


def _is_lm_head(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in schemes.LM_HEAD_PATTERNS)


def _tied_lm_heads(model: nn.Module) -> dict[str, str]:
    """{lm_head module name: the nn.Embedding whose weight it shares} (tied input/output embeddings)."""
    emb = {id(m.weight): n for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    return {n: emb[id(m.weight)] for n, m in model.named_modules()
            if _is_lm_head(n) and isinstance(getattr(m, "weight", None), nn.Parameter) and id(m.weight) in emb}


def _log_lkd(rows: list[dict[str, Any]], log: Callable[[str], None]) -> None:
    """One line per distilled block (lkd returns a dict per block)."""
    log(f"LKD: {len(rows)} blocks")
    for r in rows:
        extra = " (reverted: worse after training)" if r["reverted"] else ""
        log(f"  {r['name']}: loss {r['loss_before']:.4g} -> {r['loss_after']:.4g}{extra}, {fmt_s(r['seconds'])}")


def calibration(conv: Conversion, args: argparse.Namespace, tok: Any, device: str) -> Optional[list[Any]]:
    """The --calib batches ({"input_ids": [1, T]} on `device`) when a step needs them, else None."""
    if not conv.calibrated:
        return None
    if tok is None:
        raise CLIError("--calib needs the model's tokenizer, and none loads from MODEL_DIR")
    ids = token_ids(tok, read_text(args.calib, "--calib"))
    win = token_windows(ids, conv.calib_window, conv.calib_samples, f"--calib {args.calib!r}")
    return [{"input_ids": w[None].to(device)} for w in win]
