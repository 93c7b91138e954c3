"""End to end, best mode against best mode: bf16 (eager, CUDA graph, torch.compile, reduce-overhead)
against zqkernels W8A8 (``quantize_model``: eager, CUDA graph, torch.compile), with torchao's
compiled int8 and fp8 dynamic quantization as peers, in one run on one GPU.

    python benchmarks/bench_models.py --quick [--json FILE]     # 5 cases, < 4 min on an H100
    python benchmarks/bench_models.py [--json FILE]             # 20 cases, < 9 min on an H100
    python benchmarks/bench_models.py --dry-run                 # CPU smoke test: tiny models, no timing claims

Models (random weights, bf16, built from transformers configs, attn_implementation="sdpa"):

- ``bert-base`` / ``bert-large``: ``BertModel`` from ``BertConfig()`` / (hidden 1024, 24 layers, 16 heads,
  intermediate 4096); input_ids [batch, seq] with batch 1, 8, 32, 128 and seq 128, 256; no attention
  mask (no padding); output ``last_hidden_state``.
- ``llama-layer``: one ``LlamaDecoderLayer`` of ``LlamaConfig(hidden_size=4096, intermediate_size=11008,
  num_attention_heads=32, num_key_value_heads=32)``, cos / sin from ``LlamaRotaryEmbedding`` computed
  once per case outside the timed call (as a model shares them across its layers);
  * prefill: hidden states [1, 2048, 4096], no cache, causal attention (SDPA ``is_causal``);
  * decode b1 / b16 / b64: hidden states [B, 1, 4096], one new token per sequence at position 1024,
    attending to a 1024-token context held in a transformers ``StaticCache`` (max_cache_len 1025,
    allocated with ``early_initialization``; keys and values of positions 0..1023 random, the same
    for every mode and side). Each call is one decode step: it resets the cache layer's write
    position (``cumulative_length.fill_(1024)``, one tiny kernel, part of the timed call on every side
    and mode) and runs the layer, which writes its new key / value in place at position 1024
    (``index_copy_``) and attends over all 1025 positions (SDPA, no mask). Every call is therefore the
    same step: repeatable under eager loops, CUDA-graph replays and torch.compile (the cache tensors are
    static addresses, as transformers marks them, so reduce-overhead's CUDA graphs take the in-place
    update), identically for bf16, zqkernels and torchao.

Sides and modes (``--modes`` restricts; ids as in the table):

    bf16-eager   the bf16 model, eager                bf16-graph  torch.cuda.graph capture, replays
    bf16-compile torch.compile(model) (default mode)  bf16-ro     torch.compile(mode="reduce-overhead")
    zq-eager     zqkernels.quantize_model(deepcopy)   zq-graph    the same, captured as a CUDA graph
    zq-compile   the same, torch.compile (default)   zq-ro       torch.compile(mode="reduce-overhead")
    ao-int8      torchao quantize_(deepcopy, Int8DynamicActivationInt8WeightConfig()), torch.compile
    ao-fp8       torchao quantize_(deepcopy, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())),
                 torch.compile

torchao's configs set recommended inductor options when applied (``set_inductor_config=True``): they
are recorded in the JSON header and applied only while the torchao models compile, so the bf16 and
zqkernels compiles run with the defaults.

Timing (every mode alike): warm-up calls (at least 0.1 s), then rounds of back-to-back calls with one
synchronize per round (wall clock; graphs: back-to-back replays), ms per call = the MEDIAN over rounds;
the modes of a pass (non-compiled ones, then compiled ones) alternate round by round. compile_s is the
wall time of the first compiled call. Every torch.compile is static-shape (no automatic dynamic shapes;
dynamo caches are reset between cases). Per case the table shows each mode's ms, each side's best mode,
``x best`` = bf16 best / zq best and ``x eager`` = bf16-eager / zq-eager (> 1: zqkernels faster),
``x peer`` = best of bf16 and torchao / zq best, and the cosine similarity of zq-eager's output with
bf16-eager's (float32, whole flattened output). A mode that fails records its error (``ERR`` in the
table, the message in the JSON and below the table) and the run goes on.

Time budget: compiling whole models for every case is the slow part. ``--budget-s`` bounds the time spent
on the compiled modes (compile + measurement; default 150 s with --quick, 360 s otherwise); each model
gets a share of what is left, weighted by its cases' expected compile cost. Once a model's share is
spent, its remaining cases skip their compiled modes (bf16-compile, zq-compile and bf16-ro are admitted
together, so a case has all three or none; each torchao mode is admitted alone): ``skip`` in the
table, ``skipped`` in the JSON, a ``*`` on a side's best that lacks a mode. Non-compiled modes always run. ``--cases`` picks
cases by name to run the rest separately. With ``--json`` the JSON is rewritten after every case, so a
killed run keeps what it measured.

Exit status: 0 when every zqkernels mode ran (skipped for time is fine) and zq-eager's cosine is >=
0.99, 1 otherwise, 2 on bad usage or without a CUDA device (unless --dry-run).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fnmatch
import gc
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    back_to_back,
    capture_graph,
    configure_dynamo,
    cosine_f32,
    ensure_alive,
    environment,
    error_text,
    package_versions,
    startup_error,
    sync_for,
    write_json,
)

MODEL_NAMES = ("bert-base", "bert-large", "llama-layer")
MODES = (
    "bf16-eager", "bf16-graph", "bf16-compile", "bf16-ro",
    "zq-eager", "zq-graph", "zq-compile", "zq-ro",
    "ao-int8", "ao-fp8",
)  # fmt: skip
BF16_MODES = ("bf16-eager", "bf16-graph", "bf16-compile", "bf16-ro")
ZQ_MODES = ("zq-eager", "zq-graph", "zq-compile", "zq-ro")
AO_MODES = ("ao-int8", "ao-fp8")
# mode -> (model variant it runs, how it runs)
MODE_SPEC: dict[str, tuple[str, str]] = {
    "bf16-eager": ("bf16", "eager"), "bf16-graph": ("bf16", "graph"),
    "bf16-compile": ("bf16", "compile"), "bf16-ro": ("bf16", "reduce-overhead"),
    "zq-eager": ("zq", "eager"), "zq-graph": ("zq", "graph"), "zq-compile": ("zq", "compile"), "zq-ro": ("zq", "reduce-overhead"),
    "ao-int8": ("ao-int8", "compile"), "ao-fp8": ("ao-fp8", "compile"),
}  # fmt: skip
COMPILED_ORDER = ("bf16-compile", "zq-compile", "bf16-ro", "zq-ro", "ao-int8", "ao-fp8")
# The time budget admits these together (a case gets all or none of them); torchao modes one by one.
COMPILED_CORE = ("bf16-compile", "zq-compile", "bf16-ro", "zq-ro")
TAG = {"eager": "e", "graph": "g", "compile": "c", "reduce-overhead": "ro"}

COS_MIN = 0.99  # zq-eager vs bf16-eager cosine below this fails the run (a broken conversion)
CTX = 1024  # decode: KV context length
DEFAULT_BUDGET_S = {"quick": 150.0, "full": 360.0}
# Relative compile cost of one case (the budget's weights): about linear in the layers compiled.
COMPILE_WEIGHT = {"bert-base": 1.0, "bert-large": 1.8, "llama-layer": 0.35}

BERT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32)
# --dry-run: the same code paths on tiny models (CPU).
TINY_BERT = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=128, max_position_embeddings=64)  # fmt: skip
TINY_LLAMA = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=4)
TINY_CTX = 16

METHOD_NOTES = [
    "random weights, bf16, transformers models built from configs, attn_implementation=sdpa",
    "ms per call: median over rounds of (wall time of back-to-back calls + one synchronize) / calls",
    "warm-up >= 0.1 s per mode; modes of a pass alternate round by round",
    "graph: torch.cuda.graph capture of one call, back-to-back replays",
    "compile: torch.compile(module), static shapes, dynamo reset between cases; compile_s = first call",
    "ro: torch.compile(mode='reduce-overhead'), torch.compiler.cudagraph_mark_step_begin() before each call "
    "(it copies the input into its graph's static buffer each call, as for any caller)",
    "torchao configs' inductor settings applied only while the torchao models compile",
    "decode: StaticCache with a 1024-token random context; each call resets the write position and "
    "runs one step that writes position 1024 in place and attends over 1025 positions",
    "cos: float32 cosine similarity of the whole output against bf16-eager's",
]


@dataclass(frozen=True)
class Case:
    model: str
    name: str
    kind: str  # "bert" | "prefill" | "decode"
    batch: int
    seq: int  # tokens per sequence in this call
    ctx: int = 0  # decode: cached context length
    quick: bool = False


def all_cases(dry: bool = False) -> list[Case]:
    """Every case, per model in priority order (its --quick cases first)."""
    out: list[Case] = []
    bert_shapes = [(2, 16), (1, 16)] if dry else [(b, s) for s in (128, 256) for b in (1, 8, 32, 128)]
    quick_bert = {"bert-base": (1, 128), "bert-large": (8, 128)}
    for model in ("bert-base", "bert-large"):
        q = quick_bert[model]
        shapes = sorted(bert_shapes, key=lambda bs: bs != q)  # stable: the quick shape first
        for b, s in shapes:
            out.append(Case(model, f"{model} b{b} s{s}", "bert", b, s, quick=(b, s) == q or dry))
    prefill = 32 if dry else 2048
    ctx = TINY_CTX if dry else CTX
    out.append(Case("llama-layer", f"llama-layer prefill {prefill}", "prefill", 1, prefill, quick=True))
    for b in (1, 2) if dry else (1, 16, 64):
        out.append(
            Case(
                "llama-layer", f"llama-layer decode b{b} ctx{ctx}", "decode", b, 1, ctx, quick=b in (1, 16, 2)
            )
        )
    return out


def select_cases(models: list[str], quick: bool, patterns: list[str] | None, dry: bool) -> list[Case]:
    cases = [c for c in all_cases(dry) if c.model in models and (c.quick or not quick)]
    if patterns:
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    order = {m: i for i, m in enumerate(models)}
    return sorted(cases, key=lambda c: order[c.model])  # stable: keeps each model's priority order


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class Holder(nn.Module):
    """Root container, so that quantize_model can replace the core model itself in place."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net


class Runner(nn.Module):
    """One case's forward as ``runner(x)``: what every mode times (and what torch.compile compiles)."""

    def __init__(self, net: nn.Module, kind: str, pe: tuple[torch.Tensor, torch.Tensor] | None = None,
                 cache: Any = None, ctx: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.net, self.kind, self.cache, self.ctx = net, kind, cache, ctx
        if pe is not None:
            self.register_buffer("cos", pe[0], persistent=False)
            self.register_buffer("sin", pe[1], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "bert":
            return _hidden(self.net(input_ids=x))
        if self.cache is None:  # prefill: causal, no cache
            return _hidden(self.net(x, position_embeddings=(self.cos, self.sin)))
        # decode step: write position ctx again, attend over ctx + 1 cached positions
        self.cache.layers[0].cumulative_length.fill_(self.ctx)
        return _hidden(self.net(x, position_embeddings=(self.cos, self.sin), past_key_values=self.cache))


def _hidden(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


@dataclass
class ModelSet:
    """The bf16 model of one model name and its converted copies (built lazily, freed together)."""

    name: str
    config: Any
    nets: dict[str, nn.Module]
    errors: dict[str, str]
    ao_inductor: dict[str, dict[str, Any]]
    build_s: dict[str, float]


def build_bf16(name: str, device: torch.device, dry: bool) -> tuple[nn.Module, Any]:
    from transformers import BertConfig, BertModel, LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    torch.manual_seed(0)
    if name.startswith("bert"):
        spec = TINY_BERT if dry else (BERT_LARGE if name == "bert-large" else {})
        cfg = BertConfig(**spec, attn_implementation="sdpa")
        ctor: Callable[[], nn.Module] = lambda: BertModel(cfg)  # noqa: E731
    else:
        cfg = LlamaConfig(
            **(TINY_LLAMA if dry else LLAMA_7B), num_hidden_layers=1, attn_implementation="sdpa"
        )
        ctor = lambda: LlamaDecoderLayer(cfg, layer_idx=0)  # noqa: E731
    try:
        with torch.device(device):  # random init on the device: seconds faster for BERT-large
            net = ctor()
    except Exception:  # noqa: BLE001 - a constructor that dislikes the device context
        net = ctor().to(device)
    return net.to(torch.bfloat16).eval(), cfg


def build_zq(net: nn.Module) -> nn.Module:
    import zqkernels

    out = zqkernels.quantize_model(Holder(copy.deepcopy(net)))
    return out.net if isinstance(out, Holder) else out


@contextlib.contextmanager
def inductor_config_changes(changes: dict[str, Any]):
    """Collects into ``changes`` the torch._inductor.config keys modified inside the block, and
    restores their previous values on exit."""
    import torch._inductor.config as icfg

    before = icfg.get_config_copy()
    try:
        yield changes
    finally:
        after = icfg.get_config_copy()
        for k, v in after.items():
            try:
                same = k in before and (before[k] is v or before[k] == v)
            except Exception:  # noqa: BLE001 - values without a usable ==
                same = False
            if not same:
                changes[k] = v
        icfg.load_config({k: before[k] for k in changes if k in before})


def build_ao(net: nn.Module, which: str) -> tuple[nn.Module, dict[str, Any]]:
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        PerRow,
        quantize_,
    )

    if which == "ao-int8":
        config = Int8DynamicActivationInt8WeightConfig()
    else:
        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    m = copy.deepcopy(net)
    changes: dict[str, Any] = {}
    with inductor_config_changes(changes):
        quantize_(m, config)
    return m, changes


def get_net(ms: ModelSet, variant: str) -> nn.Module:
    """The model variant ('bf16', 'zq', 'ao-int8', 'ao-fp8'), built on first use; raises the build
    error (again) if it could not be built."""
    if variant in ms.nets:
        return ms.nets[variant]
    if variant in ms.errors:
        raise RuntimeError(ms.errors[variant])
    t0 = time.perf_counter()
    try:
        # Built on first use, possibly inside the timed grad mode: weights must be normal tensors.
        with torch.inference_mode(False), torch.no_grad():
            if variant == "zq":
                ms.nets[variant] = build_zq(ms.nets["bf16"])
            else:
                ms.nets[variant], ms.ao_inductor[variant] = build_ao(ms.nets["bf16"], variant)
    except Exception as e:  # noqa: BLE001 - recorded per mode, the run goes on
        ms.errors[variant] = f"building {variant} failed: {error_text(e)}"
        raise RuntimeError(ms.errors[variant]) from e
    finally:
        ms.build_s[variant] = time.perf_counter() - t0
    return ms.nets[variant]


def case_inputs(case: Case, ms: ModelSet, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    """(x, Runner keyword arguments) of a case; the same for every mode and side."""
    g = torch.Generator(device=device).manual_seed(1)
    cfg = ms.config
    if case.kind == "bert":
        x = torch.randint(0, cfg.vocab_size, (case.batch, case.seq), device=device, generator=g)
        return x, {}
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    dt = torch.bfloat16
    x = torch.randn(case.batch, case.seq, cfg.hidden_size, device=device, dtype=dt, generator=g)
    rot = LlamaRotaryEmbedding(cfg).to(device)
    if case.kind == "prefill":
        pos = torch.arange(case.seq, device=device).unsqueeze(0)
        return x, {"pe": rot(x, pos)}
    from transformers import StaticCache

    pos = torch.full((case.batch, 1), case.ctx, device=device, dtype=torch.long)
    heads, head_dim = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    cache = StaticCache(config=cfg, max_cache_len=case.ctx + 1)
    cache.early_initialization(case.batch, heads, head_dim, dt, device)
    layer = cache.layers[0]
    layer.keys[:, :, : case.ctx].normal_(generator=g)
    layer.values[:, :, : case.ctx].normal_(generator=g)
    return x, {"pe": rot(x, pos), "cache": cache, "ctx": case.ctx}


# ----------------------------------------------------------------------------------------------
# Measuring one case
# ----------------------------------------------------------------------------------------------


class Skip(Exception):
    """A mode that cannot run here (not an error: no CUDA device for graphs in --dry-run)."""


@dataclass
class Settings:
    device: torch.device
    rounds: int
    target_round_s: float
    warmup_s: float
    grad_mode: str = "inference"  # every call runs under torch.inference_mode() or torch.no_grad()

    def context(self) -> Any:
        return torch.inference_mode() if self.grad_mode == "inference" else torch.no_grad()


def _ms_row(case: Case) -> dict[str, Any]:
    row: dict[str, Any] = asdict(case)
    row.pop("quick")
    row["case"] = row.pop("name")
    row["tokens"] = case.batch * case.seq
    for k in ("ms", "stats", "compile_s", "cos", "errors", "skipped", "notes"):
        row[k] = {}
    return row


def prepare(mode: str, runner: nn.Module, x: torch.Tensor, st: Settings,
            ao_inductor: dict[str, Any] | None) -> tuple[Callable[[], Any], torch.Tensor, float | None]:  # fmt: skip
    """(timed zero-argument call, its first output (valid now), compile seconds or None)."""
    how = MODE_SPEC[mode][1]
    dev = st.device
    sync = sync_for(dev)
    if how == "eager":
        fn = lambda: runner(x)  # noqa: E731
        return fn, fn(), None
    if how == "graph":
        if dev.type != "cuda":
            raise Skip("CUDA graphs need a CUDA device")
        graph, out = capture_graph(lambda: runner(x), dev)
        graph.replay()
        sync()
        return graph.replay, out, None
    cm = torch.compile(runner, mode="reduce-overhead" if how == "reduce-overhead" else None)
    if how == "reduce-overhead":

        def fn() -> torch.Tensor:
            torch.compiler.cudagraph_mark_step_begin()
            return cm(x)

    else:
        fn = lambda: cm(x)  # noqa: E731
    patch = contextlib.nullcontext()
    if ao_inductor:
        import torch._inductor.config as icfg

        patch = icfg.patch(ao_inductor)
    with patch:
        t0 = time.perf_counter()
        out = fn()
        sync()
        compile_s = time.perf_counter() - t0
        for _ in range(2):  # reduce-overhead records its graph on a later call: still under the patch
            out = fn()
        sync()
    return fn, out, compile_s


def measure(fns: dict[str, Callable[[], Any]], row: dict[str, Any], st: Settings) -> None:
    """Times ``fns`` (alternating rounds) into ``row``; if one raises, each is retried alone."""
    if not fns:
        return
    kw = dict(rounds=st.rounds, target_round_s=st.target_round_s, warmup_s=st.warmup_s)
    sync = sync_for(st.device)
    try:
        res = back_to_back(fns, sync, **kw)
    except Exception:  # noqa: BLE001 - find the culprit
        ensure_alive(st.device, "a timed mode")
        res = {}
        for name, fn in fns.items():
            try:
                res.update(back_to_back({name: fn}, sync, **kw))
            except Exception as e:  # noqa: BLE001
                row["errors"][name] = f"timing: {error_text(e)}"
                ensure_alive(st.device, name)
    for name, r in res.items():
        row["ms"][name] = r["s"] * 1e3
        row["stats"][name] = {
            "ms_min": r["s_min"] * 1e3, "spread": r["spread"], "calls": r["calls"], "rounds": r["rounds"],
        }  # fmt: skip


def run_case(
    case: Case, ms: ModelSet, modes: list[str], st: Settings, compiled_ok: Callable[[float], bool]
) -> dict[str, Any]:
    """All selected modes of one case. ``compiled_ok(s)`` is asked before each compiled mode, with the
    seconds this case's compiled pass has taken so far (the time budget)."""
    dev = st.device
    sync = sync_for(dev)
    row = _ms_row(case)
    x, kw = case_inputs(case, ms, dev)
    runners: dict[str, Runner] = {}

    def runner(variant: str) -> Runner:
        if variant not in runners:
            runners[variant] = Runner(get_net(ms, variant), case.kind, **kw).eval()
        return runners[variant]

    fns: dict[str, Callable[[], Any]] = {}
    keep: list[Any] = []
    with st.context():
        ref = runner("bf16")(x)  # bf16-eager output: the reference of every cosine
    sync()
    t_compiled = 0.0

    def add(mode: str) -> None:
        variant = MODE_SPEC[mode][0]
        skips = _cudagraph_skips()
        try:
            fn, out, compile_s = prepare(mode, runner(variant), x, st, ms.ao_inductor.get(variant))
            if MODE_SPEC[mode][1] == "reduce-overhead" and _cudagraph_skips() > skips:
                row["notes"][mode] = "inductor skipped CUDA graphs (see its log): ran as plain compile"
        except Skip as e:
            row["skipped"][mode] = str(e)
            return
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            row["errors"][mode] = error_text(e)
            ensure_alive(dev, mode)
            return
        if compile_s is not None:
            row["compile_s"][mode] = compile_s
        try:
            row["cos"][mode] = cosine_f32(out, ref)
        except Exception as e:  # noqa: BLE001
            row["errors"][f"{mode} cos"] = error_text(e)
        fns[mode] = fn
        keep.append(out)

    with st.context():
        for mode in (m for m in MODES if m in modes and MODE_SPEC[m][1] in ("eager", "graph")):
            add(mode)
        measure(fns, row, st)
        fns.clear()
        t0 = time.perf_counter()
        core_ok = compiled_ok(0.0)
        for mode in (m for m in COMPILED_ORDER if m in modes):
            if not (core_ok if mode in COMPILED_CORE else compiled_ok(time.perf_counter() - t0)):
                row["skipped"][mode] = "time budget (--budget-s) spent"
                continue
            add(mode)
        measure(fns, row, st)
        t_compiled = time.perf_counter() - t0
    row["compiled_s"] = t_compiled
    fns.clear()  # graphs, compiled modules and outputs go now, before the next case allocates
    keep.clear()
    runners.clear()
    summarize(row, modes)
    return row


def _cudagraph_skips() -> int:
    """How often inductor declined to CUDA-graph a compiled graph so far (reduce-overhead's fallback)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def summarize(row: dict[str, Any], modes: list[str]) -> None:
    """Best mode per side (bf16, zq, and 'peer' = bf16 or torchao), their ratios, the eager ratio."""
    ms = row["ms"]
    row["best"] = {}
    for side, side_modes in (("bf16", BF16_MODES), ("zq", ZQ_MODES), ("peer", BF16_MODES + AO_MODES)):
        sel = [m for m in side_modes if m in modes]
        vals = {m: ms[m] for m in sel if ms.get(m) is not None}
        if vals:
            m = min(vals, key=vals.get)
            row["best"][side] = {"mode": m, "ms": vals[m], "complete": len(vals) == len(sel)}
        else:
            row["best"][side] = None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    b = row["best"]
    row["ratio_best"] = ratio(b["bf16"] and b["bf16"]["ms"], b["zq"] and b["zq"]["ms"])
    row["ratio_best_peer"] = ratio(b["peer"] and b["peer"]["ms"], b["zq"] and b["zq"]["ms"])
    row["ratio_eager"] = ratio(ms.get("bf16-eager"), ms.get("zq-eager"))


def row_failed(row: dict[str, Any]) -> list[str]:
    """Why this row fails the run: a zqkernels mode that errored, or zq-eager's cosine below COS_MIN."""
    out = [f"{m}: {row['errors'][m]}" for m in ZQ_MODES if m in row["errors"]]
    c = row["cos"].get("zq-eager")
    if c is not None and not c >= COS_MIN:
        out.append(f"zq-eager cosine vs bf16-eager {c:.5f} < {COS_MIN}")
    return out


# ----------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------

_GROUPS = [("bf16", BF16_MODES), ("zq", ZQ_MODES), ("ao", AO_MODES)]
_W = 7


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def _cell(row: dict[str, Any], mode: str) -> str:
    if mode in row["ms"]:
        return _ms(row["ms"][mode])
    if mode in row["errors"]:
        return "ERR"
    if mode in row["skipped"]:
        return "skip"
    return "-"


def _short(mode: str) -> str:
    variant, how = MODE_SPEC[mode]
    return {"ao-int8": "i8", "ao-fp8": "f8"}.get(variant, TAG[how])


def _best_cell(best: dict[str, Any] | None) -> str:
    if not best:
        return "-"
    return f"{_ms(best['ms'])}{_short(best['mode'])}" + ("" if best["complete"] else "*")


def _x(v: float | None) -> str:
    return f"{v:.2f}x" if v else "-"


def table_header(modes: list[str]) -> list[str]:
    groups = []
    for side, side_modes in _GROUPS:
        titles = [m.split("-", 1)[1] if side != "ao" else m[3:] for m in side_modes]
        groups.append(f"{side + ':':<5}" + " ".join(t.rjust(_W) for t in titles))
    return [
        f"{'case':<28} | " + " | ".join(groups)
        + f" | {'bf16 best':>10} {'zq best':>10} {'x best':>7} {'x eager':>7} | {'peer best':>10} {'x peer':>7} | {'cos zq':>7}"
    ]  # fmt: skip


def table_row(row: dict[str, Any]) -> str:
    groups = []
    for _side, side_modes in _GROUPS:
        groups.append(" " * 5 + " ".join(_cell(row, m).rjust(_W) for m in side_modes))
    b = row.get("best") or {}
    cos = row["cos"].get("zq-eager")
    return (
        f"{row['case']:<28} | " + " | ".join(groups)
        + f" | {_best_cell(b.get('bf16')):>10} {_best_cell(b.get('zq')):>10} {_x(row.get('ratio_best')):>7}"
        f" {_x(row.get('ratio_eager')):>7} | {_best_cell(b.get('peer')):>10} {_x(row.get('ratio_best_peer')):>7}"
        f" | {(f'{cos:.5f}' if cos is not None else '-'):>7}"
    )  # fmt: skip


def row_notes(row: dict[str, Any]) -> list[str]:
    out = []
    if row["compile_s"]:
        out.append("    compile s: " + ", ".join(f"{m} {s:.1f}" for m, s in row["compile_s"].items()))
    for m, msg in row["errors"].items():
        out.append(f"    ERR {m}: {msg}")
    for m, msg in row["notes"].items():
        out.append(f"    note {m}: {msg}")
    return out


LEGEND = [
    "ms per forward (median); best = fastest mode of the side (e eager, g CUDA graph, c torch.compile,",
    "ro reduce-overhead, i8/f8 torchao int8/fp8 compiled; * = a mode of that side failed or was skipped);",
    "x best = bf16 best / zq best, x eager = bf16-eager / zq-eager, x peer = best of bf16 and torchao / zq",
    "best (> 1: zqkernels faster); cos zq = cosine(zq-eager output, bf16-eager output), float32",
]


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


class Budget:
    """Time for the compiled modes, shared among models by their cases' expected compile cost."""

    def __init__(self, total_s: float | None, cases: list[Case]) -> None:
        self.total = total_s
        self.used = 0.0
        self.left_weight = sum(COMPILE_WEIGHT.get(c.model, 1.0) for c in cases)
        self.model_share = float("inf")
        self.model_used = 0.0

    def start_model(self, cases: list[Case]) -> None:
        w = sum(COMPILE_WEIGHT.get(c.model, 1.0) for c in cases)
        if self.total is not None and self.left_weight > 0:
            self.model_share = max(0.0, self.total - self.used) * w / self.left_weight
        self.left_weight -= w
        self.model_used = 0.0

    def ok(self, pending_s: float = 0.0) -> bool:
        """May a compiled mode start, ``pending_s`` seconds into the current case's compiled pass?"""
        return self.total is None or self.model_used + pending_s < self.model_share

    def spend(self, s: float) -> None:
        self.used += s
        self.model_used += s


def run(
    models: list[str],
    modes: list[str],
    *,
    quick: bool = False,
    patterns: list[str] | None = None,
    dry: bool = False,
    budget_s: float | None = None,
    rounds: int = 7,
    target_round_s: float = 0.05,
    grad_mode: str = "inference",
    out_json: Any = None,
    print_fn: Callable[[str], None] = print,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Measures the cases of ``models`` (see the module docstring), prints a table per model and
    returns (header, rows); writes the JSON {"header", "rows"} after every case when ``out_json``."""
    import zqkernels

    # torchao's subclasses warn once per compile that they lack a stable AOT-cache hash: noise here.
    warnings.filterwarnings("ignore", message=".*_stable_hash_for_caching.*")

    t_start = time.perf_counter()
    device = torch.device("cpu") if dry else torch.device("cuda", torch.cuda.current_device())
    cases = select_cases(models, quick, patterns, dry)
    dynamo = configure_dynamo()
    env = environment(device)
    header: dict[str, Any] = {
        **env,
        "zqkernels_version": getattr(zqkernels, "__version__", None),
        "packages": package_versions("transformers", "torchao", "triton", "zqkernels"),
        "settings": {
            "models": models,
            "modes": modes,
            "quick": quick,
            "cases": patterns,
            "dry_run": dry,
            "budget_s": budget_s,
            "rounds": rounds,
            "target_round_s": target_round_s,
            "grad_mode": grad_mode,
            "dynamo": dynamo,
        },  # fmt: skip
        "method": METHOD_NOTES,
        "ao_inductor_config": {},
    }
    rows: list[dict[str, Any]] = []
    print_fn(
        f"zqkernels {header['zqkernels_version']} (commit {env['commit']}) | torch {env['torch']} "
        f"| transformers {header['packages']['transformers']} | torchao {header['packages']['torchao']} "
        f"| {env['device']} | {env['date']}"
    )
    if dry:
        print_fn("DRY RUN: tiny models on CPU, exercises the code paths only; the times mean nothing")
    st = Settings(device, rounds, target_round_s, warmup_s=0.02 if dry else 0.1, grad_mode=grad_mode)
    budget = Budget(budget_s, cases)

    def save() -> None:
        header["elapsed_s"] = time.perf_counter() - t_start
        header["budget_used_s"] = budget.used
        if out_json is not None:
            write_json(out_json, {"header": header, "rows": rows})

    try:
        for model in models:
            mcases = [c for c in cases if c.model == model]
            if not mcases:
                continue
            budget.start_model(mcases)
            t0 = time.perf_counter()
            with torch.no_grad():
                net, cfg = build_bf16(model, device, dry)
            ms = ModelSet(model, cfg, {"bf16": net}, {}, {}, {"bf16": time.perf_counter() - t0})
            print_fn("")
            print_fn(f"== {model} ==")
            for line in table_header(modes):
                print_fn(line)
            for case in mcases:
                row = run_case(case, ms, modes, st, budget.ok)
                budget.spend(row["compiled_s"])
                rows.append(row)
                print_fn(table_row(row))
                for line in row_notes(row):
                    print_fn(line)
                torch._dynamo.reset()
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                save()
            header["ao_inductor_config"].update({k: v for k, v in ms.ao_inductor.items() if v})
            header.setdefault("build_s", {})[model] = dict(ms.build_s)
            del ms, net
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    except BaseException as e:
        header["aborted"] = error_text(e)
        raise
    finally:
        save()
    print_fn("")
    for line in LEGEND:
        print_fn(line)
    if header["ao_inductor_config"]:
        for variant, changes in header["ao_inductor_config"].items():
            print_fn(f"{variant}: inductor settings of its config, used for its compiles only: {changes}")
    skipped = [
        (r["case"], m) for r in rows for m, why in r["skipped"].items() if why.startswith("time budget")
    ]
    if skipped:
        print_fn(
            f"{len(skipped)} compiled mode(s) skipped for the time budget ({budget_s:.0f} s for compiled modes): "
            + ", ".join(f"{c} {m}" for c, m in skipped[:8]) + (" ..." if len(skipped) > 8 else "")
            + "; run them with --cases / --budget-s"
        )  # fmt: skip
    failed = [(r["case"], why) for r in rows for why in row_failed(r)]
    for c, why in failed:
        print_fn(f"WARNING {c}: {why}")
    if grad_mode == "inference" and any("Inference tensors" in why for _, why in failed):
        print_fn(
            "hint: a zqkernels mode failed on an inference tensor; --grad-mode no_grad runs every mode under no_grad"
        )
    print_fn(
        f"{len(rows)} cases in {header['elapsed_s']:.0f} s (compiled modes {budget.used:.0f} s)"
        + (f"; JSON: {out_json}" if out_json is not None else "")
    )
    return header, rows


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _csv(choices: tuple[str, ...], what: str) -> Callable[[str], list[str]]:
    def parse(s: str) -> list[str]:
        out = [v.strip() for v in s.split(",") if v.strip()]
        bad = [v for v in out if v not in choices]
        if bad or not out:
            raise argparse.ArgumentTypeError(f"unknown {what} {bad or s!r}; choose from {', '.join(choices)}")
        return out

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Details: the module docstring and benchmarks/README.md",
    )  # fmt: skip
    p.add_argument("--models", type=_csv(MODEL_NAMES, "model"), default=list(MODEL_NAMES),
                   help=f"comma-separated subset of {','.join(MODEL_NAMES)} (default: all)")  # fmt: skip
    p.add_argument("--modes", type=_csv(MODES, "mode"), default=list(MODES),
                   help=f"comma-separated subset of {','.join(MODES)} (default: all)")  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help="bert-base b1 s128, bert-large b8 s128, llama prefill 2048, decode b1 and b16")  # fmt: skip
    p.add_argument("--cases", type=lambda s: [v.strip() for v in s.split(",") if v.strip()], default=None,
                   metavar="PATTERNS", help="only cases whose name matches one of these fnmatch patterns, "
                   "e.g. 'bert-large*s256*,*decode b64*' (--list shows the names)")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=None, metavar="S",
                   help="seconds for the compiled modes, all cases together (default 150 with --quick, "
                   "360 otherwise; 0: no limit)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per mode (default 7)")
    p.add_argument("--round-ms", type=float, default=50.0, help="target length of a round, ms (default 50)")
    p.add_argument("--grad-mode", choices=("inference", "no_grad"), default="inference",
                   help="every call runs under torch.inference_mode() (default) or torch.no_grad()")  # fmt: skip
    p.add_argument("--json", metavar="FILE", help="write the JSON here (rewritten after every case)")
    p.add_argument("--list", action="store_true", help="print the selected cases and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU smoke test: tiny models, every code path, no meaningful times")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cases = select_cases(args.models, args.quick, args.cases, args.dry_run)
    if args.list:
        for c in cases:
            print(c.name)
        return 0
    if not cases:
        print("bench_models: no case matches --models / --quick / --cases", file=sys.stderr)
        return 2
    if startup_error("bench_models", args.dry_run, "tiny models", ("zqkernels", "transformers")):
        return 2
    budget = args.budget_s
    if budget is None and not args.dry_run:
        budget = DEFAULT_BUDGET_S["quick" if args.quick else "full"]
    if budget is not None and budget <= 0:
        budget = None
    rounds, round_s = (2, 0.005) if args.dry_run else (max(1, args.rounds), args.round_ms / 1e3)
    _, rows = run(
        args.models, args.modes, quick=args.quick, patterns=args.cases, dry=args.dry_run, budget_s=budget,
        rounds=rounds, target_round_s=round_s, grad_mode=args.grad_mode, out_json=args.json,
    )  # fmt: skip
    return 1 if any(row_failed(r) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
