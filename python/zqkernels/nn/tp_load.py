"""Loading a checkpoint straight into one rank's part (``load_quantized(dir, tp=group)``, issue 21).

``load_quantized`` reads the checkpoint lazily (safetensors ``safe_open``) and builds the quantized
Linears in name order, so the Linears of one transformer layer come one after another. With ``tp``,
this object splits each layer as soon as its last Linear is built: the layer's other tensors (norms,
float roles) are read, the layer is fused (when the checkpoint was saved fused and its parts allow)
and cut by ``shard_block``, or its Linears are wrapped by the model's tensor-parallel plan
(``split_planned``); the unsplit tensors of that layer are dropped before the next layer is read.
A rank thus holds at most its part of the model plus one whole layer, instead of the whole model,
and the result is the model ``load_quantized(dir)`` followed by ``parallelize_model`` gives, bit for
bit (same tensors, same cuts). Layers the plan splits colwise outside a fused block (per-Linear
models: q / k / v / gate / up, lm_head) are read as the rank's rows only (safetensors slices; the
conversion from the checkpoint layout is row-local); rowwise layers and fused blocks are read whole
(a rowwise cut needs whole rows; a block is cut after its parts are merged).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import nn

from .blocks import block_class
from .hf_model import _fuse, _get, link_blocks
from .tp import _group_info, _style_of, _wrap, plan_of, shard_block, split_planned, split_range


class TPStream:
    """One rank's split of a model while ``load_quantized`` builds it (module docstring)."""

    def __init__(self, model: nn.Module, group: Any, fuse: bool, plan: Optional[dict[str, str]] = None) -> None:
        self.where = _group_info(group, "load_quantized")
        self.model, self.fuse = model, fuse
        self.plan = plan_of(model, plan)
        self.units = sorted((n for n, m in model.named_modules() if n and block_class(m) is not None),
                            key=len, reverse=True)  # fmt: skip
        self.current: Optional[str] = None
        self.finished: list[str] = []
        self.done: dict[str, str] = {}
        self.blocks: list[tuple[nn.Module, Any]] = []

    def unit_of(self, name: str) -> Optional[str]:
        """The recognised transformer layer `name` lies in (its module name), or None."""
        return next((u for u in self.units if name.startswith(u + ".")), None)

    def before(self, name: str, take: Callable[[str], dict[str, Any]]) -> None:
        """Called before the quantized Linear `name` is built: a layer left behind is finished."""
        unit = self.unit_of(name)
        if unit != self.current:
            self.finish(take)
        self.current = unit

    def colwise_rows(self, name: str, old: nn.Module) -> Optional[tuple[int, int]]:
        """This rank's output channels of the Linear `name` when it will be split colwise by the plan
        and not fused first (then only those rows are read), else None (read whole)."""
        if self.fuse and self.unit_of(name) is not None:
            return None  # a fused block is cut as a whole (shard_block) after the merge
        style = _style_of(name, self.plan)
        if style not in ("colwise", "colwise_gather_output"):
            return None
        _, rank, world = self.where
        return split_range(f"load_quantized: {name}", old.out_features, rank, world, "the output channels")

    def wrap_part(self, name: str, part: nn.Module) -> nn.Module:
        """The rank's part of `name` (read as such) in its colwise wrapper, recorded as done."""
        pg, rank, world = self.where
        style = _style_of(name, self.plan)
        self.done[name] = f"{style} (only this rank's rows read)"
        return _wrap(part, "colwise", pg, rank, world, style != "colwise", input_is_parallel=True)

    def _skip(self) -> tuple[str, ...]:
        return tuple(f"{n}." for n in self.done) + tuple(f"{u}." for u in self.finished)

    def finish(self, take: Callable[[str], dict[str, Any]]) -> None:
        """Finish the current layer: its other tensors (``take(prefix)`` pops them from the
        checkpoint), then fused and cut, or its Linears split by the plan."""
        unit, self.current = self.current, None
        if unit is None:
            return
        parent, _, layer = _get(self.model, unit)
        res = layer.load_state_dict(take(unit + "."), strict=False, assign=True)
        if res.unexpected_keys:
            raise ValueError(f"load_quantized: tensors not in the model: {[f'{unit}.{k}' for k in res.unexpected_keys][:8]}")
        pg, rank, world = self.where
        blocks = _fuse(self.model, only=layer) if self.fuse else []
        if blocks:
            blk = shard_block(blocks[0], rank, world, pg)
            self.blocks.append((parent, blk))
            self.done[unit] = f"fused block: {blk.heads} of {blk.heads * world} heads"
        else:  # skip: the parts already read as this rank's rows
            self.done.update(split_planned(layer, self.plan, self.where, skip=self._skip(), prefix=unit + "."))
        self.finished.append(unit)

    def close(self, take: Callable[[str], dict[str, Any]]) -> None:
        """After the last quantized Linear: finish its layer and link the fused blocks."""
        self.finish(take)
        link_blocks(self.blocks)

    def split_rest(self) -> dict[str, str]:
        """After the remaining tensors were assigned: every other module the plan names (lm_head,
        float Linears outside the layers). Returns {module name: what was done} for the whole model."""
        self.done.update(split_planned(self.model, self.plan, self.where, skip=self._skip()))
        if not self.done:
            raise ValueError("load_quantized: tp was given but nothing was split: no fused block and no module named by "
                             "the model's tp_plan (parallelize_model's rule)")  # fmt: skip
        return self.done
