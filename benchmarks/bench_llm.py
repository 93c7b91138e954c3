"""Whole model, best mode against best mode: a Llama-3-8B-shaped ``LlamaForCausalLM`` in bf16 (eager,
CUDA graph, torch.compile, reduce-overhead) against its zqkernels W8A8 / FP8 / W4A8 / W4A8-FP copies
(``quantize_``: eager, CUDA graph, torch.compile) and torchao's compiled int8 / fp8 dynamic quantization,
prefill and decode steps, in one run on one GPU (issue 19, item 5).

    python benchmarks/bench_llm.py --quick [--json FILE]   # prefill + decode b1/b16 ctx1024 (~7-9 min, H100)
    python benchmarks/bench_llm.py [--json FILE]           # 7 cases (~9-12 min; or split with --cases)
    python benchmarks/bench_llm.py --layers 8 ...          # an 8-layer model (per-token figures scale)
    python benchmarks/bench_llm.py --dry-run               # CPU smoke test: tiny model, no timing claims

The model: random weights, created in bf16 on the GPU from ``LlamaConfig(hidden_size=4096,
intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
num_hidden_layers=32, rope_theta=500000, attn_implementation="sdpa")``; ``--layers N`` keeps N layers (the
embedding and lm_head stay full size: ms, tokens/s and GB are then that smaller model's). It is built
once and stays on the GPU; each other side is converted from a copy once, runs every case, and is freed
(del + empty_cache) before the next. Every side runs the same forward: its decoder (``model.model``,
position_ids given), then ``lm_head``, which is bf16 on every side (quantize_'s default; torchao
converts the decoder only and shares bf16's lm_head).

Cases, in run order (``--cases`` picks by fnmatch pattern, ``--list`` shows them; ``--quick``: the first 3):

- ``decode bB ctxC``, B in 1 / 16 / 64, C in 1024 / 4096: one decode step of input_ids [B, 1] at position
  C against a transformers ``StaticCache`` (max_cache_len C + 1, ``early_initialization``, keys / values
  of positions 0..C-1 random, the same for every side and mode). Each call resets every cache layer's
  write position (``cumulative_length`` set to C by two multi-tensor ops, timed on every side and mode) and runs the model, which
  writes position C in place and attends over C + 1 positions: every call is the same step (eager
  loops, graph replays, compiled calls alike), as bench_models does for its layer. Output: logits [B, 1, V].
- ``prefill 2048``: input_ids [1, 2048], no cache, causal. The timed output is the LAST position's
  logits [1, 1, V] (lm_head on the last hidden state only, as serving does); accuracy uses a separate
  eager call with all 2048 positions' logits. HF's mask code checks position_ids on the host in eager
  mode (SDPA then runs is_causal); under graph capture or compile it materializes the causal mask.

Sides and modes (``--schemes`` picks the sides besides bf16; ``--modes``: fnmatch patterns on mode ids):

    bf16-eager / -graph / -compile / -ro   eager, CUDA graph replays, torch.compile, mode="reduce-overhead"
    <scheme>-eager / -graph / -compile     quantize_(deepcopy(model), W8A8Config() / FP8Config() /
                                            W4A8Config(group_size=128) / W4A8FPConfig()) for w8a8 / fp8 /
                                            w4a8 / w4a8-fp ('w4a8@alpha=16' adds options); -ro if selected
    ao-int8-compile / ao-fp8-compile        bench_models.build_ao on a copy of the decoder, compiled;
                                            skipped with a note without torchao

Timing is bench_models.py's (prepare / measure): warm-up >= 0.1 s, rounds of back-to-back calls with one
synchronize per round, ms = median over rounds; the modes of one side and case alternate round by round
(eager + graph, then the compiled ones). Sides run one after the other: bf16, the torchao peers, then
the zqkernels schemes. ``--budget-s`` (bench_models' Budget) bounds the compiled modes' time (compile +
measurement; default 240 s, 0 = none): each side in turn gets a share of what is left, by its compiled
modes x cases, and its compiled modes of a case are admitted together (in case order) while its share
lasts (``skip``; ``*`` on a best lacking a mode). A compile of the 32-layer model takes about a minute:
with the default budget the baselines' compiled modes usually fit for the first case only, so a full
compiled sweep needs several runs (--cases / --schemes / --budget-s 0).

Per case and side: each mode's ms, the best mode, ``x bf16`` = bf16 best / side best and ``x ao`` = best
torchao peer / side best (> 1: this side faster), tokens/s at the best mode (decode: B / step time;
prefill: 2048 / forward time), peak GB (max_memory_allocated over one eager call after a reset: weights,
cache, activations; minus the resident bf16 model where the side does not use it), and accuracy against
bf16-eager on the same inputs: logits cosine (float32, all positions) and next-token agreement (argmax
equality rate over batch / positions). Random weights: accuracy checks the conversion, not quality.

``--json``: environment, settings, model config, conversions and every number, rewritten after every
side and case. Exit status: 0 when every zqkernels mode ran (skipped is fine) and each scheme's cosine is
>= 0.95, 1 otherwise, 2 on bad usage or without CUDA (unless --dry-run, which skips graphs and compiles).
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import gc
import inspect
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as bm  # noqa: E402  (its helpers include _common's: environment, write_json, ...)
from _llm_sides import AO, TAGS, ZQ, all_modes, side_attention, side_tags, split_mode, zq_config  # noqa: E402,F401

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                 vocab_size=128256, num_hidden_layers=32, rope_theta=500000.0, max_position_embeddings=8192)
TINY = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,  # --dry-run
            vocab_size=256, num_hidden_layers=2, rope_theta=500000.0, max_position_embeddings=256)
SHORT = {"eager": "e", "graph": "g", "compile": "c", "ro": "ro"}
BM_MODE = {"eager": "bf16-eager", "graph": "bf16-graph", "compile": "bf16-compile", "ro": "bf16-ro"}
COS_MIN = 0.95  # a scheme's logits cosine vs bf16-eager below this fails the run (a broken conversion)
DEFAULT_BUDGET_S = 240.0
GB = 1e9


def all_cases(dry: bool = False) -> list[bm.Case]:
    """Every case in run order (the --quick ones first: they get the compile budget first)."""
    c1, c2, seq = (16, 32, 32) if dry else (1024, 4096, 2048)

    def dec(b: int, ctx: int) -> bm.Case:
        return bm.Case("llm", f"decode b{b} ctx{ctx}", "decode", b, 1, ctx, quick=ctx == c1 and b < 64)

    prefill = bm.Case("llm", f"prefill {seq}", "prefill", 1, seq, quick=True)
    return [dec(1, c1), dec(16, c1), prefill, dec(64, c1), dec(1, c2), dec(16, c2), dec(64, c2)]


def select_cases(quick: bool, patterns: list[str] | None, dry: bool) -> list[bm.Case]:
    cases = [c for c in all_cases(dry) if c.quick or not quick]
    return [c for c in cases if not patterns or any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]


# ----------------------------------------------------------------------------------------------
# The model, its sides, a case's forward
# ----------------------------------------------------------------------------------------------


def build_bf16(device: torch.device, dry: bool, layers: int | None) -> nn.Module:
    """LlamaForCausalLM with random weights, created in bf16 on ``device`` (RoPE's inv_freq stays
    float32, as from_pretrained(dtype=torch.bfloat16) leaves it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = {**(TINY if dry else LLAMA3_8B), **({"num_hidden_layers": layers} if layers else {})}
    cfg = LlamaConfig(**spec, attn_implementation="sdpa")
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            net = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    return net.eval()


def build_side(side: str, bf16: nn.Module) -> tuple[nn.Module, nn.Module, dict[str, Any], str]:
    """(decoder, lm_head, torchao's inductor settings, conversion summary) of a side."""
    import zqkernels

    if side == "bf16":
        return bf16.model, bf16.lm_head, {}, ""
    with torch.inference_mode(False), torch.no_grad():  # weights must be normal tensors
        if side in AO:
            dec, changes = bm.build_ao(bf16.model, side)
            return dec, bf16.lm_head, changes, "torchao quantize_ of the decoder; lm_head: bf16's"
        from zqkernels.cli.schemes import lm_head_configs

        q = copy.deepcopy(bf16)
        config, lm_head = zq_config(side)
        summary = zqkernels.quantize_(q, config, module_configs=lm_head_configs(lm_head, config))
    return q.model, q.lm_head, {}, str(summary).splitlines()[0]


class LMRunner(nn.Module):
    """One case's forward as ``runner(input_ids)``: what every mode times (and torch.compile compiles)."""

    def __init__(self, decoder: nn.Module, lm_head: nn.Module, pos: torch.Tensor, cache: Any = None,
                 ctx: int = 0, last_only: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.decoder, self.lm_head, self.cache, self.ctx = decoder, lm_head, cache, ctx
        self.last_only = last_only
        self.register_buffer("pos", pos, persistent=False)
        params = inspect.signature(decoder.forward).parameters
        # transformers >= 5.2x: `cache` (past_key_values deprecated, no cache_position); before: both
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.cache_position = None
        if cache is not None and "cache_position" in params:
            self.register_buffer("cache_position", pos[0].clone(), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        kw: dict[str, Any] = {"use_cache": False}
        if self.cache is not None:  # decode step: write position ctx again, on every layer
            # two multi-tensor launches for all layers (not one fill_ each: the reset is the harness's,
            # not the model's, and is timed on every side)
            counters = [layer.cumulative_length for layer in self.cache.layers]
            torch._foreach_mul_(counters, 0)
            torch._foreach_add_(counters, self.ctx)
            kw = {self.cache_kw: self.cache, "use_cache": True}
            if self.cache_position is not None:
                kw["cache_position"] = self.cache_position
        h = self.decoder(input_ids=ids, position_ids=self.pos, **kw).last_hidden_state
        return self.lm_head(h[:, -1:] if self.last_only else h)


def case_inputs(case: bm.Case, cfg: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    """(input_ids, LMRunner keyword arguments): the same values for every side and mode."""
    g = torch.Generator(device=device).manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (case.batch, case.seq), device=device, generator=g)
    if case.kind == "prefill":
        return ids, {"pos": torch.arange(case.seq, device=device).unsqueeze(0)}
    from transformers import StaticCache

    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    cache = StaticCache(config=cfg, max_cache_len=case.ctx + 1)
    cache.early_initialization(case.batch, cfg.num_key_value_heads, head_dim, torch.bfloat16, device)
    for layer in cache.layers:
        layer.keys[:, :, : case.ctx].normal_(generator=g)
        layer.values[:, :, : case.ctx].normal_(generator=g)
    pos = torch.full((case.batch, 1), case.ctx, device=device, dtype=torch.long)
    return ids, {"pos": pos, "cache": cache, "ctx": case.ctx}


# ----------------------------------------------------------------------------------------------
# One side on one case
# ----------------------------------------------------------------------------------------------


def new_row(case: bm.Case) -> dict[str, Any]:
    row = bm._ms_row(case)
    row.update({k: {} for k in ("accuracy", "peak_gb", "best", "x_bf16", "x_ao", "tok_s")})
    return row


def run_side_case(side: str, dec: nn.Module, head: nn.Module, case: bm.Case, cfg: Any, modes: list[str],
                  st: bm.Settings, row: dict[str, Any], refs: dict[str, Any], compiled_ok: Callable[[], bool],
                  other_gb: float, ao_inductor: dict[str, Any], dry: bool) -> float:  # fmt: skip
    """Accuracy, peak memory and every selected mode of ``side`` on ``case`` into ``row``; returns the
    seconds spent on compiled modes. ``refs``: bf16-eager's outputs (stored by the bf16 side, on CPU)."""
    dev, cuda = st.device, st.device.type == "cuda"
    sync = bm.sync_for(dev)
    ids, kw = case_inputs(case, cfg, dev)
    runner = LMRunner(dec, head, **kw).eval()
    mine = [m for m in modes if split_mode(m)[0] == side]
    fns: dict[str, Callable[[], Any]] = {}
    keep: list[Any] = []
    with st.context():
        try:
            if cuda:
                sync()
                torch.cuda.reset_peak_memory_stats(dev)
            out = runner(ids)
            sync()
            if cuda:
                row["peak_gb"][side] = torch.cuda.max_memory_allocated(dev) / GB - other_gb
            full = LMRunner(dec, head, last_only=False, **kw)(ids) if case.kind == "prefill" else out
            if side == "bf16":
                refs["out"] = out.cpu()
                refs["full"] = refs["out"] if full is out else full.cpu()
            elif "full" in refs:
                ref = refs["full"].to(dev)
                agree = float((full.argmax(-1) == ref.argmax(-1)).float().mean())
                row["accuracy"][side] = {"cos": bm.cosine_f32(full, ref), "agree": agree,
                                         "positions": full.numel() // full.shape[-1]}  # fmt: skip
                del ref
            del out, full
        except Exception as e:  # noqa: BLE001 - the side cannot run this case: every mode says so
            row["errors"].update({m: f"eager reference call: {bm.error_text(e)}" for m in mine})
            bm.ensure_alive(dev, f"{side} eager")
            return 0.0

        def add(mode: str) -> None:
            tag = split_mode(mode)[1]
            skips = bm._cudagraph_skips() if cuda else 0
            try:
                fn, out, compile_s = bm.prepare(BM_MODE[tag], runner, ids, st, ao_inductor)
                if tag == "ro" and cuda and bm._cudagraph_skips() > skips:
                    row["notes"][mode] = "inductor skipped CUDA graphs (see its log): ran as plain compile"
            except bm.Skip as e:
                row["skipped"][mode] = str(e)
                return
            except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                row["errors"][mode] = bm.error_text(e)
                bm.ensure_alive(dev, mode)
                return
            if compile_s is not None:
                row["compile_s"][mode] = compile_s
            if "out" in refs:
                row["cos"][mode] = bm.cosine_f32(out, refs["out"].to(dev))
            fns[mode] = fn
            keep.append(out)

        for m in (m for m in mine if split_mode(m)[1] in ("eager", "graph")):
            add(m)
        bm.measure(fns, row, st)
        fns.clear()
        compiled = [m for m in mine if split_mode(m)[1] in ("compile", "ro")]
        t0 = time.perf_counter()
        if compiled and (dry or not compiled_ok()):
            why = "dry run on CPU: compiled modes need the GPU" if dry else "time budget (--budget-s) spent"
            row["skipped"].update({m: why for m in compiled})
            compiled = []
        for m in compiled:
            add(m)
        bm.measure(fns, row, st)
        t_compiled = time.perf_counter() - t0 if compiled else 0.0
    fns.clear()  # graphs, compiled modules and outputs go before the next case allocates
    keep.clear()
    return t_compiled


def summarize(row: dict[str, Any], sides: list[str], modes: list[str]) -> None:
    """Best mode per side, tokens/s there, x bf16 and x ao (the best torchao peer) at the best modes."""
    b = row["best"]
    for s in sides:
        sel = [m for m in modes if split_mode(m)[0] == s]
        vals = {m: row["ms"][m] for m in sel if row["ms"].get(m) is not None}
        b[s] = None
        if vals:
            m = min(vals, key=vals.get)
            b[s] = {"mode": m, "ms": vals[m], "complete": len(vals) == len(sel)}
            row["tok_s"][s] = row["tokens"] / (vals[m] / 1e3)
    ao = min((b[s]["ms"] for s in AO if b.get(s)), default=None)
    for s in sides:
        if b.get(s) and s != "bf16":
            row["x_bf16"][s] = b["bf16"]["ms"] / b[s]["ms"] if b.get("bf16") else None
            row["x_ao"][s] = ao / b[s]["ms"] if ao and s not in AO else None


def row_failed(row: dict[str, Any], sides: list[str]) -> list[str]:
    """Why this row fails the run: a zqkernels mode that errored, or a scheme's cosine below COS_MIN."""
    out = [f"{m}: {e}" for m, e in row["errors"].items() if split_mode(m)[0] not in ("bf16", *AO)]
    for s in sides:
        c = row["accuracy"].get(s, {}).get("cos")
        if s not in AO and c is not None and not c >= COS_MIN:
            out.append(f"{s} logits cosine vs bf16-eager {c:.5f} < {COS_MIN}")
    return out


# ----------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------


def _cell(row: dict[str, Any], side: str, tag: str) -> str:
    mode = f"{side}-{tag}"
    if tag not in side_tags(side):
        return ""
    if mode in row["ms"]:
        return bm._ms(row["ms"][mode])
    return "ERR" if mode in row["errors"] else "skip" if mode in row["skipped"] else "-"


def _best(best: dict[str, Any] | None) -> str:
    if not best:
        return "-"
    return bm._ms(best["ms"]) + SHORT[split_mode(best["mode"])[1]] + ("" if best["complete"] else "*")


def table(rows: list[dict[str, Any]], sides: list[str]) -> list[str]:
    w = max(8, *map(len, sides))
    out = [f"{'case':<19} {'side':<{w}}|" + "".join(t.rjust(8) for t in TAGS) + f" |{'best':>10}{'x bf16':>8}"
           f"{'x ao':>7} |{'tok/s':>10}{'peak GB':>8} |{'cos':>8}{'agree':>6}"]  # fmt: skip
    for r in rows:
        for i, s in enumerate(sides):
            acc, peak, tok = r["accuracy"].get(s), r["peak_gb"].get(s), r["tok_s"].get(s)
            cos, agree = (f"{acc['cos']:.5f}", f"{acc['agree']:.3f}") if acc else ("-", "-")
            out.append(
                f"{'' if i else r['case']:<19} {s:<{w}}|" + "".join(_cell(r, s, t).rjust(8) for t in TAGS)
                + f" |{_best(r['best'].get(s)):>10}{bm._x(r['x_bf16'].get(s)):>8}{bm._x(r['x_ao'].get(s)):>7}"
                f" |{f'{tok:.1f}' if tok else '-':>10}{f'{peak:.2f}' if peak is not None else '-':>8}"
                f" |{cos:>8}{agree:>6}"
            )  # fmt: skip
    return out


LEGEND = [
    "ms per call (median); blank = not a mode of that side, - = not selected, skip = skipped, ERR = failed;",
    "best = fastest mode (e eager, g CUDA graph, c torch.compile, ro reduce-overhead; * = a selected mode",
    "missing); x bf16 = bf16 best / side best, x ao = best torchao peer / side best (> 1: this side faster);",
    "tok/s at the best mode; peak GB = max_memory_allocated over one eager call (weights, cache,",
    "activations); cos / agree = logits cosine (float32) and argmax agreement with bf16-eager, all positions",
]


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def run(sides: list[str], modes: list[str], cases: list[bm.Case], *, dry: bool = False,
        layers: int | None = None, budget_s: float | None = None, rounds: int = 7,
        target_round_s: float = 0.05, grad_mode: str = "inference", out_json: Any = None,
        print_fn: Callable[[str], None] = print) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """Measures ``cases`` for every side (see the module docstring), prints the table, returns
    (header, rows); writes the JSON {"header", "rows"} after every side and case when ``out_json``."""
    import zqkernels

    warnings.filterwarnings("ignore", message=".*_stable_hash_for_caching.*")  # torchao, per compile
    t_start = time.perf_counter()
    device = torch.device("cpu") if dry else torch.device("cuda", torch.cuda.current_device())
    cuda = device.type == "cuda"
    env = bm.environment(device)
    pk = bm.package_versions("transformers", "torchao", "triton", "zqkernels")
    header: dict[str, Any] = {
        **env, "zqkernels_version": getattr(zqkernels, "__version__", None), "packages": pk,
        "settings": {"sides": sides, "modes": modes, "cases": [c.name for c in cases], "dry_run": dry,
                     "layers": layers, "budget_s": budget_s, "rounds": rounds, "grad_mode": grad_mode,
                     "target_round_s": target_round_s, "dynamo": bm.configure_dynamo()},
        "method": bm.METHOD_NOTES[:6] + [
            "whole LlamaForCausalLM: decoder then lm_head (bf16 on every side); prefill times the last "
            "position's logits, decode one step of [B, 1] tokens against a random StaticCache context",
            "sides run one after the other; the modes of one side and case alternate round by round",
        ],
        "sides": {}, "ao_inductor_config": {},
    }  # fmt: skip
    rows = [new_row(c) for c in cases]
    print_fn(f"zqkernels {header['zqkernels_version']} (commit {env['commit']}) | torch {env['torch']} | "
             f"transformers {pk['transformers']} | torchao {pk['torchao']} | {env['device']} | {env['date']}")
    if dry:
        print_fn("DRY RUN: a tiny model on CPU, exercises the code paths only; the times mean nothing")
    st = bm.Settings(device, rounds, target_round_s, warmup_s=0.02 if dry else 0.1, grad_mode=grad_mode)
    todo = [s for s in sides if any(split_mode(m)[0] == s for m in modes)]
    todo.sort(key=lambda s: (s != "bf16", s not in AO))  # run order = compile-budget priority
    if pk["torchao"] is None and any(s in AO for s in todo):
        why = "torchao is not installed: torchao peers skipped"
        print_fn(why)
        for r in rows:
            r["skipped"].update({m: why for m in modes if split_mode(m)[0] in AO})
        todo = [s for s in todo if s not in AO]
    items = [SimpleNamespace(model=s) for s in todo for _ in cases for m in modes
             if split_mode(m)[0] == s and split_mode(m)[1] in ("compile", "ro")]  # fmt: skip
    budget = bm.Budget(budget_s, items)  # a side's share: its compiled modes x cases

    def save() -> None:
        header["elapsed_s"] = time.perf_counter() - t_start
        header["budget_used_s"] = budget.used
        if out_json is not None:
            bm.write_json(out_json, {"header": header, "rows": rows})

    def free() -> None:
        torch._dynamo.reset()
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            bf16 = build_bf16(device, dry, layers)
        cfg = bf16.config
        header["model_config"] = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str))}
        bf16_gb = sum(p.numel() * p.element_size() for p in bf16.parameters()) / GB
        header["sides"]["bf16"] = {"build_s": time.perf_counter() - t0, "weights_gb": bf16_gb}
        n = cfg.num_hidden_layers
        print_fn(f"model: LlamaForCausalLM hidden {cfg.hidden_size}, intermediate {cfg.intermediate_size}, "
                 f"{cfg.num_attention_heads} heads ({cfg.num_key_value_heads} KV), vocab {cfg.vocab_size}, "
                 f"{n} layers, {bf16_gb:.2f} GB bf16")  # fmt: skip
        if layers and not dry:
            print_fn(f"NOTE: {n} of 32 layers: ms, tokens/s and GB are this smaller model's (embedding and "
                     "lm_head full size), not Llama-3-8B's")  # fmt: skip
        refs: dict[str, dict[str, Any]] = {c.name: {} for c in cases}
        for side in todo:
            budget.start_model([it for it in items if it.model == side])
            info: dict[str, Any] = header["sides"].setdefault(side, {})
            before = torch.cuda.memory_allocated(device) if cuda else 0
            t0 = time.perf_counter()
            try:
                dec, head, ao_changes, summary = build_side(side, bf16)
            except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                info["error"] = f"building {side} failed: {bm.error_text(e)}"
                print_fn(f"{side}: {info['error']}")
                for r in rows:
                    r["errors"].update({m: info["error"] for m in modes if split_mode(m)[0] == side})
                bm.ensure_alive(device, f"building {side}")
                free()
                continue
            info.setdefault("build_s", time.perf_counter() - t0)  # bf16: built above
            shared_gb = head.weight.numel() * head.weight.element_size() / GB if side in AO else 0.0
            if side != "bf16" and cuda:  # torchao shares bf16's lm_head: counted as its own
                info["weights_gb"] = (torch.cuda.memory_allocated(device) - before) / GB + shared_gb
            info.update({"conversion": summary} if summary else {})
            header["ao_inductor_config"].update({side: ao_changes} if ao_changes else {})
            other_gb = 0.0 if side == "bf16" else bf16_gb - shared_gb
            print_fn(f"{side}: built in {info['build_s']:.1f} s" + (f" ({summary})" if summary else ""))
            from zqkernels.nn.blocks_base import decode_attention_mode

            for case, row in zip(cases, rows):
                with decode_attention_mode(side_attention(side)):
                    spent = run_side_case(side, dec, head, case, cfg, modes, st, row, refs[case.name],
                                          lambda: budget.ok(0.0), other_gb, ao_changes, dry)  # fmt: skip
                budget.spend(spent)
                free()
                got = [f"{t} {bm._ms(v)}" for (s, t), v in ((split_mode(m), v) for m, v in row["ms"].items())
                       if s == side]  # fmt: skip
                bad = [split_mode(m)[1] for m in row["errors"] if split_mode(m)[0] == side]
                print_fn(f"  {case.name:<19} {side:<8} ms: {', '.join(got) or '-'}"
                         + (f"; ERR {', '.join(bad)}" if bad else ""))  # fmt: skip
                save()
            del dec, head
            free()
        for row in rows:
            summarize(row, sides, modes)
    except BaseException as e:
        header["aborted"] = bm.error_text(e)
        raise
    finally:
        save()
    print_fn("")
    for line in table(rows, sides):
        print_fn(line)
    for r in rows:
        for line in bm.row_notes(r):
            print_fn(f"{r['case']}: {line.strip()}")
    for why in dict.fromkeys(w for r in rows for w in r["skipped"].values() if not w.startswith("time")):
        print_fn(f"skip: {why}")
    print_fn("")
    for line in LEGEND:
        print_fn(line)
    print_fn("weights GB: " + ", ".join(f"{s} {v['weights_gb']:.2f}" for s, v in header["sides"].items()
                                       if v.get("weights_gb") is not None))  # fmt: skip
    for variant, changes in header["ao_inductor_config"].items():
        print_fn(f"{variant}: inductor settings of its config, used for its compiles only: {changes}")
    skipped = [(r["case"], m) for r in rows for m, why in r["skipped"].items() if why.startswith("time")]
    if skipped:
        print_fn(f"{len(skipped)} compiled mode(s) skipped for the time budget ({budget_s:.0f} s): "
                 + ", ".join(f"{c} {m}" for c, m in skipped[:8]) + (" ..." if len(skipped) > 8 else "")
                 + "; run them with --cases / --schemes / --budget-s")  # fmt: skip
    for r in rows:
        for why in row_failed(r, sides):
            print_fn(f"WARNING {r['case']}: {why}")
    print_fn(f"{len(rows)} cases x {len(sides)} sides in {header['elapsed_s']:.0f} s (compiled modes "
             f"{budget.used:.0f} s)" + (f"; JSON: {out_json}" if out_json is not None else ""))  # fmt: skip
    return header, rows


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _list(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Details: the module docstring")  # fmt: skip
    p.add_argument("--schemes", type=_list, default=[*ZQ, *AO], metavar="SIDES",
                   help=f"sides besides bf16, of {','.join(ZQ + AO)} (default: all); a zqkernels scheme "
                   "may take config options: 'w4a8@alpha=16+group_size=64', 'w8a8@lm_head=w8' (lm_head quantized too), "
                   "'w8a8@attn=kernel' (the fused blocks' decode attention mode, nn.blocks_base.DECODE_MODES)")  # fmt: skip
    p.add_argument("--modes", type=_list, default=None, metavar="PATTERNS",
                   help="fnmatch patterns on mode ids <side>-<eager|graph|compile|ro>, e.g. "
                   "'*-eager,*-graph' (default: all but zqkernels' / torchao's -ro; '*': all)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="decode b1 and b16 at ctx 1024, prefill 2048")
    p.add_argument("--cases", type=_list, default=None, metavar="PATTERNS",
                   help="only cases matching one of these fnmatch patterns, e.g. '*ctx4096' (see --list)")
    p.add_argument("--layers", type=int, default=None, metavar="N", help="N decoder layers instead of 32")
    p.add_argument("--budget-s", type=float, default=None, metavar="S",
                   help=f"seconds for the compiled modes, all together (default {DEFAULT_BUDGET_S:.0f}; "
                   "0: no limit)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per mode (default 7)")
    p.add_argument("--round-ms", type=float, default=50.0, help="target length of a round, ms (default 50)")
    p.add_argument("--grad-mode", choices=("inference", "no_grad"), default="inference",
                   help="calls run under torch.inference_mode() (default) or torch.no_grad()")  # fmt: skip
    p.add_argument("--json", metavar="FILE", help="write the JSON here (rewritten after each side and case)")
    p.add_argument("--list", action="store_true", help="print the selected cases and modes and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU smoke test: tiny model, eager modes of every side, times meaningless")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from zqkernels.nn.blocks_base import DECODE_MODES

    bad = [s for s in args.schemes if not (s in AO or s.partition("@")[0] in ZQ)
           or side_attention(s) not in (None, *DECODE_MODES)]
    if bad:
        print(f"bench_llm: unknown scheme {bad}; choose from {', '.join(ZQ + AO)}", file=sys.stderr)
        return 2
    sides = ["bf16", *dict.fromkeys(args.schemes)]
    modes = all_modes(sides, default=True)
    if args.modes:
        modes = [m for m in all_modes(sides) if any(fnmatch.fnmatchcase(m, p) for p in args.modes)]
    cases = select_cases(args.quick, args.cases, args.dry_run)
    if args.list:
        print("cases: " + ", ".join(c.name for c in cases) + "\nmodes: " + ", ".join(modes))
        return 0
    if not cases or not modes:
        print("bench_llm: no case or mode matches --quick / --cases / --schemes / --modes", file=sys.stderr)
        return 2
    if bm.startup_error("bench_llm", args.dry_run, "a tiny model", ("zqkernels", "transformers")):
        return 2
    budget = args.budget_s
    if budget is None and not args.dry_run:
        budget = DEFAULT_BUDGET_S
    rounds, round_s = (2, 0.005) if args.dry_run else (max(1, args.rounds), args.round_ms / 1e3)
    _, rows = run(sides, modes, cases, dry=args.dry_run, layers=args.layers, budget_s=budget or None,
                  rounds=rounds, target_round_s=round_s, grad_mode=args.grad_mode, out_json=args.json)
    return 1 if any(row_failed(r, sides) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
