"""Tensor parallelism for quantized layers through torch.distributed (issue 21; first part: per-Linear).

A QLinear is split the way Megatron-style tensor parallelism splits an nn.Linear, by the rules its
scheme owns (``Scheme.shard_buffers``: the quantized tensors are cut, never re-quantized):

- ``"colwise"``: rank r holds output channels [r N / P, (r + 1) N / P): weight rows, channel scales,
  group-scale rows and bias. It reads the whole input and writes its slice of the output (all-gathered
  on request). Each rank quantizes the same activations the unsplit layer does, so the gathered output
  equals the unsplit layer's exactly.
- ``"rowwise"``: rank r holds input channels [r K / P, (r + 1) K / P): weight columns and group-scale
  columns, cut at group boundaries; per-channel scales whole; the bias on rank 0 only. It reads its
  slice of the input, quantizes it token-wise itself (its own per-token scale over its K-slice: the
  partial sum is then exact for what it quantized) and the partial outputs are summed (all-reduce, in
  float32). Against the unsplit layer, which quantizes each token over all of K with one scale, the
  result differs by activation rounding only (the weights are the same bits).

A split that would cut a group of scales, a 128 x 128 block (fp8-block) or a packed INT4 / FP4 tile
row raises ValueError naming the rule. LoRC factors are split alongside (lorc_b by columns for
colwise, lorc_a by rows for rowwise: the rank-r term is linear in x).

    from zqkernels.nn.tp import parallelize_qlinear
    up = parallelize_qlinear(qlinear_up, "colwise")              # torch.distributed initialised
    down = parallelize_qlinear(qlinear_down, "rowwise", input_is_parallel=True)
    y = down(act(up(x)))                                          # = the unsplit MLP (activation rounding)

``shard_qlinear(m, style, rank, world)`` is the split alone (no process group: checkpoints, tests).
Fused blocks (``parallelize_blocks(model)``, ``shard_block``) split by whole heads: the merged QKV
GEMM colwise (each rank's q heads, then its k and v heads: heads / P and kv_heads / P of them), the
attention output projection rowwise over those heads, FC1 colwise (gate | up: matching gate and up
rows), FC2 rowwise; the block all-reduces the two rowwise outputs before its residual add, so norms,
residuals and the hand-over to the next block stay whole on every rank. Attention runs on the rank's
heads; a dynamic KV cache follows, a static one must be built with kv_heads / P heads.

Whole models (``parallelize_model``): fused blocks as above; every other Linear / QLinear named by the
model's tensor-parallel plan (transformers' ``model.tp_plan``, e.g. Llama's: q / k / v / gate / up
"colwise", o / down "rowwise", lm_head "colwise_gather_output") wrapped in ``ColwiseQLinear`` /
``RowwiseQLinear`` (rowwise inputs are the colwise outputs: HF's attention reshapes by -1 heads, so it
runs on the rank's heads); embeddings stay replicated.

Not yet: per-rank checkpoint loading (each rank reads every tensor, then keeps its part), GPUs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .blocks_base import QuantizedBlock
from .collectives import all_reduce_sum
from .hf_model import _get
from .linear import QLinear

__all__ = ["STYLES", "split_range", "shard_qlinear", "shard_block", "ColwiseQLinear", "RowwiseQLinear",
           "parallelize_qlinear", "parallelize_blocks", "parallelize_model"]

STYLES = ("colwise", "rowwise")


def split_range(op: str, full: int, rank: int, world: int, what: str) -> tuple[int, int]:
    """[start, stop) of rank's equal part of `full` channels; ValueError unless world divides it."""
    if type(world) is not int or world < 1:
        raise ValueError(f"{op}: world size must be a positive int, got {world!r}")
    if type(rank) is not int or not 0 <= rank < world:
        raise ValueError(f"{op}: rank must be an int in [0, {world}), got {rank!r}")
    if full % world:
        raise ValueError(f"{op}: {what} {full} does not split into {world} equal parts")
    step = full // world
    return rank * step, (rank + 1) * step


def shard_qlinear(m: QLinear, style: str, rank: int, world: int) -> QLinear:
    """The QLinear rank `rank` of `world` holds of layer `m` split `style` ("colwise" / "rowwise",
    the module docstring): the quantized tensors cut (no re-quantization), a new module on m's device."""
    op = "shard_qlinear"
    if not isinstance(m, QLinear):
        raise TypeError(f"{op}: m must be a QLinear, got {type(m).__name__}")
    if style not in STYLES:
        raise ValueError(f"{op}: style must be one of {STYLES}, got {style!r}")
    return _even_part(op, m, style, rank, world)


def _even_part(op: str, m: nn.Module, style: str, rank: int, world: int) -> nn.Module:
    """Rank's equal part of a QLinear / nn.Linear split `style` (shard_linear over one range)."""
    col = style == "colwise"
    full = m.out_features if col else m.in_features
    rng = split_range(op, full, rank, world, "out_features" if col else "in_features")
    return shard_linear(op, m, style, [rng], rank == 0, f"{world} ranks")


def shard_linear(op: str, m: nn.Module, style: str, ranges: list[tuple[int, int]], keeps_bias: bool,
                 who: str) -> nn.Module:  # fmt: skip
    """The part of a QLinear or nn.Linear over channel `ranges` (colwise: output channels, several
    ranges concatenated; rowwise: one range of input channels, the bias kept where `keeps_bias`)."""
    col = style == "colwise"
    bias = m._buffers.get("bias") if isinstance(m, QLinear) else m.bias
    if bias is not None:
        if col:
            bias = torch.cat([bias[a:b] for a, b in ranges])
        else:
            bias = bias[: m.out_features] if keeps_bias else None
    if not isinstance(m, QLinear):  # a float role of a fused block
        w = m.weight.detach()
        w = torch.cat([w[a:b] for a, b in ranges]) if col else w[:, ranges[0][0] : ranges[0][1]]
        out = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_(w)
            if bias is not None:
                out.bias.copy_(bias)
        return out.train(m.training)
    try:
        part, tensors = m.qscheme.shard_buffers(m, style, ranges)
    except ValueError as e:
        raise ValueError(f"{op}: {who}: {str(e).removeprefix('shard: ')}") from None
    width = sum(b - a for a, b in ranges)
    n, k = (width, m.in_features) if col else (m.out_features, width)
    dtype = m._buffers["bias"].dtype if m._buffers["bias"] is not None else torch.bfloat16
    q = QLinear.from_quantized(part, n, k, tensors, None if bias is None else bias.clone(), dtype=dtype)
    a, b = m._buffers["lorc_a"], m._buffers["lorc_b"]
    if a is not None:
        q.lorc_a = a.clone() if col else a[ranges[0][0] : ranges[0][1]].clone()
        q.lorc_b = torch.cat([b[:, lo:hi] for lo, hi in ranges], dim=1) if col else b.clone()
    q.training = m.training
    return q


def shard_block(blk: QuantizedBlock, rank: int, world: int, group: Any = None) -> QuantizedBlock:
    """Split a fused block in place for rank `rank` of `world` (module docstring); `group` is the
    process group its all-reduces use (None: the default group). Returns the block."""
    op = "shard_block"
    if not isinstance(blk, QuantizedBlock):
        raise TypeError(f"{op}: blk must be a fused QuantizedBlock, got {type(blk).__name__}")
    if type(world) is not int or world < 1 or type(rank) is not int or not 0 <= rank < world:
        raise ValueError(f"{op}: need 0 <= rank < world, got rank {rank!r}, world {world!r}")
    if getattr(blk, "_tp", None) is not None:
        raise ValueError(f"{op}: the block is already split")
    H, KV, hd = blk.heads, blk.kv_heads, blk.head_dim
    if H % world or KV % world:
        raise ValueError(f"{op}: {type(blk).__name__} has {H} query heads and {KV} KV heads: both must split into "
                         f"{world} equal parts (whole heads per rank)")  # fmt: skip
    h, kv = H // world, KV // world
    q = (rank * h * hd, (rank + 1) * h * hd)
    k = (H * hd + rank * kv * hd, H * hd + (rank + 1) * kv * hd)
    v = ((H + KV) * hd + rank * kv * hd, (H + KV) * hd + (rank + 1) * kv * hd)
    who = f"{type(blk).__name__}, {world} ranks"
    width = blk.fc2.in_features
    f = split_range(op, width, rank, world, f"{who}: the MLP width")
    gated = blk.fc1.out_features == 2 * width  # [gate | up]
    blk.qkv = shard_linear(op, blk.qkv, "colwise", [q, k, v], True, who)
    blk.attn_out = shard_linear(op, blk.attn_out, "rowwise", [q], rank == 0, who)
    blk.fc1 = shard_linear(op, blk.fc1, "colwise", [f, (width + f[0], width + f[1])] if gated else [f], True, who)
    blk.fc2 = shard_linear(op, blk.fc2, "rowwise", [f], rank == 0, who)
    blk.heads, blk.kv_heads = h, kv
    blk._tp = (group, world) if world > 1 else None
    return blk


def parallelize_blocks(model: nn.Module, group: Any = None) -> int:
    """Split every fused block of `model` in place across the ranks of `group` (a ProcessGroup, a 1-D
    DeviceMesh, or None: the default group); every rank passes the same model. Returns how many."""
    pg, rank, world = _group_info(group, "parallelize_blocks")
    blocks = [m for m in model.modules() if isinstance(m, QuantizedBlock)]
    if not blocks:
        raise ValueError("parallelize_blocks: the model has no fused block (quantize_model / quantize_ with fused "
                         "blocks first; per-Linear layers: parallelize_qlinear)")  # fmt: skip
    for blk in blocks:
        shard_block(blk, rank, world, pg)
    return len(blocks)


def _group_info(group: Any, op: str = "parallelize_qlinear") -> tuple[Any, int, int]:
    """(process group, rank, world size) of a ProcessGroup, a 1-D DeviceMesh or None (the default
    group); errors name `op`."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{op}: torch.distributed is not initialised (init_process_group first)")
    if group is not None and hasattr(group, "get_group"):  # DeviceMesh
        if group.ndim != 1:
            raise ValueError(f"{op}: a DeviceMesh must be 1-D, got {group.ndim}-D")
        group = group.get_group()
    return group, dist.get_rank(group), dist.get_world_size(group)


class ColwiseQLinear(nn.Module):
    """This rank's output channels of a QLinear. forward(x [..., in_features]) -> [..., out_features /
    world] (gather_output=True: [..., out_features], all ranks' slices gathered in order)."""

    def __init__(self, shard: QLinear, group: Any, rank: int, world: int, gather_output: bool = False) -> None:
        super().__init__()
        self.shard, self.group, self.rank, self.world, self.gather_output = shard, group, rank, world, gather_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shard(x)
        if not self.gather_output or self.world == 1:
            return y
        import torch.distributed as dist

        parts = [torch.empty_like(y) for _ in range(self.world)]
        dist.all_gather(parts, y.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, world={self.world}, gather_output={self.gather_output}"


class RowwiseQLinear(nn.Module):
    """This rank's input channels of a QLinear. forward(x): x [..., in_features / world] (input_is_parallel:
    the slice a colwise layer produced) or [..., in_features] (sliced here) -> [..., out_features], the
    ranks' partial outputs summed in float32 (all-reduce) and returned in x's dtype."""

    def __init__(self, shard: QLinear, group: Any, rank: int, world: int, input_is_parallel: bool = False) -> None:
        super().__init__()
        self.shard, self.group, self.rank, self.world = shard, group, rank, world
        self.input_is_parallel = input_is_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.shard.in_features
        if not self.input_is_parallel:
            if x.shape[-1] != k * self.world:
                raise ValueError(f"RowwiseQLinear: x must be [..., {k * self.world}] (the whole input), got "
                                 f"{list(x.shape)}")  # fmt: skip
            x = x[..., self.rank * k : (self.rank + 1) * k]
        y = self.shard(x)
        return y if self.world == 1 else all_reduce_sum(y, self.group)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, world={self.world}, input_is_parallel={self.input_is_parallel}"


def parallelize_qlinear(m: QLinear, style: str, group: Any = None, *, gather_output: bool = False,
                        input_is_parallel: bool = False) -> nn.Module:  # fmt: skip
    """This process's part of QLinear `m` under torch.distributed: a ``ColwiseQLinear`` or
    ``RowwiseQLinear`` over `group` (a ProcessGroup, a 1-D DeviceMesh, or None: the default group).
    Every rank passes the same (whole) layer; each keeps its shard."""
    if style not in STYLES:
        raise ValueError(f"parallelize_qlinear: style must be one of {STYLES}, got {style!r}")
    pg, rank, world = _group_info(group)
    return _wrap(shard_qlinear(m, style, rank, world), style, pg, rank, world, gather_output, input_is_parallel)


def _wrap(shard: nn.Module, style: str, pg: Any, rank: int, world: int, gather_output: bool,
          input_is_parallel: bool) -> nn.Module:  # fmt: skip
    if style == "colwise":
        return ColwiseQLinear(shard, pg, rank, world, gather_output)
    return RowwiseQLinear(shard, pg, rank, world, input_is_parallel)


def _style_of(name: str, plan: dict[str, str]) -> Any:
    import fnmatch

    for pattern, style in plan.items():
        if fnmatch.fnmatchcase(name, pattern):
            return style
    return None


def parallelize_model(model: nn.Module, group: Any = None, plan: Any = None) -> dict[str, str]:
    """Split a converted model in place across the ranks of `group` (every rank passes the same model):
    its fused blocks (``shard_block``), then every Linear / QLinear the plan names ("colwise",
    "colwise_gather_output", "rowwise"); `plan`: {fnmatch pattern on module names: style}, default the
    model's own ``tp_plan`` (transformers). Modules of other kinds the plan names (embeddings) stay
    replicated. Returns {module name: what was done}."""
    pg, rank, world = _group_info(group, "parallelize_model")
    done: dict[str, str] = {}
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedBlock)}
    for name, blk in blocks.items():
        shard_block(blk, rank, world, pg)
        done[name] = f"fused block: {blk.heads} of {blk.heads * world} heads"
    done.update(split_planned(model, plan_of(model, plan), (pg, rank, world), tuple(f"{n}." for n in blocks)))
    if not done:
        raise ValueError("parallelize_model: nothing to split: no fused block, and no module matches the plan")
    return done


def plan_of(model: nn.Module, plan: Any = None) -> dict[str, str]:
    """`plan`, else the model's transformers ``tp_plan`` ({} if it has none)."""
    if plan is None:
        plan = getattr(model, "tp_plan", None) or getattr(model, "_tp_plan", None) or {}
    return plan


def split_planned(root: nn.Module, plan: dict[str, str], where: tuple[Any, int, int], skip: tuple[str, ...] = (),
                  prefix: str = "") -> dict[str, str]:
    """Wrap every Linear / QLinear under `root` whose full name (`prefix` + its name in root) the plan
    names, and neither a `skip` prefix ("name.") nor under one, as the rank's ColwiseQLinear /
    RowwiseQLinear part;
    `where` = (process group, rank, world). Returns {full name: what was done}."""
    pg, rank, world = where
    done: dict[str, str] = {}
    for local, mod in list(root.named_modules()):
        name = f"{prefix}{local}" if local else prefix.rstrip(".")
        style = _style_of(name, plan) if name and not (name + ".").startswith(skip) else None
        if style is None:
            continue
        if not isinstance(mod, (QLinear, nn.Linear)):
            done[name] = f"replicated ({type(mod).__name__}; plan {style!r})"
            continue
        kind = "colwise" if style == "colwise_gather_output" else style
        if kind not in STYLES:
            raise NotImplementedError(f"parallelize_model: {name}: tensor-parallel style {style!r} is not supported "
                                      "(colwise, colwise_gather_output, rowwise)")  # fmt: skip
        shard = _even_part(f"parallelize_model: {name}", mod, kind, rank, world)
        parent, attr, _ = _get(root, local)
        setattr(parent, attr, _wrap(shard, kind, pg, rank, world, style != kind, input_is_parallel=True))
        done[name] = style
    return done
