"""W8A8 GEMM benchmark: zqkernels against torch's own paths, on the same GPU, in the same run.

Entry points: ``run()`` (used by ``benchmarks/bench_w8a8.py``, documented in
``benchmarks/README.md``) and ``_selftest_format()`` / ``_selftest_cpu()``, which check the
formatting, the L2 rotation and the whole measuring pipeline on CPU with a pure-torch stand-in for
zqkernels (``python benchmarks/bench_w8a8.py --selftest``; no GPU needed).

Columns, per problem (M tokens, N out_features, K in_features):

    zq_gemm     zqkernels.int8_gemm(xq, wq, sx, sw) -> bf16, no bias (the kernel alone)
    zq_linear   zqkernels.quantize_per_token(x bf16) + zqkernels.int8_gemm: the W8A8 forward of
                QLinear, called as the two functional ops (no nn.Module overhead)
    bf16        torch.matmul(x, w.t()), bf16 (nn.Linear without bias)
    int_mm      torch._int_mm(xq, wq.t()) -> int32 (no scales; needs M > 16 on most builds)
    fp8row      torch._scaled_mm(x_e4m3, w_e4m3.t(), scale_a [M,1], scale_b [1,N]) -> bf16
    w8a8_torch  the unfused torch pipeline: per-token quant in torch ops + _int_mm + dequant

Method (what makes the numbers comparable; every column of a row is measured the same way):

1.  L2 rotation. H100 has 50 MB of L2; a kernel timed in a loop on one set of operands would find
    them in L2 and look faster than it runs in a model, where each layer's weights come from DRAM.
    Each column cycles call by call through ``n`` independent copies of all its inputs (weights
    included), ``n = max(2, ceil(rotate_bytes / input_bytes_per_call))`` with ``rotate_bytes =
    max(120 MB, 2.4 x L2)``, so by the time a copy comes round again it has been evicted.
2.  Random data, never zeros (the tensor cores draw less power, and may clock higher, on zeros):
    int8 operands are Gaussians quantized symmetrically per row (what QLinear really feeds the
    GEMM: |q| ~ 30 typical, every value in [-127, 127] reachable); ZQ_BENCH_INT8=uniform makes them
    uniform in [-127, 127] instead (the worst case for power draw). bf16 / fp8 Gaussian, scales
    U(0.5, 1.5) * 1e-2.
3.  CUDA graphs by default for every M: one graph holds one call per rotated copy (the whole
    cycle); a sample is one replay timed with CUDA events, divided by the calls in it. Graphs take
    Python and launch overhead out of every column alike (zq_linear is two Python calls, bf16 one),
    so the table compares GPU time. ``eager_above=M0`` times plain launches for M > M0 instead.
4.  Warm-up (one eager cycle on a side stream, then two replays), then as many samples as fit in
    ``target_s`` (clamped to [MIN_REPS, MAX_REPS]); the reported time is the MEDIAN sample. All the
    events of a column are read after one synchronize.
5.  Correctness once per problem: zq_gemm on the first copy against a float64 reference of the
    dequantized product, and zq_linear against a torch-ops quantization (docs/SCALES.md) followed
    by the same reference; relative Frobenius error must be < 1e-2 or a WARNING line is printed.

Nothing here imports zqkernels or touches CUDA at import time.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable

import torch

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
ROTATE_MIN_BYTES = 120 * 10**6  # the rotated set of each column is at least this big
MAX_COPIES = 128  # bounds the graph size for tiny user shapes (their set may then be < rotate_bytes)
TARGET_S = 0.2  # measuring time per column; ~34 problems x 6 columns -> about 1.5 min in all
MIN_REPS, MAX_REPS = 15, 1000
COPY_BYTES = 512 * 2**20  # the copy-bandwidth probe copies this much (10x L2) per sample
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


def rotation_copies(bytes_per_call: int, rotate_bytes: int, max_copies: int = MAX_COPIES) -> int:
    """How many independent input sets to cycle through so that the set exceeds rotate_bytes."""
    return max(2, min(max_copies, math.ceil(rotate_bytes / max(1, bytes_per_call))))


def rotate_bytes_for(l2_bytes: int) -> int:
    return max(ROTATE_MIN_BYTES, int(2.4 * l2_bytes))


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


def _calls(
    col: str, pool: _Pool, n: int, zq: Any, backend: str | None = None, config: int = -1
) -> list[Callable[[], Any]]:
    """One zero-argument callable per rotated copy; copy i's tensors are bound as defaults."""
    g = pool.get
    if col == "zq_gemm" and backend is not None:
        return [
            lambda a=a, b=b, c=c, d=d: zq.int8_gemm(a, b, c, d, backend=backend, config=config)
            for a, b, c, d in zip(g("xq", n), g("wq", n), g("sx", n), g("sw", n))
        ]
    if col == "zq_gemm":
        return [
            lambda a=a, b=b, c=c, d=d: zq.int8_gemm(a, b, c, d)
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
# Timing
# ----------------------------------------------------------------------------------------------


def _time_calls(
    calls: list[Callable[[], Any]],
    device: torch.device,
    use_graph: bool,
    target_s: float = TARGET_S,
    min_reps: int = MIN_REPS,
    max_reps: int = MAX_REPS,
) -> dict[str, Any]:
    """Median time per call (us) of cycling through ``calls``: one sample = one full cycle.

    CUDA: graph replay or plain launches between two CUDA events, events read after a single
    synchronize. CPU (self-test only): perf_counter around a cycle.
    """
    ncalls = len(calls)
    note = None

    if device.type != "cuda":
        for c in calls:  # warm-up
            c()

        def cpu_sample() -> float:
            t0 = time.perf_counter()
            for c in calls:
                c()
            return time.perf_counter() - t0

        est = statistics.median(cpu_sample() for _ in range(3))
        reps = _reps_for(est, target_s, min_reps, max_reps)
        samples = [cpu_sample() * 1e6 / ncalls for _ in range(reps)]
        return _summary(samples, reps, ncalls, "cpu", None)

    # Warm-up on a side stream, as torch recommends before capture: cuBLAS handles and heuristics,
    # lazy module loading and first-call allocations all happen here, outside the timed region.
    cur = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(cur)
    with torch.cuda.stream(side):
        for c in calls:
            c()
    cur.wait_stream(side)
    torch.cuda.synchronize(device)

    graph = None
    keep: list[Any] = []
    if use_graph:
        try:
            graph = torch.cuda.CUDAGraph()
            # Captured on the warm-up stream, so per-stream state (cuBLAS workspace) already exists.
            with torch.cuda.graph(graph, stream=side):
                # Outputs stay alive during capture, so every call of the cycle writes its own
                # buffer (in the graph's private pool) like the distinct layers of a model.
                for c in calls:
                    keep.append(c())
        except Exception as e:  # noqa: BLE001 - capture unsupported by the op: fall back, and say so
            graph, keep = None, []
            torch.cuda.synchronize(device)
            note = f"graph capture failed ({type(e).__name__}: {_first_line(e)}); timed plain launches"
    method = "graph" if graph is not None else "eager"

    if graph is not None:
        step: Callable[[], None] = graph.replay
    else:

        def step() -> None:
            for c in calls:
                c()

    def sample_events(n: int) -> list[tuple[Any, Any]]:
        evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for a, b in evs:
            a.record(cur)
            step()
            b.record(cur)
        return evs

    for _ in range(2):
        step()
    est_ev = sample_events(3)
    torch.cuda.synchronize(device)
    est = statistics.median(a.elapsed_time(b) for a, b in est_ev) / 1e3
    reps = _reps_for(est, target_s, min_reps, max_reps)
    evs = sample_events(reps)
    torch.cuda.synchronize(device)  # the only sync of the measurement
    samples = [a.elapsed_time(b) * 1e3 / ncalls for a, b in evs]  # ms per cycle -> us per call
    del graph, keep
    return _summary(samples, reps, ncalls, method, note)


def _reps_for(est_s: float, target_s: float, min_reps: int, max_reps: int) -> int:
    if not (est_s > 0 and math.isfinite(est_s)):
        return min_reps
    return int(max(min_reps, min(max_reps, math.ceil(target_s / est_s))))


def _summary(
    samples_us: list[float], reps: int, ncalls: int, method: str, note: str | None
) -> dict[str, Any]:
    s = sorted(samples_us)
    med = statistics.median(s)
    p10, p90 = s[int(0.1 * (len(s) - 1))], s[int(0.9 * (len(s) - 1))]
    return {
        "us": med,
        "us_min": s[0],
        "spread": (p90 - p10) / med if med > 0 else None,
        "reps": reps,
        "calls_per_sample": ncalls,
        "method": method,
        "note": note,
    }


def copy_bandwidth(device: torch.device, nbytes: int = COPY_BYTES, reps: int = 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting read + write bytes (median)."""
    src = torch.randint(-127, 128, (nbytes,), dtype=torch.int8, device=device)
    dst = torch.empty_like(src)
    res = _time_calls(
        [lambda d=dst, s=src: d.copy_(s)], device, use_graph=False, target_s=0.0, min_reps=reps, max_reps=reps
    )
    del src, dst
    return 2 * nbytes / (res["us"] * 1e-6)


# ----------------------------------------------------------------------------------------------
# Header: provenance of the numbers
# ----------------------------------------------------------------------------------------------


def git_commit(paths: Sequence[Any] = ()) -> str:
    """``git rev-parse --short HEAD`` of the first of ``paths`` inside a git work tree, with
    ``-dirty`` when tracked files differ from HEAD; ``"unknown"`` if none is."""

    def git(p: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(p), *args], capture_output=True, text=True, timeout=10, check=False
        )

    for p in list(paths) + [Path(__file__).resolve().parent, Path.cwd()]:
        try:
            p = Path(p)
            if not p.is_dir():
                p = p.parent
            r = git(p, "rev-parse", "--short", "HEAD")
            if r.returncode != 0 or not r.stdout.strip():
                continue
            commit = r.stdout.strip()
            d = git(p, "status", "--porcelain", "--untracked-files=no")
            if d.returncode == 0 and d.stdout.strip():
                commit += "-dirty"
            return commit
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown"


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3' (for file names)."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    s = re.sub(r"^nvidia-", "", s)
    return s or "unknown-gpu"


def default_json_path(
    results_dir: Any = None, device_name: str | None = None, commit: str | None = None
) -> Path:
    """``<results_dir>/w8a8_<gpu-slug>_<commit>.json`` (results_dir: benchmarks/results by default)."""
    if results_dir is None:
        results_dir = Path.cwd() / "benchmarks" / "results"
    if device_name is None:
        device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if commit is None:
        commit = git_commit([results_dir])
    return Path(results_dir) / f"w8a8_{gpu_slug(device_name)}_{commit}.json"


def collect_header(
    zq: Any, device: torch.device, copy_bw: float, rotate_bytes: int, settings: dict[str, Any]
) -> dict[str, Any]:
    try:
        info = dict(zq.info())
    except Exception as e:  # noqa: BLE001 - the header must not kill the benchmark
        info = {"error": f"{type(e).__name__}: {_first_line(e)}"}
    version = info.get("version") or getattr(zq, "__version__", "unknown")
    commit = None
    for key in ("git_commit", "commit", "git"):
        if isinstance(info.get(key), str) and info[key]:
            commit = info[key]
            break
    if commit is None:
        commit = git_commit([getattr(zq, "__file__", None) or Path.cwd()])
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev_name = props.name
        extra = {
            "sm_count": props.multi_processor_count,
            "total_memory": props.total_memory,
            "l2_bytes": getattr(props, "L2_cache_size", None),
            "capability": f"{props.major}.{props.minor}",
        }
    else:
        dev_name, extra = "cpu", {}
    return {
        "device": dev_name,
        "device_props": extra,
        "zqkernels_version": version,
        "zqkernels_info": info,
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
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
    ("MxNxK", or "NxK" expanded over ``ms`` / the default M list). configs: also time zq_gemm for
    every tile config of every compiled backend. eager_above: time plain launches for M above this
    (default: CUDA graphs for every M). quant: print the quantize_per_token bandwidth table.
    Writes JSON ``{"header", "rows", "quant"}`` to ``out_json`` only when it is given.
    Returns the row dicts (one per problem).
    """
    import zqkernels as zq  # lazy: this module imports without a GPU or a built extension

    shapes = None if shapes is None else list(shapes)  # used twice below: a generator would run dry

    if not torch.cuda.is_available():
        raise RuntimeError("zqkernels benchmark: no CUDA device visible (torch.cuda.is_available() is False)")
    device = torch.device("cuda", torch.cuda.current_device())
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 * 2**20
    _, rows, _ = _run_impl(
        problems(short, shapes, ms),
        zq=zq,
        device=device,
        configs=configs,
        eager_above=eager_above,
        target_s=target_s,
        seed=seed,
        rotate_bytes=rotate_bytes_for(l2),
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

    cfg_lists = _config_lists(zq) if configs else {}
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
        header["aborted"] = f"{type(e).__name__}: {_first_line(e)}"
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


def _config_lists(zq: Any) -> dict[str, list[str]]:
    """Tile config names per compiled backend ({} entries skipped when a backend is absent)."""
    out: dict[str, list[str]] = {}
    C = getattr(zq, "_C", None)
    if C is None:
        return out
    for b in ("sm90", "sm80"):
        try:
            if hasattr(C, "has_backend") and not C.has_backend(b):
                continue
            out[b] = list(C.int8_gemm_configs(b))
        except Exception:  # noqa: BLE001, S112 - a backend not compiled in: nothing to time
            continue
    return out


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:300] if s else ""


def _ensure_alive(device: torch.device, after: str) -> None:
    """After an op raised: a sticky CUDA error (illegal address, ...) would poison every later
    number, so stop the run instead of recording garbage."""
    if device.type != "cuda":
        return
    try:
        torch.cuda.synchronize(device)
        torch.ones(1, device=device).add_(1).item()
    except Exception as e:
        raise RuntimeError(f"CUDA context unusable after {after} failed: {_first_line(e)}") from e


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
        row["errors"]["check_gemm"] = f"{type(e).__name__}: {_first_line(e)}"
        _ensure_alive(device, "zq_gemm check")
    try:
        xb = pool.get("xb", 1)[0]
        q_ref, s_ref = torch_quant_per_token(xb)
        lin_ref = ref_gemm(q_ref, wq, s_ref, sw)
        xq_k, sx_k = zq.quantize_per_token(xb)
        row["linear_rel_err"] = rel_err(zq.int8_gemm(xq_k, wq, sx_k, sw), lin_ref)
        del q_ref, s_ref, lin_ref, xq_k, sx_k
    except Exception as e:  # noqa: BLE001
        row["linear_rel_err"] = None
        row["errors"]["check_linear"] = f"{type(e).__name__}: {_first_line(e)}"
        _ensure_alive(device, "zq_linear check")
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
        row["configs"] = {}
        row["auto_config"] = {}
        for b, names in cfg_lists.items():
            try:
                row["auto_config"][b] = int(zq._C.int8_gemm_auto_config(b, M, N, K))
            except Exception:  # noqa: BLE001 - optional introspection
                row["auto_config"][b] = None
            for ci, name in enumerate(names):
                key = f"{b}/{name}"
                entry: dict[str, Any] = {"index": ci}
                try:
                    if ref is not None:
                        entry["rel_err"] = rel_err(zq.int8_gemm(xq, wq, sx, sw, backend=b, config=ci), ref)
                    n = rotation_copies(input_bytes("zq_gemm", M, N, K), rotate_bytes)
                    res = _time_calls(
                        _calls("zq_gemm", pool, n, zq, backend=b, config=ci), device, use_graph, target_s
                    )
                    entry.update(us=res["us"], method=res["method"], reps=res["reps"])
                except Exception as e:  # noqa: BLE001 - some tiles do not take some shapes
                    entry.update(us=None, error=f"{type(e).__name__}: {_first_line(e)}")
                    _ensure_alive(device, key)
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
        res = _time_calls(calls, device, use_graph, target_s)
    except Exception as e:  # noqa: BLE001 - recorded as None ('-' or ERR in the table)
        row[f"{key}_us"] = None
        row["errors"][key] = f"{type(e).__name__}: {_first_line(e)}"
        _ensure_alive(device, key)
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
            res = _time_calls([lambda x=x, fn=fn: fn(x) for x in xs], device, use_graph, target_s)
            out[f"{name}_us"] = res["us"]
            out[f"{name}_GBps"] = nbytes / (res["us"] * 1e-6) / 1e9
            out[f"{name}_frac_copy"] = nbytes / (res["us"] * 1e-6) / copy_bw
            out[f"{name}_method"] = res["method"]
        except Exception as e:  # noqa: BLE001
            out[f"{name}_us"] = out[f"{name}_GBps"] = out[f"{name}_frac_copy"] = None
            out[f"{name}_error"] = f"{type(e).__name__}: {_first_line(e)}"
            _ensure_alive(device, f"quantize ({name})")
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
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"header": header, "rows": rows, "quant": qrows}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(doc), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _jsonable(v: Any) -> Any:
    """Plain JSON: NaN/Inf become None, tuples lists, unknown objects their str()."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (bool, int, str)):
        return v
    return str(v)


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
    """zq_gemm per tile config: '*' marks the fastest of a row, 'a' the auto dispatch's choice."""
    keys = [(b, i, f"{b}/{n}") for b, names in cfg_lists.items() for i, n in enumerate(names)]
    out = [
        "",
        "zq_gemm per tile config (us; * fastest, a = auto dispatch's choice, ! failed check, - cannot run):",
    ]
    for b, i, key in keys:
        out.append(f"  {b}#{i} = {key.split('/', 1)[1]}")
    titles = [f"{b}#{i}" for b, i, _ in keys]
    w = max([11] + [len(t) + 2 for t in titles])  # room for '12345.6*a!'
    out.append(f"{'M':>5} {'N':>6} {'K':>6} |" + "".join(t.rjust(w) for t in titles) + " | best")
    for r in rows:
        cfgs = r.get("configs") or {}
        times = {k: cfgs[k].get("us") for _, _, k in keys if k in cfgs}
        valid = {k: v for k, v in times.items() if v is not None}
        best = min(valid, key=valid.get) if valid else None
        cells = []
        for b, i, k in keys:
            v = times.get(k)
            if v is None:
                cells.append("-".rjust(w))
                continue
            mark = ""
            if k == best:
                mark += "*"
            if (r.get("auto_config") or {}).get(b) == i:
                mark += "a"
            if "rel_err" in cfgs[k] and not _check_ok(cfgs[k]["rel_err"]):
                mark += "!"
            cells.append((format(v, ".1f") + mark).rjust(w))
        best_name = best.split("/", 1)[0] + "#" + str(cfgs[best]["index"]) if best else "-"
        out.append(f"{r['M']:>5} {r['N']:>6} {r['K']:>6} |" + "".join(cells) + f" | {best_name}")
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


# ----------------------------------------------------------------------------------------------
# Self-tests (CPU only; run by `python benchmarks/bench_w8a8.py --selftest`)
# ----------------------------------------------------------------------------------------------


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


def _fake_row(M: int, N: int, K: int, seed: int) -> dict[str, Any]:
    import random

    rnd = random.Random(seed)
    row = _empty_row(M, N, K)
    base = 2.0 * M * N * K / 700e12 * 1e6 + 8.0
    for c in COLUMNS:
        row[f"{c}_us"] = base * rnd.uniform(0.5, 2.5)
        row["method"][c] = "graph"
    if M <= 16:
        row["int_mm_us"] = row["w8a8_torch_us"] = None
        row["errors"]["int_mm"] = "RuntimeError: self.size(0) needs to be greater than 16, but got 16"
        row["errors"]["w8a8_torch"] = row["errors"]["int_mm"]
    row["gemm_rel_err"], row["linear_rel_err"] = 2.1e-3, 2.4e-3
    flops = 2.0 * M * N * K
    for c in COLUMNS:
        us = row[f"{c}_us"]
        row[f"{c}_tops"] = flops / (us * 1e-6) / 1e12 if us else None
    row["speedup_vs_int_mm"] = _ratio(row["int_mm_us"], row["zq_gemm_us"])
    row["speedup_vs_fp8row"] = _ratio(row["fp8row_us"], row["zq_gemm_us"])
    row["linear_speedup_vs_bf16"] = _ratio(row["bf16_us"], row["zq_linear_us"])
    if M <= FLOOR_MAX_M:
        row["floor_us"] = N * K / 3.0e12 * 1e6
        row["gemm_over_floor"] = row["zq_gemm_us"] / row["floor_us"]
    return row


def _selftest_format() -> None:
    """Table / JSON formatting with fake timings, shape parsing, rotation plan on CPU tensors."""
    import tempfile

    # Grid and shape parsing.
    full, short = problems(False), problems(True)
    assert len(full) == 3 * 11 + 1 and full[0] == BIG, len(full)
    assert len(short) == 2 * 4 + 1 and (16, 22016, 4096) in short
    assert parse_shapes(["128x4096x4096", "8,16,32", (1, 2, 3)], [1]) == [
        (128, 4096, 4096),
        (8, 16, 32),
        (1, 2, 3),
    ]
    assert parse_shapes(["4096x11008"], [1, 64]) == [(1, 4096, 11008), (64, 4096, 11008)]
    assert problems(False, ["4096x4096"], ms=[3]) == [(3, 4096, 4096)]
    for bad in ("12", "1x2x3x4", "ax3", "0x4x4"):
        try:
            parse_shapes([bad], [1])
        except ValueError:
            pass
        else:
            raise AssertionError(f"parse_shapes accepted {bad!r}")

    # Rotation plan: every column's cycled set exceeds the target (unless capped), never < 2 copies.
    rb = rotate_bytes_for(50 * 2**20)
    assert rb == int(2.4 * 50 * 2**20) and rb >= ROTATE_MIN_BYTES
    for M, N, K in full:
        for c in COLUMNS:
            b = input_bytes(c, M, N, K)
            n = rotation_copies(b, rb)
            assert n >= 2 and (n * b >= rb or n == MAX_COPIES), (c, M, N, K, n, b)
            assert (n - 1) * b < rb or n == 2, (c, M, N, K, n)  # no more copies than needed
    assert input_bytes("zq_gemm", 1, 4096, 4096) == 4096 + 4096 * 4096 + 4 + 4 * 4096
    assert input_bytes("bf16", 16, 4096, 4096) == 2 * 16 * 4096 + 2 * 4096 * 4096
    assert rotation_copies(16 * 2**20, rb) == 8 and rotation_copies(10**9, rb) == 2
    assert rotation_copies(1, rb) == MAX_COPIES

    # Pools on CPU: independent allocations, distinct random data, right dtypes and ranges.
    pool = _Pool(16, 256, 128, torch.device("cpu"), seed=1)
    ws = pool.get("wq", 3)
    assert len({w.data_ptr() for w in ws}) == 3 and not torch.equal(ws[0], ws[1])
    assert pool.get("wq", 2)[0] is ws[0] and len(pool.copies["wq"]) == 3  # shared, extended on demand
    allq = torch.cat([w.flatten() for w in ws]).int()
    assert allq.min() >= -127 and allq.max() <= 127 and (allq != 0).float().mean() > 0.9
    s = pool.get("sw", 2)[0]
    assert s.dtype == torch.float32 and s.min() >= 0.5e-2 and s.max() <= 1.5e-2
    assert pool.get("x8", 1)[0].dtype == torch.float8_e4m3fn and pool.get("sa", 1)[0].shape == (16, 1)
    assert pool.get("xb", 1)[0].dtype == torch.bfloat16 and pool.get("xb", 1)[0].float().std() > 0.5
    # The calls of a cycle bind different copies.
    calls = _calls("int_mm", pool, 3, None)
    outs = [c() for c in calls]
    assert outs[0].dtype == torch.int32 and not torch.equal(outs[0], outs[1])
    assert pool.nbytes() > 0

    # Reference and the torch quantization (docs/SCALES.md): exact on a hand-made case.
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], dtype=torch.bfloat16)
    q, sx = torch_quant_per_token(x)
    assert q.tolist() == [[64, -127, 32], [0, 0, 0]], q.tolist()  # 127/2 * 1 = 63.5 -> 64 (half to even)
    assert sx.flatten().tolist() == [float(torch.tensor(2.0) / 127.0), 0.0]  # fp32 division
    r = ref_gemm(
        torch.tensor([[1, 2]], dtype=torch.int8),
        torch.tensor([[3, 4], [5, 6]], dtype=torch.int8),
        torch.tensor([0.5]),
        torch.tensor([1.0, 2.0]),
    )
    assert r.tolist() == [[5.5, 17.0]]
    assert rel_err(r.float(), r) == 0.0 and not _check_ok(float("nan")) and not _check_ok(None)

    # Table: fake rows, a '-' peer, an ERR of ours, a failed check.
    rows = [_fake_row(M, N, K, i) for i, (M, N, K) in enumerate(full)]
    rows[3]["linear_rel_err"] = 0.31
    rows[5]["zq_linear_us"] = None
    rows[5]["errors"]["zq_linear"] = "RuntimeError: int8_gemm: K must be a multiple of 16, got 11008"
    header = {
        "zqkernels_version": "0.1.0",
        "commit": "503d244",
        "torch": torch.__version__,
        "cuda": "13.0",
        "device": "NVIDIA H100 80GB HBM3",
        "date": "2025-01-01T00:00:00Z",
        "copy_bw_Bps": 3.01e12,
        "rotate_bytes": rb,
        "method": METHOD_NOTES,
    }
    lines = format_header(header) + format_table_header() + [format_row(r) for r in rows]
    table = format_table_header() + [format_row(r) for r in rows]
    for ln in table:
        # Every '|' of every line at the same column: the groups line up.
        assert [i for i, ch in enumerate(ln) if ch == "|"] == [
            i for i, ch in enumerate(table[0]) if ch == "|"
        ], ln
    assert "ERR" in format_row(rows[5]) and "!" in format_row(rows[3])
    assert format_row(rows[1]).split("|")[1].split()[3] == "-"  # int_mm at M=1
    warn = [w for r in rows for w in row_warnings(r)]
    assert len(warn) == 2 and all(w.startswith("WARNING") for w in warn), warn
    assert not row_ok(rows[3]) and not row_ok(rows[5]) and row_ok(rows[0])
    notes = format_notes(rows)
    assert len(notes) == 3 and "int_mm on 1x4096x4096" in notes[1], notes

    # Config table.
    cfg_lists = {"sm90": ["128x128x128_c2x1_pp", "swap_64x16x256_pp"], "sm80": ["128x128x64_s3"]}
    for i, r in enumerate(rows[:4]):
        r["configs"] = {
            "sm90/128x128x128_c2x1_pp": {"index": 0, "us": 10.0 + i, "rel_err": 2e-3},
            "sm90/swap_64x16x256_pp": {"index": 1, "us": 9.0 + 2 * i, "rel_err": 2e-3},
            "sm80/128x128x64_s3": {"index": 0, "us": None, "error": "RuntimeError: x"},
        }
        r["auto_config"] = {"sm90": 1, "sm80": 0}
    cl = format_configs(rows[:4], cfg_lists)
    assert "9.0*a" in cl[-4] and cl[-1].endswith("sm90#0"), cl

    # Quant table.
    qrows = [
        {
            "M": 8192,
            "K": 4096,
            "bytes": 3 * 8192 * 4096 + 4 * 8192,
            "zq_us": 35.0,
            "zq_GBps": 2877.0,
            "zq_frac_copy": 0.956,
            "torch_us": None,
            "torch_GBps": None,
            "torch_frac_copy": None,
        }
    ]
    ql = format_quant(qrows, 3.01e12)
    assert "96%" in ql[-1] and ql[-1].rstrip().endswith("-"), ql

    # JSON round trip (NaN -> null, atomic write).
    rows[0]["zq_gemm_spread"] = float("nan")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "sub" / "x.json"
        write_json(p, header, rows, qrows)
        doc = json.loads(p.read_text())
        assert doc["rows"][0]["zq_gemm_spread"] is None and len(doc["rows"]) == len(rows)
        assert doc["header"]["commit"] == "503d244" and doc["quant"][0]["M"] == 8192

    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3" and gpu_slug("") == "unknown-gpu"
    assert default_json_path("/tmp/r", "NVIDIA H100 80GB HBM3", "abc1234") == Path(
        "/tmp/r/w8a8_h100-80gb-hbm3_abc1234.json"
    )
    c = git_commit()
    assert c == "unknown" or re.fullmatch(r"[0-9a-f]{4,40}(-dirty)?", c), c

    print("\n".join(lines + warn + notes + cl + ql))
    print("_selftest_format: ok")


class _FakeZq:
    """Pure-torch stand-in for the zqkernels API (CPU self-test of the pipeline only)."""

    __version__ = "0.0.0-fake"

    class _C:
        @staticmethod
        def has_backend(b: str) -> bool:
            return b == "sm90"

        @staticmethod
        def int8_gemm_configs(b: str) -> list[str]:
            if b != "sm90":
                raise ValueError(f"backend '{b}' is not compiled into this build")
            return ["good", "broken", "refuses"]

        @staticmethod
        def int8_gemm_auto_config(b: str, M: int, N: int, K: int) -> int:
            return 0

    @staticmethod
    def info() -> dict[str, Any]:
        return {"version": "0.0.0-fake", "gpu": None, "compiled_archs": []}

    @staticmethod
    def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, s = torch_quant_per_token(x)
        return q, s.flatten()

    @staticmethod
    def int8_gemm(xq, wq, sx, sw, bias=None, out_dtype=torch.bfloat16, *, backend="auto", config=-1):
        if config == 2:
            raise RuntimeError("int8_gemm: [sm90/refuses] tile does not take this shape")
        y = (xq.float() @ wq.float().t()) * sx.float().view(-1, 1) * sw.float().view(1, -1)
        if config == 1:
            y = y * 1.5  # a wrong config: must be flagged by the check
        return y.to(out_dtype)


def _selftest_cpu() -> None:
    """The whole measuring pipeline on CPU tensors with _FakeZq and tiny shapes."""
    import tempfile

    lines: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny CPU ops: thread-pool wake-ups would dominate the run time
    try:
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "r.json"
            _header, rows, qrows = _run_impl(
                [(1, 256, 128), (32, 256, 128), (64, 128, 256)],
                zq=_FakeZq,
                device=torch.device("cpu"),
                configs=True,
                eager_above=None,
                target_s=0.002,
                seed=0,
                rotate_bytes=2**18,
                copy_bytes=2**20,
                quant_shapes=[(64, 256)],
                out_json=out,
                print_fn=lines.append,
                settings={"selftest": True},
            )
            doc = json.loads(out.read_text())
    finally:
        torch.set_num_threads(threads)
    print("\n".join(lines))
    assert len(rows) == 3 and len(doc["rows"]) == 3 and doc["header"]["device"] == "cpu"
    for r in rows:
        for c in ("zq_gemm", "zq_linear", "bf16", "fp8row"):
            assert r[f"{c}_us"] is not None and r[f"{c}_us"] > 0, (c, r["errors"])
        assert r["gemm_rel_err"] < CHECK_TOL and r["linear_rel_err"] < CHECK_TOL, r
        assert r["configs"]["sm90/good"]["us"] > 0 and r["configs"]["sm90/refuses"]["us"] is None
        assert not _check_ok(r["configs"]["sm90/broken"]["rel_err"]) and not row_ok(r)
        n = r["n_copies"]["zq_gemm"]
        assert n * input_bytes("zq_gemm", r["M"], r["N"], r["K"]) >= 2**18 or n == MAX_COPIES
    assert rows[0]["floor_us"] > 0 and qrows[0]["zq_us"] > 0 and qrows[0]["torch_us"] > 0
    assert any("config sm90/broken" in ln for ln in lines)
    assert doc["header"]["n_failed_rows"] == 3
    print("_selftest_cpu: ok")


if __name__ == "__main__":
    _selftest_format()
    _selftest_cpu()
