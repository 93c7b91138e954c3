"""Helpers shared by the benchmarks (bench_w8a8.py, bench_overhead.py, bench_models.py,
bench_fused.py) and the tuning probes in scripts/: the one GPU timer, L2 rotation, copy bandwidth,
wall-clock timing of back-to-back calls (whole models, host overhead), CUDA-graph capture of a
callable, torch.compile settings, provenance (device, torch, git commit, package versions) and JSON
output. Nothing here imports zqkernels or touches CUDA at import time.

Scripts outside this directory import it with ``sys.path.insert(0, "<repo>/benchmarks")``.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parent.parent

TARGET_S = 0.2  # measuring time per timed quantity (seconds)
MIN_REPS, MAX_REPS = 15, 1000
ROTATE_MIN_BYTES = 120 * 10**6  # the rotated input set of each column is at least this big
MAX_COPIES = 128  # bounds the graph size for tiny shapes (their set may then be < rotate_bytes)
COPY_BYTES = 512 * 2**20  # the copy-bandwidth probe copies this much (10x an H100's L2) per sample


# ----------------------------------------------------------------------------------------------
# L2 rotation
# ----------------------------------------------------------------------------------------------


def rotate_bytes_for(l2_bytes: int) -> int:
    """Bytes of independent inputs to cycle through so that nothing is still in L2 when it returns."""
    return max(ROTATE_MIN_BYTES, int(2.4 * l2_bytes))


def device_rotate_bytes(device: torch.device) -> int:
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 * 2**20
    return rotate_bytes_for(l2)


def rotation_copies(bytes_per_call: int, rotate_bytes: int, max_copies: int = MAX_COPIES) -> int:
    """How many independent input sets to cycle through so that the set exceeds rotate_bytes."""
    return max(2, min(max_copies, math.ceil(rotate_bytes / max(1, bytes_per_call))))


# ----------------------------------------------------------------------------------------------
# Timing: the one timer (CUDA graph replay or plain launches between CUDA events; CPU fallback)
# ----------------------------------------------------------------------------------------------


def first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:300] if s else ""


def time_calls(
    calls: list[Callable[[], Any]],
    device: torch.device,
    use_graph: bool = True,
    target_s: float = TARGET_S,
    min_reps: int = MIN_REPS,
    max_reps: int = MAX_REPS,
) -> dict[str, Any]:
    """Median time per call (us) of cycling through ``calls`` (typically one per rotated input
    copy): one sample = one full cycle.

    CUDA: warm-up (one eager cycle on a side stream, as torch recommends before capture), then
    either one CUDA graph holding the whole cycle (``use_graph``; outputs stay alive during capture,
    so each call writes its own buffer, like distinct layers) or plain launches; each sample sits
    between two CUDA events, all read after a single synchronize. If capture fails, it falls back
    to plain launches and says so in ``note``. CPU (self-tests only): perf_counter around a cycle.
    Returns {us, us_min, spread (p90-p10)/median, reps, calls_per_sample, method, note}.
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

    # cuBLAS handles and heuristics, lazy module loading and first-call allocations happen here.
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
                for c in calls:
                    keep.append(c())
        except Exception as e:  # noqa: BLE001 - capture unsupported by the op: fall back, and say so
            graph, keep = None, []
            torch.cuda.synchronize(device)
            note = f"graph capture failed ({type(e).__name__}: {first_line(e)}); timed plain launches"
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


def time_graph(fns: list[Callable[[], Any]], reps: int = 30) -> float:
    """For the tuning probes: one CUDA graph of one call of each fn, median seconds per call over
    exactly ``reps`` replays (``time_calls`` with a fixed sample count)."""
    dev = torch.device("cuda", torch.cuda.current_device())
    res = time_calls(fns, dev, use_graph=True, target_s=0.0, min_reps=reps, max_reps=reps)
    if res["note"]:
        raise RuntimeError(res["note"])
    return res["us"] * 1e-6


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
    res = time_calls(
        [lambda d=dst, s=src: d.copy_(s)], device, use_graph=False, target_s=0.0, min_reps=reps, max_reps=reps
    )
    del src, dst
    return 2 * nbytes / (res["us"] * 1e-6)


def ensure_alive(device: torch.device, after: str) -> None:
    """After an op raised: a sticky CUDA error (illegal address, ...) would poison every later
    number, so stop the run instead of recording garbage."""
    if device.type != "cuda":
        return
    try:
        torch.cuda.synchronize(device)
        torch.ones(1, device=device).add_(1).item()
    except Exception as e:
        raise RuntimeError(f"CUDA context unusable after {after} failed: {first_line(e)}") from e


# ----------------------------------------------------------------------------------------------
# Wall-clock timing of back-to-back calls (whole models, eager host cost), graphs of a callable
# ----------------------------------------------------------------------------------------------


def startup_error(prog: str, dry_run: bool, dry_what: str, modules: Sequence[str] = ("zqkernels",)) -> bool:
    """A benchmark's preconditions before any work: a CUDA GPU (unless --dry-run, which runs
    `dry_what` on the CPU) and the importable `modules`. Prints the one-line reason on stderr and
    returns True when the run cannot start (the caller exits with status 2)."""
    if not dry_run and not torch.cuda.is_available():
        print(f"{prog}: needs a CUDA GPU (--dry-run runs {dry_what} on CPU)", file=sys.stderr)
        return True
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            print(f"{prog}: cannot import {m} ({e}); install it first", file=sys.stderr)
            return True
    return False


def error_text(e: BaseException) -> str:
    """'TypeName: first line of the message', as the JSON files record errors."""
    return f"{type(e).__name__}: {first_line(e)}"


def sync_for(device: torch.device) -> Callable[[], None]:
    """torch.cuda.synchronize for a CUDA device, a no-op otherwise."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def back_to_back(
    fns: dict[str, Callable[[], Any]],
    sync: Callable[[], None],
    *,
    rounds: int = 7,
    target_round_s: float = 0.05,
    warmup_s: float = 0.1,
    calls: int | None = None,
    max_calls: int = 100_000,
) -> dict[str, dict[str, Any]]:
    """Seconds per call of each zero-argument fn, as wall time of back-to-back calls with ONE sync
    at the end of a round (what a caller sees: host and device work overlap, whichever is longer
    shows), median over ``rounds``.

    Warm-up: each fn runs about ``warmup_s`` (at least twice, back to back, after one synchronized
    call), which also sizes its round: ``calls`` per round if given, else enough calls for
    ``target_round_s``. Rounds alternate between the fns
    (fn a, fn b, ..., fn a, ...), so drift of clocks or host load hits all of them alike.
    Returns {name: {s, s_min, spread (p90-p10)/median, calls, rounds, samples_s}}.
    """
    per_round: dict[str, int] = {}
    for name, fn in fns.items():
        fn()
        sync()
        # One synchronized call bounds the time per call; the warm-up count follows from it, so a
        # fast-to-launch, slow-to-run fn (a graph replay) cannot queue minutes of device work.
        t0 = time.perf_counter()
        fn()
        sync()
        n = max(2, min(max_calls, math.ceil(warmup_s / max(time.perf_counter() - t0, 1e-9))))
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        est = (time.perf_counter() - t0) / n
        per_round[name] = (
            calls if calls else max(1, min(max_calls, math.ceil(target_round_s / max(est, 1e-9))))
        )
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = per_round[name]
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t0) / n)
    out = {}
    for name, s in samples.items():
        srt = sorted(s)
        med = statistics.median(srt)
        p10, p90 = srt[int(0.1 * (len(srt) - 1))], srt[int(0.9 * (len(srt) - 1))]
        out[name] = {
            "s": med,
            "s_min": srt[0],
            "spread": (p90 - p10) / med if med > 0 else None,
            "calls": per_round[name],
            "rounds": rounds,
            "samples_s": s,
        }
    return out


def capture_graph(fn: Callable[[], Any], device: torch.device, warmup: int = 3) -> tuple[Any, Any]:
    """A CUDA graph of one call of ``fn`` (after ``warmup`` calls on a side stream, as torch
    recommends before capture); returns (graph, output of the captured call). The output tensor is
    rewritten by each ``graph.replay()`` (valid only after a replay)."""
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(s)
    torch.cuda.synchronize(device)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


def cosine_f32(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two whole tensors, flattened, computed in float32."""
    if a.shape != b.shape:
        raise ValueError(f"cosine: shapes differ: {list(a.shape)} vs {list(b.shape)}")
    return float(torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0))


def configure_dynamo(recompile_limit: int = 4096) -> dict[str, Any]:
    """torch.compile settings for benchmarks that compile the same code for many shapes and modes:
    recompile (cache size) limits high enough that no shape falls back to eager silently, and no
    automatic dynamic shapes (every compile is static unless a benchmark marks a dim dynamic).
    Returns the settings applied (for JSON headers)."""
    import torch._dynamo

    cfg = torch._dynamo.config
    applied: dict[str, Any] = {}
    for names, value in (
        (("recompile_limit", "cache_size_limit"), recompile_limit),
        (("accumulated_recompile_limit", "accumulated_cache_size_limit"), 4 * recompile_limit),
        (("automatic_dynamic_shapes",), False),
    ):
        for name in names:
            if hasattr(cfg, name):
                setattr(cfg, name, value)
                applied[name] = value
                break
    return applied


# ----------------------------------------------------------------------------------------------
# Provenance and output
# ----------------------------------------------------------------------------------------------


def package_versions(*names: str) -> dict[str, str | None]:
    """Installed distribution versions (None when missing), without importing the packages."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def git_commit(paths: Sequence[Any] = ()) -> str:
    """``git rev-parse --short HEAD`` of the first of ``paths`` (then this checkout, then the cwd)
    inside a git work tree, with ``-dirty`` when tracked files differ; ``"unknown"`` if none is or
    git is missing. The environment variable ZQ_COMMIT, when set, wins: a copy of the working tree
    (the GPU machine's) may carry git metadata older than its files."""
    if os.environ.get("ZQ_COMMIT"):
        return os.environ["ZQ_COMMIT"]

    def git(p: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(p), *args], capture_output=True, text=True, timeout=10, check=False
        )

    for p in [*paths, REPO, Path.cwd()]:
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


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def environment(device: torch.device) -> dict[str, Any]:
    """Device name, torch / CUDA / Python versions, git commit and UTC date, for JSON headers."""
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3' (for file names)."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    s = re.sub(r"^nvidia-", "", s)
    return s or "unknown-gpu"


def write_json(path: Any, doc: dict[str, Any]) -> None:
    """Plain JSON (NaN/Inf -> null), written atomically; creates the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(doc), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def jsonable(v: Any) -> Any:
    """NaN/Inf become None, tuples lists, unknown objects their str()."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (bool, int, str)):
        return v
    return str(v)
