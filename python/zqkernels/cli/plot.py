"""The CLI's PNG plots (matplotlib): eval's per-layer error, generate-bench's speed and memory."""

from __future__ import annotations

import os
from typing import Any, Optional


def plot_errors(rows: list[dict[str, Any]], path: str, title: str) -> Optional[str]:
    """Write a PNG bar chart of the per-layer errors; -> None, or why no plot was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot written"
    kinds = sorted({r["module"].rsplit(".", 1)[-1] for r in rows})
    cmap = plt.get_cmap("tab10")
    color = {k: cmap(i % 10) for i, k in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(min(max(7.0, 0.06 * len(rows) + 4), 30), 4.5))
    xs = range(len(rows))
    ax.bar(xs, [max(r["rel_err"], 1e-12) for r in rows], color=[color[r["module"].rsplit(".", 1)[-1]] for r in rows], width=0.85)
    ax.set_yscale("log")
    # one x tick per transformer layer: at its first quantized Linear, labelled by the layer index
    ticks, labels, seen = [], [], set()
    for i, r in enumerate(rows):
        idx = next((p for p in r["module"].split(".") if p.isdigit()), None)
        if idx is not None and idx not in seen:
            seen.add(idx)
            ticks.append(i)
            labels.append(idx)
    if ticks:
        step = max(1, len(ticks) // 32)
        ax.set_xticks(ticks[::step], labels[::step], fontsize=7)
        ax.set_xlabel("quantized Linears in model order (ticks: the first Linear of each layer, by index)")
    else:
        ax.set_xlabel("quantized Linears in model order")
    ax.set_ylabel("relative output error")
    ax.set_title(title + "\n||Q(x) - F(x)|| / ||F(x)|| on the float model's inputs to each Linear", fontsize=9)
    ax.set_xlim(-1, len(rows))
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=color[k]) for k in kinds], labels=kinds,
              fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0.0)
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def plot_generate(rows: list[dict[str, Any]], path: str, title: str) -> Optional[str]:
    """generate-bench's PNG: prefill ms, decode tokens/s and memory (MiB) of each model, side by side;
    -> None, or why no plot was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot written"
    panels = [("prefill ms (lower is better)", [r["prefill_ms"] for r in rows]),
              ("decode tokens/s (higher is better)", [r["decode_tok_s"] or 0.0 for r in rows]),
              ("MiB: model (peak on a GPU)", [(r["peak_bytes"] or r["model_bytes"] or 0) / 2**20 for r in rows])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    cmap = plt.get_cmap("tab10")
    labels = [r["label"] for r in rows]
    for ax, (name, vals) in zip(axes, panels):
        bars = ax.bar(range(len(vals)), vals, color=[cmap(i % 10) for i in range(len(vals))])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(vals)), labels, fontsize=7, rotation=15)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
