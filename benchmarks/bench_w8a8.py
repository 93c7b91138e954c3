"""W8A8 INT8 GEMM benchmark: zqkernels against torch's own paths, on the same GPU, in the same run.

    python benchmarks/bench_w8a8.py                     # full grid (~2 min on an H100)
    python benchmarks/bench_w8a8.py --short             # 9 problems (< 1 min)
    python benchmarks/bench_w8a8.py --configs           # + int8_gemm per GEMM tile (adds ~1-2 min)
    python benchmarks/bench_w8a8.py --shapes 4096x4096 --ms 1,8,16,24,32     # N x K over chosen M
    python benchmarks/bench_w8a8.py --shapes 8192x8192x8192 --no-json
    python benchmarks/bench_w8a8.py --selftest          # CPU only: formatting + pipeline self-test

Exit status: 0 when every row ran and passed its correctness check, 1 otherwise, 2 on bad usage.

Columns, per problem (M tokens, N out_features, K in_features):

    zq_gemm     zqkernels.int8_gemm(xq, wq, sx, sw) -> bf16, no bias (the kernel alone)
    zq_linear   zqkernels.quantize_per_token(x bf16) + zqkernels.int8_gemm: the W8A8 forward of
                QLinear, called as the two functional ops (no nn.Module overhead)
    bf16        torch.matmul(x, w.t()), bf16 (nn.Linear without bias)
    int_mm      torch._int_mm(xq, wq.t()) -> int32 (no scales; needs M > 16 on most builds)
    fp8row      torch._scaled_mm(x_e4m3, w_e4m3.t(), scale_a [M,1], scale_b [1,N]) -> bf16
    w8a8_torch  the unfused torch pipeline: per-token quant in torch ops + _int_mm + dequant

Method (every column of a row is measured the same way; details in benchmarks/README.md):

1.  L2 rotation: each column cycles call by call through ``n`` independent copies of all its
    inputs (weights included), ``n = max(2, ceil(rotate_bytes / input_bytes_per_call))`` with
    ``rotate_bytes = max(120 MB, 2.4 x L2)``, so a copy has left L2 when it comes round again.
2.  Random data, never zeros: int8 operands are Gaussians quantized symmetrically per row (what
    QLinear feeds the GEMM); ZQ_BENCH_INT8=uniform makes them uniform in [-127, 127] (the worst
    case for power draw). bf16 / fp8 Gaussian, scales U(0.5, 1.5) * 1e-2.
3.  CUDA graphs for every M (``--eager-above M0``: plain launches for M > M0): one graph holds one
    rotation cycle; a sample is one replay between CUDA events, divided by the calls in it.
4.  Warm-up, then as many samples as fit in ``--target-s``; the reported time is the MEDIAN.
5.  Correctness once per problem against a float64 reference of the dequantized product; the
    relative Frobenius error must be < 1e-2 or a WARNING line is printed and the exit status is 1.

The timer, rotation, copy bandwidth, provenance and JSON writer are in benchmarks/_common.py; the
CPU self-tests of this harness in benchmarks/_selftest_w8a8.py.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when imported from elsewhere
from _common import (  # noqa: E402
    COPY_BYTES,
    TARGET_S,
    copy_bandwidth,
    device_rotate_bytes,
    ensure_alive,
    environment,
    first_line,
    git_commit,
    gpu_slug,
    rotation_copies,
    time_calls,
)
from _common import write_json as _write_doc  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# ----------------------------------------------------------------------------------------------
# Problem grid
# ----------------------------------------------------------------------------------------------

# LLaMA-7B layer shapes (N, K): attention projections, fused gate+up (2 x 11008), down projection.
NK_FULL: list[tuple[int, int]] = [(4096, 4096), (22016, 4096), (4096, 11008)]
M_FULL: list[int] = [1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
NK_SHORT: list[tuple[int, int]] = [(4096, 4096), (22016, 4096)]
M_SHORT: list[int] = [16, 128, 2048, 8192]
BIG: tuple[int, int, int] = (8192, 8192, 8192)  # the square compute-bound problem, listed first

COLUMNS: tuple[str, ...] = ("zq_gemm", "zq_linear", "bf16", "int_mm", "fp8row", "w8a8_torch")
OURS: tuple[str, ...] = ("zq_gemm", "zq_linear")

FLOOR_MAX_M = 64  # the weight-bytes floor is printed for M <= this (weight streaming dominates)
CHECK_TOL = 1e-2  # relative Frobenius error bound of the correctness spot-check
QUANT_SHAPES: list[tuple[int, int]] = [(8192, 4096), (8192, 11008)]  # quantize_per_token table

METHOD_NOTES = [
    "inputs (weights included) rotated call by call over >= max(120 MB, 2.4 x L2) of independent copies",
    "random data: int8 U[-127,127], bf16/fp8 Gaussian, scales U(0.5,1.5)*1e-2",
    (
        "CUDA graph of one rotation cycle per column, replay timed with CUDA events / calls in cycle "
        "(plain launches for M > eager_above when set)"
    ),
    "median of many samples after warm-up; all columns of a row measured the same way",
    "zq_linear = quantize_per_token(x bf16) + int8_gemm as functional calls (no nn.Module)",
    "copy bandwidth counts read + write bytes; weight floor = N*K bytes / copy bandwidth",
    "spot-check: relative Frobenius error vs float64 reference of the dequantized product < 1e-2",
]


def problems(
    short: bool = False, shapes: Iterable[Any] | None = None, ms: Sequence[int] | None = None
) -> list[tuple[int, int, int]]:
    """The (M, N, K) list to measure: the default grid, or ``shapes`` (see ``parse_shapes``)."""
    m_list = list(ms) if ms else (M_SHORT if short else M_FULL)
    if shapes:
        return parse_shapes(shapes, m_list)
    nks = NK_SHORT if short else NK_FULL
    return [BIG] + [(m, n, k) for (n, k) in nks for m in m_list]


def parse_shapes(specs: Iterable[Any], ms: Sequence[int]) -> list[tuple[int, int, int]]:
    """Shapes from strings ``"MxNxK"`` / ``"M,N,K"`` or tuples; an ``"NxK"`` pair expands over ``ms``."""
    out: list[tuple[int, int, int]] = []
    for spec in specs:
        if isinstance(spec, str):
            parts = [p for p in re.split(r"[x,X*\s]+", spec.strip()) if p]
            try:
                dims = [int(p) for p in parts]
            except ValueError:
                raise ValueError(f"shape '{spec}': expected MxNxK or NxK of integers") from None
        else:
            dims = [int(d) for d in spec]
        if len(dims) == 3:
            shapes_here = [tuple(dims)]
        elif len(dims) == 2:
            shapes_here = [(m, dims[0], dims[1]) for m in ms]
        else:
            raise ValueError(f"shape {spec!r}: expected MxNxK or NxK, got {len(dims)} numbers")
        for s in shapes_here:
            if min(s) <= 0:
                raise ValueError(f"shape {spec!r}: M, N, K must be positive, got {s}")
            out.append((int(s[0]), int(s[1]), int(s[2])))
    return out


# ----------------------------------------------------------------------------------------------
# L2 rotation: independent copies of every input, cycled call by call
# ----------------------------------------------------------------------------------------------

# Tensor kinds a column reads, per call. Shapes and bytes per element are below.
COLUMN_INPUTS: dict[str, tuple[str, ...]] = {
    "zq_gemm": ("xq", "wq", "sx", "sw"),
    "zq_linear": ("xb", "wq", "sw"),
    "bf16": ("xb", "wb"),
    "int_mm": ("xq", "wq"),
    "fp8row": ("x8", "w8", "sa", "sb"),
    "w8a8_torch": ("xb", "wq", "sw"),
}


def _kind_shape(kind: str, M: int, N: int, K: int) -> tuple[int, ...]:
    return {
        "xq": (M, K),
        "xb": (M, K),
        "x8": (M, K),
        "wq": (N, K),
        "wb": (N, K),
        "w8": (N, K),
        "sx": (M,),
        "sw": (N,),
        "sa": (M, 1),
        "sb": (1, N),
    }[kind]


_KIND_ELEM_BYTES = {"xq": 1, "x8": 1, "xb": 2, "wq": 1, "w8": 1, "wb": 2, "sx": 4, "sw": 4, "sa": 4, "sb": 4}


def input_bytes(col: str, M: int, N: int, K: int) -> int:
    """Bytes of input one call of ``col`` reads (outputs not counted: fewer bytes, more copies)."""
    total = 0
    for kind in COLUMN_INPUTS[col]:
        total += math.prod(_kind_shape(kind, M, N, K)) * _KIND_ELEM_BYTES[kind]
    return total


class _Pool:
    """Independent random copies of one problem's operands, made on demand and shared by columns.

    Columns that read the same kind (e.g. int8 weights: zq_gemm, zq_linear, int_mm, w8a8_torch)
    use the same copies; each column cycles through its own first ``n`` of them. Each copy is a
    separate allocation with its own random values, so no two calls of a cycle share cache lines.
    """

    def __init__(self, M: int, N: int, K: int, device: torch.device, seed: int):
        self.M, self.N, self.K = M, N, K
        self.device = device
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.copies: dict[str, list[torch.Tensor]] = {}

    def _make(self, kind: str) -> torch.Tensor:
        shape = _kind_shape(kind, self.M, self.N, self.K)
        g, d = self.gen, self.device
        if kind in ("xq", "wq"):
            if os.environ.get("ZQ_BENCH_INT8", "gauss") == "uniform":
                return torch.randint(-127, 128, shape, dtype=torch.int8, generator=g, device=d)
            v = torch.randn(shape, dtype=torch.float32, generator=g, device=d)
            v.mul_(127.0 / v.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30))
            return v.round_().clamp_(-127, 127).to(torch.int8)
        if kind in ("xb", "wb"):
            return torch.randn(shape, dtype=torch.bfloat16, generator=g, device=d)
        if kind in ("x8", "w8"):
            # Gaussian * 8 covers e4m3's exponent range well (|v| up to ~40, max finite 448).
            v = torch.randn(shape, dtype=torch.bfloat16, generator=g, device=d).mul_(8.0)
            return v.to(torch.float8_e4m3fn)
        if kind in ("sx", "sw", "sa", "sb"):
            return torch.rand(shape, dtype=torch.float32, generator=g, device=d).add_(0.5).mul_(1e-2)
        raise KeyError(kind)

    def get(self, kind: str, n: int) -> list[torch.Tensor]:
        lst = self.copies.setdefault(kind, [])
        while len(lst) < n:
            lst.append(self._make(kind))
        return lst[:n]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for lst in self.copies.values() for t in lst)


# ----------------------------------------------------------------------------------------------
# The measured callables. Each returns its output so graph capture can keep it alive.
# ----------------------------------------------------------------------------------------------


def torch_quant_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric int8 quantization in plain torch ops (docs/SCALES.md), scale [M, 1].

    This is both the w8a8_torch peer's first stage and the reference for zq_linear's check; it
    shares no code with the kernels.
    """
    xf = x.float()
    amax = xf.abs().amax(dim=1, keepdim=True)
    sx = amax / 127.0
    inv = 127.0 / amax.clamp_min(1e-30)  # an all-zero row gives q = 0 instead of NaN
    q = torch.clamp(torch.round(xf * inv), -127, 127).to(torch.int8)
    return q, sx


def _torch_w8a8(x: torch.Tensor, wq_t: torch.Tensor, sw_row: torch.Tensor) -> torch.Tensor:
    """The unfused torch W8A8 forward: quant (torch ops) + _int_mm + dequant to bf16."""
    q, sx = torch_quant_per_token(x)
    acc = torch._int_mm(q, wq_t)
    return (acc.float() * sx * sw_row).to(torch.bfloat16)


def _tile_kw(recipe: str, tile: str | None) -> dict[str, str]:
    """int8_gemm keywords selecting `tile` of kernel family `recipe` ("sm80_int8_rowwise": arch sm80)."""
    if tile is None:
        return {}
    return {"tile": tile, "backend": recipe.split("_", 1)[0]}


def _calls(
    col: str, pool: _Pool, n: int, zq: Any, tile: str | None = None, recipe: str = ""
) -> list[Callable[[], Any]]:
    """One zero-argument callable per rotated copy; copy i's tensors are bound as defaults.
    ``tile``: zq_gemm with that GEMM tile of family ``recipe`` (``int8_gemm(..., backend=arch,
    tile=name)``) instead of the dispatch."""
    g = pool.get
    if col == "zq_gemm":
        kw = _tile_kw(recipe, tile)
        return [
            lambda a=a, b=b, c=c, d=d: zq.int8_gemm(a, b, c, d, **kw)
            for a, b, c, d in zip(g("xq", n), g("wq", n), g("sx", n), g("sw", n))
        ]
    if col == "zq_linear":

        def linear(x: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor) -> torch.Tensor:
            xq, sx = zq.quantize_per_token(x)
            return zq.int8_gemm(xq, wq, sx, sw)

        return [lambda x=x, w=w, s=s: linear(x, w, s) for x, w, s in zip(g("xb", n), g("wq", n), g("sw", n))]
    if col == "bf16":
        return [lambda x=x, w=w: torch.matmul(x, w.t()) for x, w in zip(g("xb", n), g("wb", n))]
    if col == "int_mm":
        return [lambda x=x, w=w: torch._int_mm(x, w.t()) for x, w in zip(g("xq", n), g("wq", n))]
    if col == "fp8row":
        return [
            lambda x=x, w=w, a=a, b=b: torch._scaled_mm(
                x, w.t(), scale_a=a, scale_b=b, out_dtype=torch.bfloat16
            )
            for x, w, a, b in zip(g("x8", n), g("w8", n), g("sa", n), g("sb", n))
        ]
    if col == "w8a8_torch":
        # Weight-side prep (transposed view, [1, N] scale view) is load-time work, done here once.
        wts = [w.t() for w in g("wq", n)]
        sws = [s.view(1, -1) for s in g("sw", n)]
        return [lambda x=x, wt=wt, s=s: _torch_w8a8(x, wt, s) for x, wt, s in zip(g("xb", n), wts, sws)]
    raise KeyError(col)


# ----------------------------------------------------------------------------------------------
# Correctness spot-check (float64 reference on the dequantized operands; no kernel code)
# ----------------------------------------------------------------------------------------------


def ref_gemm(xq: torch.Tensor, wq: torch.Tensor, sx: torch.Tensor, sw: torch.Tensor) -> torch.Tensor:
    """float64 sx[m] * sw[n] * sum_k xq[m,k] wq[n,k]; exact accumulation (|acc| << 2^53)."""
    acc = xq.double() @ wq.double().t()
    return acc * sx.double().reshape(-1, 1) * sw.double().reshape(1, -1)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ||out - ref|| / ||ref|| (NaN if out has NaN/Inf)."""
    o = out.double()
    den = ref.norm().item()
    num = (o - ref).norm().item()
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def _check_ok(err: float | None) -> bool:
    return err is not None and math.isfinite(err) and err < CHECK_TOL


# ----------------------------------------------------------------------------------------------
# Header: provenance of the numbers
# ----------------------------------------------------------------------------------------------


def default_json_path(
    results_dir: Any = None, device_name: str | None = None, commit: str | None = None
) -> Path:
    """``<results_dir>/w8a8_<gpu-slug>_<commit>.json`` (results_dir: benchmarks/results by default)."""
    if results_dir is None:
        results_dir = RESULTS
    if device_name is None:
        device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if commit is None:
        commit = git_commit()
    return Path(results_dir) / f"w8a8_{gpu_slug(device_name)}_{commit}.json"


def collect_header(
    zq: Any, device: torch.device, copy_bw: float, rotate_bytes: int, settings: dict[str, Any]
) -> dict[str, Any]:
    try:
        info = dict(zq.info())
    except Exception as e:  # noqa: BLE001 - the header must not kill the benchmark
        info = {"error": f"{type(e).__name__}: {first_line(e)}"}
    version = info.get("version") or getattr(zq, "__version__", "unknown")
    env = environment(device)  # device, torch, cuda, python, commit (of this checkout), date
    extra: dict[str, Any] = {}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        extra = {
            "sm_count": props.multi_processor_count,
            "total_memory": props.total_memory,
            "l2_bytes": getattr(props, "L2_cache_size", None),
            "capability": f"{props.major}.{props.minor}",
        }
    return {
        "device": env["device"],
        "device_props": extra,
        "zqkernels_version": version,
        "zqkernels_info": info,
        "commit": env["commit"],
        "date": env["date"],
        "torch": env["torch"],
        "cuda": env["cuda"],
        "python": env["python"],
        "copy_bw_Bps": copy_bw,
        "rotate_bytes": rotate_bytes,
        "settings": settings,
        "method": METHOD_NOTES,
    }


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def run(
    short: bool = False,
    out_json: Any = None,
    shapes: Iterable[Any] | None = None,
    configs: bool = False,
    *,
    ms: Sequence[int] | None = None,
    eager_above: int | None = None,
    target_s: float = TARGET_S,
    seed: int = 0,
    quant: bool = True,
    print_fn: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Measure zq_gemm, zq_linear and the torch peers on the problem grid; print the table.

    short: the reduced grid (M_SHORT x NK_SHORT + 8192^3). shapes: explicit problems instead
    ("MxNxK", or "NxK" expanded over ``ms`` / the default M list). configs: also time zq_gemm with
    every GEMM tile of ``zqkernels.info()["gemm_tiles"]`` (``int8_gemm(..., tile=name)``). eager_above: time plain launches for M above this
    (default: CUDA graphs for every M). quant: print the quantize_per_token bandwidth table.
    Writes JSON ``{"header", "rows", "quant"}`` to ``out_json`` only when it is given.
    Returns the row dicts (one per problem).
    """
    import zqkernels as zq  # lazy: this module imports without a GPU or a built extension

    shapes = None if shapes is None else list(shapes)  # used twice below: a generator would run dry

    if not torch.cuda.is_available():
        raise RuntimeError("zqkernels benchmark: no CUDA device visible (torch.cuda.is_available() is False)")
    device = torch.device("cuda", torch.cuda.current_device())
    _, rows, _ = _run_impl(
        problems(short, shapes, ms),
        zq=zq,
        device=device,
        configs=configs,
        eager_above=eager_above,
        target_s=target_s,
        seed=seed,
        rotate_bytes=device_rotate_bytes(device),
        copy_bytes=COPY_BYTES,
        quant_shapes=QUANT_SHAPES if quant else [],
        out_json=out_json,
        print_fn=print_fn,
        settings={
            "short": short,
            "configs": configs,
            "eager_above": eager_above,
            "target_s": target_s,
            "seed": seed,
            "shapes": None if shapes is None else [str(s) for s in shapes],
        },
    )
    return rows


def _run_impl(
    problem_list: list[tuple[int, int, int]],
    *,
    zq: Any,
    device: torch.device,
    configs: bool,
    eager_above: int | None,
    target_s: float,
    seed: int,
    rotate_bytes: int,
    copy_bytes: int,
    quant_shapes: list[tuple[int, int]],
    out_json: Any,
    print_fn: Callable[[str], None],
    settings: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    copy_bw = copy_bandwidth(device, copy_bytes)
    header = collect_header(zq, device, copy_bw, rotate_bytes, settings)
    for line in format_header(header):
        print_fn(line)

    cfg_lists = tile_lists(zq) if configs else {}
    rows: list[dict[str, Any]] = []
    qrows: list[dict[str, Any]] = []
    try:
        for line in format_table_header():
            print_fn(line)
        for i, (M, N, K) in enumerate(problem_list):
            row = _measure_problem(
                M,
                N,
                K,
                zq=zq,
                device=device,
                cfg_lists=cfg_lists,
                eager_above=eager_above,
                target_s=target_s,
                seed=seed + i,
                rotate_bytes=rotate_bytes,
                copy_bw=copy_bw,
            )
            rows.append(row)
            print_fn(format_row(row))
            for w in row_warnings(row):
                print_fn(w)
        for line in format_notes(rows):
            print_fn(line)
        if cfg_lists:
            for line in format_configs(rows, cfg_lists):
                print_fn(line)
        if quant_shapes:
            qrows = [
                _measure_quant(
                    M,
                    K,
                    zq=zq,
                    device=device,
                    target_s=target_s,
                    seed=seed,
                    rotate_bytes=rotate_bytes,
                    copy_bw=copy_bw,
                )
                for (M, K) in quant_shapes
            ]
            for line in format_quant(qrows, copy_bw):
                print_fn(line)
    except BaseException as e:
        header["aborted"] = f"{type(e).__name__}: {first_line(e)}"
        raise
    finally:
        header["elapsed_s"] = time.perf_counter() - t_start
        n_bad = sum(1 for r in rows if not row_ok(r))
        header["n_failed_rows"] = n_bad
        if out_json is not None:
            write_json(out_json, header, rows, qrows)
    print_fn(
        f"{len(rows)} problems in {header['elapsed_s']:.0f} s"
        + (f"; {n_bad} with a zqkernels error or failed check (see WARNING lines)" if n_bad else "")
        + (f"; JSON: {out_json}" if out_json is not None else "")
    )
    return header, rows, qrows


def tile_lists(zq: Any) -> dict[str, list[str]]:
    """GEMM tile names per recipe, ``zqkernels.info()["gemm_tiles"]`` (each is passed to
    ``int8_gemm(..., tile=name)``); RuntimeError when this zqkernels has no tile API or no tiles."""
    info = zq.info()
    if "gemm_tiles" not in info:
        raise RuntimeError(
            f"zqkernels {info.get('version', '?')} has no per-tile selection: info() has no 'gemm_tiles' "
            "(the int8_gemm(..., tile=name) API); run without --configs, or update zqkernels"
        )
    tiles = {str(r): [str(t) for t in names] for r, names in dict(info["gemm_tiles"]).items() if names}
    if not tiles:
        raise RuntimeError(
            "zqkernels.info()['gemm_tiles'] is empty (a build without CUDA kernels?): no tiles to time"
        )
    return tiles


def _measure_problem(
    M: int,
    N: int,
    K: int,
    *,
    zq: Any,
    device: torch.device,
    cfg_lists: dict[str, list[str]],
    eager_above: int | None,
    target_s: float,
    seed: int,
    rotate_bytes: int,
    copy_bw: float,
) -> dict[str, Any]:
    use_graph = device.type == "cuda" and (eager_above is None or M <= eager_above)
    pool = _Pool(M, N, K, device, seed)
    row = _empty_row(M, N, K)

    # Correctness spot-check on copy 0 (also the first call of zq_gemm / zq_linear).
    xq, wq, sx, sw = (pool.get(k, 1)[0] for k in ("xq", "wq", "sx", "sw"))
    ref = None
    try:
        ref = ref_gemm(xq, wq, sx, sw)
        row["gemm_rel_err"] = rel_err(zq.int8_gemm(xq, wq, sx, sw), ref)
    except Exception as e:  # noqa: BLE001 - recorded, printed as WARNING, run goes on
        row["gemm_rel_err"] = None
        row["errors"]["check_gemm"] = f"{type(e).__name__}: {first_line(e)}"
        ensure_alive(device, "zq_gemm check")
    try:
        xb = pool.get("xb", 1)[0]
        q_ref, s_ref = torch_quant_per_token(xb)
        lin_ref = ref_gemm(q_ref, wq, s_ref, sw)
        xq_k, sx_k = zq.quantize_per_token(xb)
        row["linear_rel_err"] = rel_err(zq.int8_gemm(xq_k, wq, sx_k, sw), lin_ref)
        del q_ref, s_ref, lin_ref, xq_k, sx_k
    except Exception as e:  # noqa: BLE001
        row["linear_rel_err"] = None
        row["errors"]["check_linear"] = f"{type(e).__name__}: {first_line(e)}"
        ensure_alive(device, "zq_linear check")
    if not cfg_lists:
        ref = None  # float64 [M, N] (1.4 GB at 8192 x 22016): only the config checks still need it

    for col in COLUMNS:
        _measure_column(row, col, col, pool, zq, device, use_graph, target_s, rotate_bytes)

    # Derived numbers (None where a column is missing).
    flops = 2.0 * M * N * K
    for col in COLUMNS:
        us = row.get(f"{col}_us")
        row[f"{col}_tops"] = flops / (us * 1e-6) / 1e12 if us else None
    row["speedup_vs_int_mm"] = _ratio(row.get("int_mm_us"), row.get("zq_gemm_us"))
    row["speedup_vs_fp8row"] = _ratio(row.get("fp8row_us"), row.get("zq_gemm_us"))
    row["linear_speedup_vs_bf16"] = _ratio(row.get("bf16_us"), row.get("zq_linear_us"))
    row["linear_speedup_vs_w8a8_torch"] = _ratio(row.get("w8a8_torch_us"), row.get("zq_linear_us"))
    if M <= FLOOR_MAX_M:
        row["floor_us"] = N * K / copy_bw * 1e6
        row["gemm_over_floor"] = _ratio(row.get("zq_gemm_us"), row["floor_us"])

    if cfg_lists:
        # zq_gemm once per GEMM tile (int8_gemm(..., tile=name)); the automatic dispatch is the
        # zq_gemm column above, shown again as 'auto' in the tile table.
        row["configs"] = {}
        for ci, (recipe, name) in enumerate((r, t) for r, ts in cfg_lists.items() for t in ts):
            key = f"{recipe}/{name}"
            entry: dict[str, Any] = {"index": ci}
            try:
                if ref is not None:
                    entry["rel_err"] = rel_err(zq.int8_gemm(xq, wq, sx, sw, **_tile_kw(recipe, name)), ref)
                n = rotation_copies(input_bytes("zq_gemm", M, N, K), rotate_bytes)
                res = time_calls(
                    _calls("zq_gemm", pool, n, zq, tile=name, recipe=recipe), device, use_graph, target_s
                )
                entry.update(us=res["us"], method=res["method"], reps=res["reps"])
            except Exception as e:  # noqa: BLE001 - some tiles do not take some shapes
                entry.update(us=None, error=f"{type(e).__name__}: {first_line(e)}")
                ensure_alive(device, key)
            row["configs"][key] = entry

    del pool, ref
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _measure_column(
    row: dict[str, Any],
    col: str,
    key: str,
    pool: _Pool,
    zq: Any,
    device: torch.device,
    use_graph: bool,
    target_s: float,
    rotate_bytes: int,
) -> None:
    M, N, K = row["M"], row["N"], row["K"]
    n = rotation_copies(input_bytes(col, M, N, K), rotate_bytes)
    row["n_copies"][key] = n
    row["rotated_bytes"][key] = n * input_bytes(col, M, N, K)
    try:
        calls = _calls(col, pool, n, zq)
        calls[0]()  # an unsupported shape (int_mm with M <= 16, ...) raises here, before timing
        res = time_calls(calls, device, use_graph, target_s)
    except Exception as e:  # noqa: BLE001 - recorded as None ('-' or ERR in the table)
        row[f"{key}_us"] = None
        row["errors"][key] = f"{type(e).__name__}: {first_line(e)}"
        ensure_alive(device, key)
        return
    if device.type == "cuda":
        torch.cuda.empty_cache()  # hand back this column's graph pool before the next one captures
    row[f"{key}_us"] = res["us"]
    row[f"{key}_us_min"] = res["us_min"]
    row[f"{key}_spread"] = res["spread"]
    row[f"{key}_reps"] = res["reps"]
    row["method"][key] = res["method"]
    if res["note"]:
        row["notes"][key] = res["note"]


def _measure_quant(
    M: int,
    K: int,
    *,
    zq: Any,
    device: torch.device,
    target_s: float,
    seed: int,
    rotate_bytes: int,
    copy_bw: float,
) -> dict[str, Any]:
    """quantize_per_token (zq kernel and torch ops) on bf16 [M, K]: time and effective bandwidth
    over the minimal traffic 2MK (read) + MK + 4M (write). Graph-timed with rotation."""
    pool = _Pool(M, 1, K, device, seed)
    nbytes = 2 * M * K + M * K + 4 * M
    n = rotation_copies(2 * M * K, rotate_bytes)
    xs = pool.get("xb", n)
    use_graph = device.type == "cuda"
    out: dict[str, Any] = {"M": M, "K": K, "bytes": nbytes, "n_copies": n}
    for name, fn in (("zq", zq.quantize_per_token), ("torch", torch_quant_per_token)):
        try:
            res = time_calls([lambda x=x, fn=fn: fn(x) for x in xs], device, use_graph, target_s)
            out[f"{name}_us"] = res["us"]
            out[f"{name}_GBps"] = nbytes / (res["us"] * 1e-6) / 1e9
            out[f"{name}_frac_copy"] = nbytes / (res["us"] * 1e-6) / copy_bw
            out[f"{name}_method"] = res["method"]
        except Exception as e:  # noqa: BLE001
            out[f"{name}_us"] = out[f"{name}_GBps"] = out[f"{name}_frac_copy"] = None
            out[f"{name}_error"] = f"{type(e).__name__}: {first_line(e)}"
            ensure_alive(device, f"quantize ({name})")
    del pool, xs
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def row_ok(row: dict[str, Any]) -> bool:
    """False when one of our columns errored or a correctness check failed."""
    if any(row.get(f"{c}_us") is None for c in OURS):
        return False
    if not _check_ok(row.get("gemm_rel_err")) or not _check_ok(row.get("linear_rel_err")):
        return False
    for entry in (row.get("configs") or {}).values():
        if "rel_err" in entry and not _check_ok(entry["rel_err"]):
            return False
    return True


def write_json(
    path: Any, header: dict[str, Any], rows: list[dict[str, Any]], qrows: list[dict[str, Any]]
) -> None:
    """``{"header", "rows", "quant"}``, NaN as null, written atomically (benchmarks/README.md)."""
    _write_doc(path, {"header": header, "rows": rows, "quant": qrows})


# ----------------------------------------------------------------------------------------------
# Formatting (mimics shared/peers-h100.txt: one line per problem, groups separated by '|')
# ----------------------------------------------------------------------------------------------


def _f(v: float | None, fmt: str) -> str | None:
    return None if v is None or not math.isfinite(v) else format(v, fmt)


def _time_cell(col: str) -> Callable[[dict[str, Any]], str | None]:
    def cell(r: dict[str, Any]) -> str | None:
        v = r.get(f"{col}_us")
        if v is None:
            # Our own columns failing is a bug: ERR, not the '-' of an unsupported peer shape.
            return "ERR" if col in OURS else None
        return format(v, ".1f")

    return cell


def _err_cell(r: dict[str, Any]) -> str | None:
    e = [r.get("gemm_rel_err"), r.get("linear_rel_err")]
    if any(x is None for x in e):
        return "ERR"
    worst = max(e)
    return format(worst, ".0e") + ("" if _check_ok(worst) else "!")


def _how_cell(r: dict[str, Any]) -> str:
    methods = set((r.get("method") or {}).values())
    if not methods:
        return "-"
    if len(methods) == 1:
        return {"graph": "g", "eager": "e", "cpu": "c"}.get(methods.pop(), "?")
    return "mix"


# (group suffix, [(title, width, cell)]); a cell returning None prints '-'.
_GROUPS: list[tuple[str, list[tuple[str, int, Callable[[dict[str, Any]], str | None]]]]] = [
    ("", [("M", 5, lambda r: str(r["M"])), ("N", 6, lambda r: str(r["N"])), ("K", 6, lambda r: str(r["K"]))]),
    (" (us)", [(c, max(8, len(c)), _time_cell(c)) for c in COLUMNS]),
    (
        " TOPS",
        [
            ("gemm", 5, lambda r: _f(r.get("zq_gemm_tops"), ".0f")),
            ("linear", 6, lambda r: _f(r.get("zq_linear_tops"), ".0f")),
        ],
    ),
    (
        " (x)",
        [
            ("g:int_mm", 8, lambda r: _f(r.get("speedup_vs_int_mm"), ".2f")),
            ("g:fp8row", 8, lambda r: _f(r.get("speedup_vs_fp8row"), ".2f")),
            ("lin:bf16", 8, lambda r: _f(r.get("linear_speedup_vs_bf16"), ".2f")),
        ],
    ),
    (
        "",
        [
            ("floor_us", 8, lambda r: _f(r.get("floor_us"), ".1f")),
            ("g/floor", 7, lambda r: _f(r.get("gemm_over_floor"), ".2f")),
        ],
    ),
    ("", [("err", 6, _err_cell), ("how", 3, _how_cell)]),
]


def _line(cells_per_group: list[list[str]], suffixes: list[str]) -> str:
    parts = [" ".join(cells) + suf for cells, suf in zip(cells_per_group, suffixes)]
    return " | ".join(parts).rstrip()


def format_table_header() -> list[str]:
    cells = [[t.rjust(w) for (t, w, _) in cols] for (_, cols) in _GROUPS]
    return [_line(cells, [s for (s, _) in _GROUPS])]


def format_row(r: dict[str, Any]) -> str:
    cells = []
    for _, cols in _GROUPS:
        g = []
        for _, w, fn in cols:
            v = fn(r)
            g.append(("-" if v is None else v).rjust(w))
        cells.append(g)
    return _line(cells, [" " * len(s) for (s, _) in _GROUPS])


def format_header(h: dict[str, Any]) -> list[str]:
    bw = h.get("copy_bw_Bps") or 0.0
    return [
        (
            f"zqkernels {h.get('zqkernels_version')} (commit {h.get('commit')}) | torch {h.get('torch')} "
            f"cuda {h.get('cuda')} | {h.get('device')} | {h.get('date')}"
        ),
        (
            f"copy bandwidth (read+write) {bw / 1e12:.2f} TB/s; L2 rotation over >= "
            f"{h.get('rotate_bytes', 0) / 1e6:.0f} MB per column; median per call; "
            "speedup (x) = peer time / our time, > 1 = zqkernels faster"
        ),
        (
            f"g = zq_gemm, lin = zq_linear; floor_us = N*K weight bytes / copy bandwidth (M <= {FLOOR_MAX_M}); "
            "err = worst relative error of the spot-checks (! >= 1e-2); how: g = CUDA graph, e = plain launches"
        ),
    ]


def row_warnings(r: dict[str, Any]) -> list[str]:
    where = f"M={r['M']} N={r['N']} K={r['K']}"
    out = []
    for key, name in (("gemm_rel_err", "zq_gemm"), ("linear_rel_err", "zq_linear")):
        e = r.get(key)
        if e is None:
            msg = r["errors"].get("check_gemm" if name == "zq_gemm" else "check_linear", "no result")
            out.append(f"WARNING {where}: {name} check did not run: {msg}")
        elif not _check_ok(e):
            out.append(
                f"WARNING {where}: {name} relative error {e:.3e} >= {CHECK_TOL:.0e} "
                f"(output does not match the float64 reference)"
            )
    for c in OURS:
        if r.get(f"{c}_us") is None and c in r["errors"]:
            out.append(f"WARNING {where}: {c} failed: {r['errors'][c]}")
    for key, entry in (r.get("configs") or {}).items():
        if "rel_err" in entry and not _check_ok(entry["rel_err"]):
            out.append(f"WARNING {where}: config {key} relative error {entry['rel_err']:.3e}")
    for c, note in (r.get("notes") or {}).items():
        out.append(f"note {where}: {c}: {note}")
    return out


def format_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Why peer cells are '-': each distinct (column, error) once, with the problems it hit."""
    seen: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        for c, msg in r["errors"].items():
            if c in OURS or c.startswith("check"):
                continue  # already a WARNING line
            seen.setdefault((c, msg), []).append(f"{r['M']}x{r['N']}x{r['K']}")
    out = []
    if seen:
        out.append("'-': the peer raised (recorded in the JSON as null):")
    for (c, msg), where in seen.items():
        shown = ", ".join(where[:6]) + (f" and {len(where) - 6} more" if len(where) > 6 else "")
        out.append(f"  {c} on {shown}: {msg}")
    return out


def format_configs(rows: list[dict[str, Any]], cfg_lists: dict[str, list[str]]) -> list[str]:
    """zq_gemm per GEMM tile: '*' marks the fastest tile of a row; 'auto' is the zq_gemm column
    (the automatic dispatch) and auto/best its time over the fastest tile's (1.00: it picks the best)."""
    keys = [f"{r}/{t}" for r, ts in cfg_lists.items() for t in ts]
    out = [
        "",
        "zq_gemm per GEMM tile, int8_gemm(..., tile=name) (us; * fastest, ! failed check, - cannot run):",
    ]
    out += [f"  #{i} = {k}" for i, k in enumerate(keys)]
    titles = [f"#{i}" for i in range(len(keys))]
    w = max([10] + [len(t) + 2 for t in titles])  # room for '12345.6*!'
    out.append(
        f"{'M':>5} {'N':>6} {'K':>6} | {'auto':>8} |"
        + "".join(t.rjust(w) for t in titles)
        + " | best auto/best"
    )
    for r in rows:
        cfgs = r.get("configs") or {}
        times = {k: cfgs[k].get("us") for k in keys if k in cfgs}
        valid = {k: v for k, v in times.items() if v is not None}
        best = min(valid, key=valid.get) if valid else None
        cells = []
        for k in keys:
            v = times.get(k)
            if v is None:
                cells.append("-".rjust(w))
                continue
            mark = "*" if k == best else ""
            if "rel_err" in cfgs[k] and not _check_ok(cfgs[k]["rel_err"]):
                mark += "!"
            cells.append((format(v, ".1f") + mark).rjust(w))
        auto = r.get("zq_gemm_us")
        best_name = f"#{cfgs[best]['index']}" if best else "-"
        ratio = _f(_ratio(auto, valid.get(best)) if best else None, ".2f") or "-"
        out.append(
            f"{r['M']:>5} {r['N']:>6} {r['K']:>6} | {(_f(auto, '.1f') or '-'):>8} |"
            + "".join(cells)
            + f" | {best_name:>4} {ratio:>9}"
        )
    return out


def format_quant(qrows: list[dict[str, Any]], copy_bw: float) -> list[str]:
    out = [
        "",
        (
            f"quantize_per_token, bf16 [M, K] -> int8 [M, K] + f32 [M]; bytes = 2MK + MK + 4M; "
            f"copy bandwidth {copy_bw / 1e12:.2f} TB/s"
        ),
        f"{'M':>5} {'K':>6} | {'zq_us':>8} {'GB/s':>6} {'%copy':>6} | {'torch_us':>8} {'GB/s':>6} {'%copy':>6}",
    ]
    for q in qrows:
        cells = []
        for name in ("zq", "torch"):
            us, gbs, frac = q.get(f"{name}_us"), q.get(f"{name}_GBps"), q.get(f"{name}_frac_copy")
            cells.append(
                " ".join(
                    [
                        (_f(us, ".1f") or ("ERR" if name == "zq" else "-")).rjust(8),
                        (_f(gbs, ".0f") or "-").rjust(6),
                        ((_f(frac * 100, ".0f") + "%") if frac else "-").rjust(6),
                    ]
                )
            )
        out.append(f"{q['M']:>5} {q['K']:>6} | " + " | ".join(cells))
    return out


def _empty_row(M: int, N: int, K: int) -> dict[str, Any]:
    """A result row before any measurement (the shape every printer and the JSON expect)."""
    return {
        "M": M,
        "N": N,
        "K": K,
        "errors": {},
        "method": {},
        "notes": {},
        "n_copies": {},
        "rotated_bytes": {},
    }


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _int_list(s: str) -> list:
    try:
        out = [int(v) for v in s.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{s}'") from None
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got '{s}'")
    return out


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{s}'") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{s}'")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Columns and method: benchmarks/README.md",
    )
    p.add_argument(
        "--short",
        action="store_true",
        help="reduced grid: M in {16,128,2048,8192} x (N,K) in {(4096,4096),(22016,4096)} + 8192^3",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--json",
        metavar="PATH",
        help="write the JSON here (default: benchmarks/results/w8a8_<gpu-slug>_<commit>.json)",
    )
    out.add_argument("--no-json", action="store_true", help="print only, write no JSON")
    p.add_argument(
        "--shapes",
        nargs="+",
        metavar="SHAPE",
        help="problems instead of the grid: MxNxK, or NxK to sweep the M list (see --ms)",
    )
    p.add_argument(
        "--ms",
        type=_int_list,
        metavar="M1,M2,...",
        help="M values for the grid's / --shapes' NxK pairs (default: the full or --short list)",
    )
    p.add_argument(
        "--configs",
        action="store_true",
        help="also time int8_gemm(..., tile=name) for every tile of zqkernels.info()['gemm_tiles']",
    )
    p.add_argument(
        "--eager-above",
        type=int,
        metavar="M",
        default=None,
        help="time plain launches instead of CUDA graphs for M above this (default: graphs for all M)",
    )
    p.add_argument(
        "--target-s",
        type=_positive_float,
        default=None,
        metavar="S",
        help="measuring time per column and problem, seconds (default 0.2)",
    )
    p.add_argument("--seed", type=int, default=0, help="random data seed (default 0)")
    p.add_argument("--no-quant", action="store_true", help="skip the quantize_per_token bandwidth table")
    p.add_argument(
        "--selftest",
        action="store_true",
        help="run the CPU self-tests of the harness (no GPU, no built zqkernels needed) and exit",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.selftest:
        import _selftest_w8a8

        _selftest_w8a8.selftest_format()
        _selftest_w8a8.selftest_cpu()
        return 0

    try:
        import zqkernels
    except ImportError as e:
        print(f"bench_w8a8: cannot import zqkernels ({e}); install it first: pip install .", file=sys.stderr)
        return 2

    if not torch.cuda.is_available():
        print(
            "bench_w8a8: no CUDA device visible (torch.cuda.is_available() is False); "
            "--selftest runs without one",
            file=sys.stderr,
        )
        return 2
    if args.configs:
        try:
            tile_lists(zqkernels)
        except RuntimeError as e:
            print(f"bench_w8a8: --configs: {e}", file=sys.stderr)
            return 2

    try:
        probs = problems(args.short, args.shapes, args.ms)
    except ValueError as e:
        print(f"bench_w8a8: --shapes: {e}", file=sys.stderr)
        return 2
    if not probs:
        print("bench_w8a8: no problems to run", file=sys.stderr)
        return 2

    out_json = None
    if not args.no_json:
        out_json = Path(args.json) if args.json else default_json_path(RESULTS, commit=git_commit())

    kwargs = {}
    if args.target_s is not None:
        kwargs["target_s"] = args.target_s
    rows = run(
        short=args.short,
        out_json=out_json,
        shapes=args.shapes,
        configs=args.configs,
        ms=args.ms,
        eager_above=args.eager_above,
        seed=args.seed,
        quant=not args.no_quant,
        **kwargs,
    )
    bad = [r for r in rows if not row_ok(r)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
