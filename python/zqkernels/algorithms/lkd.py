"""ZeroQuant's layer-by-layer knowledge distillation (LKD; Yao et al., "ZeroQuant: Efficient and
Affordable Post-Training Quantization for Large-Scale Transformers", 2022), on zqkernels' schemes.

For each transformer block i, in order:

1. the block's inputs are those the quantized model produces: the calibration batches run through
   the already distilled (and re-quantized) quantized blocks 0..i-1 (the "student's own inputs");
2. the float block i is the teacher on those inputs (its outputs are the targets);
3. a float copy of block i whose linears compute the scheme's quantized math through
   straight-through estimators (``fakequant.FakeQuantLinear``: per-token fake-quant of the
   activations, fake-quant of the weights with the scheme's exact rounding and scales, identity
   gradients) is trained for ``steps`` optimizer steps to match the teacher (MSE of the block
   outputs, or a KL divergence of the outputs seen through the model's final norm and lm_head);
4. the quantized block's QLinears are re-quantized from the trained float weights (and biases) by the
   scheme's own quantizer (``quantize_weight``), so the kernels run the result; the fused blocks'
   merged GEMMs (QKV, gate|up) get the concatenation of their trained parts.

Only one block's student copy and optimizer state exist at a time; the teacher outputs and the
student inputs of all calibration batches are kept (two hidden-state tensors per batch).
"""

from __future__ import annotations

import copy
import gc
import math
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._calib import call_batch, check_batches, model_device
from .fakequant import FakeQuantLinear, has_fake_quant, scheme_options

__all__ = ["lkd", "find_blocks", "lkd_head", "requantize_linear"]

_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")

# Fused blocks (nn/blocks.py): the float Linears (names inside the float block) behind each merged
# role are the block class's PARTS (nn.blocks.parts_of).


class _Stop(Exception):
    """Raised by the capture hook to end the model's forward at the first block."""


def _is_linear(m: nn.Module) -> bool:
    from ..nn.linear import QLinear, is_conv1d

    return (isinstance(m, nn.Linear) and not isinstance(m, QLinear)) or is_conv1d(m)


def _float_weight(m: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(weight [out, in], bias) of an nn.Linear or HF Conv1D (weight stored [in, out])."""
    from ..nn.linear import is_conv1d

    w = m.weight.detach()
    return (w.t() if is_conv1d(m) else w), (m.bias.detach() if m.bias is not None else None)


def find_blocks(model_float: nn.Module, model_quant: nn.Module, blocks: Any = None) -> tuple[str, list, list]:
    """The transformer blocks LKD walks: (name, float blocks, quantized blocks).

    blocks None: the nn.ModuleList of ``model_float`` whose items are all of one class and hold
    Linears (HF Conv1D too), the one with the most parameters (e.g. ``model.layers`` of a LLaMA,
    ``transformer.h`` of GPT-2, ``encoder.layer`` of BERT), and the module of the same name in
    ``model_quant``. blocks "a.b": that ModuleList in both models. blocks (float_seq, quant_seq): two
    sequences of modules, paired in order.
    """
    op = "lkd"
    seqs = (nn.ModuleList, nn.Sequential, list, tuple)
    if isinstance(blocks, (tuple, list)) and len(blocks) == 2 and all(isinstance(b, seqs) for b in blocks):
        fb, qb = list(blocks[0]), list(blocks[1])
        name = "blocks"
    else:
        if blocks is None:
            best, best_params = None, -1
            for name_, mod in model_float.named_modules():
                if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
                    continue
                kinds = {type(b) for b in mod}
                if len(kinds) != 1 or not any(_is_linear(m) for b in mod for m in b.modules()):
                    continue
                n = sum(p.numel() for p in mod.parameters())
                if n > best_params:
                    best, best_params = name_, n
            if best is None:
                raise ValueError(
                    f"{op}: found no nn.ModuleList of transformer blocks (one class, holding Linears) in "
                    f"model_float ({type(model_float).__name__}); pass blocks='<name of the ModuleList>' or "
                    "blocks=(float_blocks, quant_blocks)"
                )
            name = best
        elif isinstance(blocks, str):
            name = blocks
        else:
            raise TypeError(
                f"{op}: blocks must be None, the name of a ModuleList, or (float_blocks, quant_blocks), got "
                f"{type(blocks).__name__}"
            )
        try:
            fl, ql = model_float.get_submodule(name), model_quant.get_submodule(name)
        except AttributeError as e:
            raise ValueError(f"{op}: blocks {name!r} is not a submodule of both models: {e}") from None
        if not isinstance(fl, (nn.ModuleList, nn.Sequential)) or not isinstance(ql, (nn.ModuleList, nn.Sequential)):
            raise ValueError(
                f"{op}: blocks {name!r} must name an nn.ModuleList in both models, got "
                f"{type(fl).__name__} / {type(ql).__name__}"
            )
        fb, qb = list(fl), list(ql)
    if len(fb) != len(qb) or not fb:
        raise ValueError(
            f"{op}: model_float has {len(fb)} blocks but model_quant has {len(qb)} ({name!r}); the quantized "
            "model must be a quantized copy of the float one"
        )
    for i, (f, q) in enumerate(zip(fb, qb)):
        if f is q:
            raise ValueError(
                f"{op}: block {i} is the same module in model_float and model_quant; pass the float model and a "
                "quantized copy of it (quantize_(copy.deepcopy(model), config))"
            )
    return name, fb, qb


class _Target:
    """A QLinear of the quantized block and the float Linears (names in the float block) it stands for."""

    def __init__(self, qlinear: nn.Module, parts: list[str]) -> None:
        self.qlinear = qlinear
        self.parts = parts
        self.scheme = qlinear.scheme
        self.options = scheme_options(qlinear)


def _targets(i: int, fblock: nn.Module, qblock: nn.Module) -> list[_Target]:
    from ..nn.blocks import QuantizedBlock, parts_of
    from ..nn.linear import QLinear

    op = "lkd"
    out: list[_Target] = []
    if isinstance(qblock, QuantizedBlock):
        try:
            roles = parts_of(qblock)
        except NotImplementedError:
            raise NotImplementedError(
                f"{op}: block {i}: fused block {type(qblock).__name__} has no LKD mapping (no PARTS)"
            ) from None
        for role, parts in roles.items():
            q = getattr(qblock, role)
            if isinstance(q, QLinear):
                out.append(_Target(q, parts))
    else:
        for name, q in qblock.named_modules():
            if isinstance(q, QLinear):
                out.append(_Target(q, [name]))
    if not out:
        raise ValueError(
            f"{op}: block {i} ({type(qblock).__name__}) of model_quant holds no QLinear; quantize the model first "
            "(zqkernels.quantize_(copy.deepcopy(model), config))"
        )
    for t in out:
        if not has_fake_quant(t.qlinear.qscheme):
            raise NotImplementedError(
                f"{op}: scheme {t.scheme!r} (block {i}, {t.parts}) has no fake-quant path for LKD"
            )
        if t.qlinear.lorc_rank:
            raise ValueError(
                f"{op}: block {i} ({t.parts}) has LoRC factors; run LKD first and LoRC (zqkernels.lorc) after it"
            )
        for p in t.parts:
            try:
                m = fblock.get_submodule(p)
            except AttributeError:
                raise ValueError(f"{op}: block {i}: the float block has no module {p!r} (model_quant has a QLinear there)") from None
            if not _is_linear(m):
                raise ValueError(f"{op}: block {i}: {p!r} in the float block is a {type(m).__name__}, not a Linear / Conv1D")
    return out


def requantize_linear(qlinear: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """Re-quantize `qlinear` in place from a float `weight` [out_features, in_features] (and `bias`) with
    its scheme's quantizer and options (what the conversion does; the bias keeps its dtype)."""
    w_old = qlinear._buffers["weight_q"]
    old_bias = qlinear._buffers.get("bias")
    w = weight.detach().to(device=w_old.device, dtype=torch.float32)
    b = None
    if old_bias is not None:
        if bias is None:
            bias = torch.zeros(qlinear.out_features)
        b = bias.detach().to(device=old_bias.device, dtype=old_bias.dtype)
    qs = qlinear.qscheme
    qs.load(qlinear, qs.quantize(w), b)


def lkd_head(model: nn.Module) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """hidden states -> logits through the model's final norm (if found: ``norm``, ``ln_f``, ... of the
    base model) and its lm_head (``get_output_embeddings()``); None when the model has no lm_head.
    The modules are the model's own (no copy)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    base = getattr(model, "base_model", None)
    norm = None
    if isinstance(base, nn.Module) and base is not model:
        for attr in _FINAL_NORMS:
            cand = getattr(base, attr, None)
            if isinstance(cand, nn.Module):
                norm = cand
                break

    def fn(h: torch.Tensor) -> torch.Tensor:
        return head(norm(h) if norm is not None else h)

    fn.modules = (norm, head)  # type: ignore[attr-defined]
    return fn


def _map(v: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(v, torch.Tensor):
        return fn(v)
    if isinstance(v, tuple):
        return tuple(_map(x, fn) for x in v)
    if isinstance(v, list):
        return [_map(x, fn) for x in v]
    if isinstance(v, dict):
        return {k: _map(x, fn) for k, x in v.items()}
    return v


def _no_cache(v: Any) -> Any:
    return None if "Cache" in type(v).__name__ else v


def _call(block: nn.Module, args: tuple, kwargs: dict, h: torch.Tensor) -> torch.Tensor:
    if args:
        out = block(h, *args[1:], **kwargs)
    else:
        out = block(**{**kwargs, "hidden_states": h})
    return out[0] if isinstance(out, (tuple, list)) else out


def _capture(op: str, model: nn.Module, block: nn.Module, calib_batches: Iterable[Any]) -> list[tuple[tuple, dict]]:
    """(args, kwargs) of `block`'s forward for each calibration batch of `model` (stopped there)."""
    seen: list[tuple[tuple, dict]] = []

    def hook(_m, args, kwargs):
        args = tuple(_no_cache(a) for a in args)
        kwargs = {k: _no_cache(v) for k, v in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        if not args and not isinstance(kwargs.get("hidden_states"), torch.Tensor):
            raise TypeError(f"{op}: the first block got no hidden-states tensor (no positional argument, no hidden_states=)")
        seen.append((args, kwargs))
        raise _Stop

    device = model_device(model)

    cfg = getattr(model, "config", None)
    use_cache = getattr(cfg, "use_cache", None)
    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        if use_cache is not None:
            cfg.use_cache = False
        with torch.no_grad():
            for batch in calib_batches:
                before = len(seen)
                try:
                    call_batch(op, model, batch, device)
                except _Stop:
                    pass
                if len(seen) == before:
                    raise ValueError(f"{op}: the model's forward never reached its first block on a calibration batch")
    finally:
        handle.remove()
        if use_cache is not None:
            cfg.use_cache = use_cache
    if not seen:
        raise ValueError(f"{op}: calib_batches is empty; give at least one calibration batch")
    return seen


def _clear_handoffs(blocks: Sequence[nn.Module]) -> None:
    for b in blocks:
        if hasattr(b, "_handoff"):
            b._handoff = None


def _make_student(fblock: nn.Module, targets: list[_Target], dtype: torch.dtype) -> tuple[nn.Module, list[list[FakeQuantLinear]]]:
    student = copy.deepcopy(fblock)
    student.to(dtype=dtype)
    student.eval()  # no dropout; gradients flow all the same
    for p in student.parameters():
        p.requires_grad_(False)
    fakes: list[list[FakeQuantLinear]] = []
    for t in targets:
        row = []
        for name in t.parts:
            w, b = _float_weight(student.get_submodule(name))
            fq = FakeQuantLinear(w, b, t.scheme, **t.options)
            parent_name, _, attr = name.rpartition(".")
            parent = student.get_submodule(parent_name) if parent_name else student
            setattr(parent, attr, fq)
            row.append(fq)
        fakes.append(row)
    return student, fakes


def lkd(
    model_float: nn.Module,
    model_quant: nn.Module,
    calib_batches: Iterable[Any],
    steps: int = 100,
    lr: float = 1e-5,
    loss: str = "mse",
    *,
    blocks: Any = None,
    head: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    optimizer: Optional[Callable[[list, float], torch.optim.Optimizer]] = None,
    train_dtype: torch.dtype = torch.float32,
    revert_if_worse: bool = True,
    train_norms: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Layer-by-layer knowledge distillation of `model_quant` (changed in place) towards `model_float`.

    model_float: the float model (teacher; not changed). model_quant: a quantized copy of it
    (``quantize_`` / ``quantize_model`` / ``gptq``; fused blocks or per-Linear QLinears of schemes
    w8a8, fp8, w4a8, w4a8-floatscale, w4a8-zp, w8a8-group, w4a8-fp; another scheme raises NotImplementedError).
    calib_batches: model inputs as for ``gptq`` (dicts -> ``model(**b)``, tensors, tuples); any token
    batches work (no labels or training data needed); they are read once.
    steps: optimizer steps per block, one calibration batch per step (cycling through them).
    lr: the learning rate of the optimizer (default Adam, no weight decay; ``optimizer=f(params, lr)``
    to choose another). loss: "mse" (mean squared error of the block's output hidden states) or "kl"
    (KL(teacher || student) of the softmax of the block outputs passed through the float model's
    final norm and lm_head, ``lkd_head(model_float)``: a "logit lens" view for the inner blocks, the
    model's output distribution for the last one; needs an lm_head, or ``head=`` a callable hidden
    states -> logits). blocks: see ``find_blocks``.

    The trainable parameters are the weights and biases of the block's quantized linears (norms and
    Linears left in float are frozen); the student copy runs in ``train_dtype`` (float32). After
    training, the QLinears are re-quantized from the trained weights (``requantize_linear``). With
    ``train_norms`` the block's norms (modules with a 1-D ``weight`` and "Norm" in their class name,
    e.g. LLaMA's RMSNorms, GPT-2's LayerNorms) are trained too and copied into the quantized block:
    their per-channel gains set the range each token's activations are quantized over (a learned
    smoothing). It needs blocks whose norms are modules of their own (``fused_blocks=False``; the
    fused blocks fold the norm into the quantize kernel and raise ValueError). With
    ``revert_if_worse`` a block whose real quantized output is further from the teacher's than
    before (on the calibration batches) gets its original weights back (logged as reverted).

    Returns one dict per block: layer, name, loss_before / loss_after (the loss of the real quantized
    block against the teacher, averaged over the calibration batches, before training and after
    re-quantization), train_loss_first / train_loss_last (the fake-quant student's loss at the first
    and last step), reverted, seconds.
    """
    op = "lkd"
    if not isinstance(model_float, nn.Module) or not isinstance(model_quant, nn.Module):
        raise TypeError(f"{op}: model_float and model_quant must be nn.Modules")
    if model_float is model_quant:
        raise ValueError(f"{op}: model_float and model_quant are the same model; pass the float model and a quantized copy")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{op}: steps must be a positive int (optimizer steps per block), got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"{op}: lr must be a positive finite number, got {lr!r}")
    if loss not in ("mse", "kl"):
        raise ValueError(f"{op}: loss must be 'mse' or 'kl', got {loss!r}")
    if train_dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise ValueError(f"{op}: train_dtype must be a floating-point dtype, got {train_dtype!r}")
    check_batches(op, calib_batches)
    if optimizer is not None and not callable(optimizer):
        raise TypeError(f"{op}: optimizer must be callable(params, lr) -> torch.optim.Optimizer")
    if not isinstance(train_norms, bool):
        raise TypeError(f"{op}: train_norms must be a bool, got {type(train_norms).__name__}")
    name, fblocks, qblocks = find_blocks(model_float, model_quant, blocks)
    targets = [_targets(i, f, q) for i, (f, q) in enumerate(zip(fblocks, qblocks))]
    norms = [_norms(op, i, f, q) if train_norms else [] for i, (f, q) in enumerate(zip(fblocks, qblocks))]

    head_fn = None
    if loss == "kl":
        base_head = head if head is not None else lkd_head(model_float)
        if base_head is None:
            raise ValueError(
                f"{op}: loss='kl' needs the model's lm_head (model_float.get_output_embeddings() is None for "
                f"{type(model_float).__name__}); pass head=callable(hidden) -> logits, or use loss='mse'"
            )
        if not callable(base_head):
            raise TypeError(f"{op}: head must be callable(hidden states) -> logits")
        head_fn = _train_head(base_head, train_dtype)

    def loss_of(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
        s = student_out.to(train_dtype)
        t = teacher_out.to(train_dtype)
        if head_fn is None:
            return F.mse_loss(s, t)
        with torch.no_grad():
            lt = F.log_softmax(head_fn(t).float(), dim=-1)
        ls = F.log_softmax(head_fn(s).float(), dim=-1)
        V = ls.shape[-1]
        return F.kl_div(ls.reshape(-1, V), lt.reshape(-1, V), log_target=True, reduction="batchmean")

    captured = _capture(op, model_quant, qblocks[0], calib_batches)
    hidden = [a[0] if a else k["hidden_states"] for a, k in captured]
    # keep the rest of the call (masks, positions), not the first block's hidden states
    captured = [((None, *a[1:]) if a else a, {n: v for n, v in k.items() if n != "hidden_states"}) for a, k in captured]
    if not all(isinstance(h, torch.Tensor) and h.is_floating_point() for h in hidden):
        raise TypeError(f"{op}: the first block's hidden states must be floating-point tensors")

    opt_factory = optimizer if optimizer is not None else (lambda params, lr_: torch.optim.Adam(params, lr=lr_))
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(fblocks), desc=op, unit="block")
        except ImportError:
            bar = None

    log: list[dict[str, Any]] = []
    try:
        for i, (fblock, qblock) in enumerate(zip(fblocks, qblocks)):
            t0 = time.perf_counter()
            fdev = _device(fblock, hidden[0].device)
            qdev = _device(qblock, hidden[0].device)
            with torch.no_grad():
                teacher = [
                    _call(fblock, *_to(captured[b], fdev), h.to(fdev)) for b, h in enumerate(hidden)
                ]
                _clear_handoffs(qblocks)
                real = [_call(qblock, *_to(captured[b], qdev), h.to(qdev)) for b, h in enumerate(hidden)]
                before = sum(float(loss_of(r.to(fdev), t)) for r, t in zip(real, teacher)) / len(hidden)
            saved = [copy.deepcopy(t.qlinear.state_dict()) for t in targets[i]]
            saved_norms = [copy.deepcopy(qblock.get_submodule(n).state_dict()) for n in norms[i]]

            student, fakes = _make_student(fblock, targets[i], train_dtype)
            params = [p for row in fakes for fq in row for p in fq.parameters()]
            for n in norms[i]:
                for p in student.get_submodule(n).parameters():
                    p.requires_grad_(True)
                    params.append(p)
            opt = opt_factory(params, lr)
            train_first = train_last = float("nan")
            train_args = [_to(c, fdev, train_dtype) for c in captured]
            for step in range(steps):
                b = step % len(hidden)
                out = _call(student, *train_args[b], hidden[b].to(fdev, train_dtype))
                lval = loss_of(out, teacher[b])
                opt.zero_grad(set_to_none=True)
                lval.backward()
                opt.step()
                v = float(lval.detach())
                if step == 0:
                    train_first = v
                train_last = v
            with torch.no_grad():
                for t, row in zip(targets[i], fakes):
                    w = torch.cat([fq.weight for fq in row], 0)
                    has_bias = any(fq.bias is not None for fq in row)
                    bias = None
                    if has_bias:
                        bias = torch.cat(
                            [fq.bias if fq.bias is not None else fq.weight.new_zeros(fq.out_features) for fq in row]
                        )
                    requantize_linear(t.qlinear, w, bias)
                for n in norms[i]:
                    qn = qblock.get_submodule(n)
                    for pname, p in student.get_submodule(n).named_parameters():
                        getattr(qn, pname).data.copy_(p.detach().to(getattr(qn, pname).dtype))
            opt.zero_grad(set_to_none=True)
            del opt, student, fakes, params, out, lval
            gc.collect()  # one block's optimizer state at a time

            with torch.no_grad():
                _clear_handoffs(qblocks)
                real = [_call(qblock, *_to(captured[b], qdev), h.to(qdev)) for b, h in enumerate(hidden)]
                after = sum(float(loss_of(r.to(fdev), t)) for r, t in zip(real, teacher)) / len(hidden)
                reverted = False
                if revert_if_worse and not after <= before:
                    for t, state in zip(targets[i], saved):
                        t.qlinear.load_state_dict(state)
                    for n, state in zip(norms[i], saved_norms):
                        qblock.get_submodule(n).load_state_dict(state)
                    _clear_handoffs(qblocks)
                    real = [_call(qblock, *_to(captured[b], qdev), h.to(qdev)) for b, h in enumerate(hidden)]
                    reverted = True
                _clear_handoffs(qblocks)
            del teacher, saved, saved_norms
            hidden = real  # the next block's inputs: this block's real quantized outputs
            seconds = time.perf_counter() - t0
            row = {
                "layer": i,
                "name": f"{name}.{i}",
                "loss_before": before,
                "loss_after": before if reverted else after,
                "loss_after_training": after,
                "train_loss_first": train_first,
                "train_loss_last": train_last,
                "reverted": reverted,
                "steps": steps,
                "seconds": seconds,
            }
            log.append(row)
            if bar is not None:
                bar.set_postfix(loss=f"{before:.3g}->{row['loss_after']:.3g}")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return log


def _norms(op: str, i: int, fblock: nn.Module, qblock: nn.Module) -> list[str]:
    """Names (inside the block) of the norms LKD trains with train_norms: modules whose class name holds
    "Norm" with a 1-D weight, present under the same name in the quantized block."""
    from ..nn.blocks import QuantizedBlock

    if isinstance(qblock, QuantizedBlock):
        raise ValueError(
            f"{op}: train_norms=True needs per-Linear blocks, but block {i} of model_quant is the fused "
            f"{type(qblock).__name__} (its norm is folded into the quantize kernel); quantize with "
            "fused_blocks=False or use train_norms=False"
        )
    out = []
    for n, m in fblock.named_modules():
        w = getattr(m, "weight", None)
        if n and "Norm" in type(m).__name__ and isinstance(w, torch.Tensor) and w.dim() == 1:
            try:
                q = qblock.get_submodule(n)
            except AttributeError:
                raise ValueError(f"{op}: block {i}: model_quant has no norm {n!r} (model_float has one)") from None
            if getattr(q, "weight", None) is None or q.weight.shape != w.shape:
                raise ValueError(f"{op}: block {i}: the norm {n!r} differs between model_float and model_quant")
            out.append(n)
    if not out:
        raise ValueError(f"{op}: train_norms=True but block {i} ({type(fblock).__name__}) has no norm module")
    return out


def _device(m: nn.Module, default: torch.device) -> torch.device:
    for t in m.parameters():
        return t.device
    for t in m.buffers():
        return t.device
    return default


def _to(c: tuple[tuple, dict], device: torch.device, dtype: Optional[torch.dtype] = None) -> tuple[tuple, dict]:
    """A captured (args, kwargs) with its tensors on `device` and (dtype given) floating ones in `dtype`."""

    def fn(t: torch.Tensor) -> torch.Tensor:
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device)

    return _map(c[0], fn), _map(c[1], fn)


def _train_head(base_head: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """The head in the training dtype: frozen copies of lkd_head's modules; a user callable is used as it is
    (its input cast to its first parameter's dtype when it is a module)."""
    mods = getattr(base_head, "modules", None)
    if isinstance(mods, tuple):
        norm, lm = (copy.deepcopy(m).to(dtype=dtype) if m is not None else None for m in mods)
        for m in (norm, lm):
            if m is not None:
                m.eval()
                m.requires_grad_(False)

        def fn(h: torch.Tensor) -> torch.Tensor:
            return lm(norm(h) if norm is not None else h)

        return fn
    return base_head

