"""Decode attention (issue 19): zqkernels.decode_attention against torch SDPA's backends, one query
token per sequence over a KV cache with grouped KV heads (Llama-3-8B: 32 heads, 8 KV heads, hd 128).

For each (batch, context): zq's kernel, SDPA with enable_gqa=True under each backend that accepts the
call (flash, efficient, cudnn, math), and HF's path (repeat_kv copies, then SDPA's default choice).
CUDA graphs of a cycle over cache copies rotated past L2; median us, the cache's GB/s
(k + v read once) and the ratio of the best SDPA to zq. Eager host time per call at a tiny shape
(B 1, context 128), back to back with one sync, zq against SDPA default.

    python benchmarks/bench_attention.py [--batches 1,16,64] [--contexts 512,1024,4096,8192] [--json F]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402

H, KV, HD = 32, 8, 128


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v, m):
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)

    return run


def _hf(q, k, v, m):
    G = q.shape[1] // k.shape[1]
    k2 = k.repeat_interleave(G, dim=1)
    v2 = v.repeat_interleave(G, dim=1)
    return F.scaled_dot_product_attention(q, k2, v2, attn_mask=m)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--contexts", default="512,1024,4096,8192")
    ap.add_argument("--mask", choices=["none", "bool"], default="bool", help="HF passes a bool mask with a static cache")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_attention: needs a CUDA device")
        return 1
    import zqkernels as zq
    from torch.nn.attention import SDPBackend

    dev = torch.device("cuda")
    rot = bc.device_rotate_bytes(dev)
    peers = {"sdpa": _sdpa(None), "hf_repeat_kv": _hf}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        if hasattr(SDPBackend, name):
            peers[name.lower()] = _sdpa(getattr(SDPBackend, name))
    rows = []
    print(f"{'B':>3} {'ctx':>5} {'zq us':>8} {'GB/s':>6} " + " ".join(f"{p[:12]:>12}" for p in peers) + "  best/zq")
    for B in map(int, args.batches.split(",")):
        for L in map(int, args.contexts.split(",")):
            cache_bytes = 2 * B * KV * L * HD * 2
            n = bc.rotation_copies(cache_bytes, rot, max_copies=16)
            sets = []
            for i in range(n):
                g = torch.Generator(device=dev).manual_seed(i)
                q = torch.randn(B, H, 1, HD, device=dev, dtype=torch.bfloat16, generator=g)
                k = torch.randn(B, KV, L, HD, device=dev, dtype=torch.bfloat16, generator=g)
                v = torch.randn(B, KV, L, HD, device=dev, dtype=torch.bfloat16, generator=g)
                m = None
                if args.mask == "bool":
                    m = torch.ones(B, 1, 1, L, device=dev, dtype=torch.bool)
                    m[:, :, :, L - L // 8:] = False  # the unfilled tail of a static cache
                sets.append((q, k, v, m))
            q, k, v, m = sets[0]
            ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(H // KV, 1),
                                                 v.float().repeat_interleave(H // KV, 1), attn_mask=m)
            out = zq.decode_attention(q, k, v, m)
            err = (out.float() - ref).abs().max().item()
            row = {"B": B, "ctx": L, "cache_MB": cache_bytes / 1e6, "zq_max_abs_err": err}
            r = bc.time_calls([lambda s=s: zq.decode_attention(*s) for s in sets], dev)
            row["zq_us"] = r["us"]
            row["zq_GBps"] = cache_bytes / (r["us"] * 1e-6) / 1e9
            for name, fn in peers.items():
                try:
                    fn(*sets[0])
                    rr = bc.time_calls([lambda s=s, f=fn: f(*s) for s in sets], dev)
                    row[f"{name}_us"] = rr["us"]
                except Exception as e:  # noqa: BLE001 - a backend refusing the shape is a result
                    row[f"{name}_us"] = None
                    row[f"{name}_error"] = bc.first_line(e)
                torch.cuda.synchronize()
            best = min((row[f"{p}_us"] for p in peers if row.get(f"{p}_us")), default=None)
            row["best_sdpa_over_zq"] = best / row["zq_us"] if best else None
            rows.append(row)
            cells = " ".join(f"{row[f'{p}_us']:>12.1f}" if row.get(f"{p}_us") else f"{'-':>12}" for p in peers)
            print(f"{B:>3} {L:>5} {row['zq_us']:>8.1f} {row['zq_GBps']:>6.0f} {cells}  {row['best_sdpa_over_zq'] or 0:.2f}x"
                  f"  (err {err:.1e})", flush=True)
            del sets, q, k, v, m, ref, out
            torch.cuda.empty_cache()

    # Eager host time per call at a tiny shape.
    q = torch.randn(1, H, 1, HD, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, KV, 128, HD, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    m = torch.ones(1, 1, 1, 128, device=dev, dtype=torch.bool)
    host = bc.back_to_back({"zq": lambda: zq.decode_attention(q, k, v, m),
                            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True),
                            "hf_repeat_kv": lambda: _hf(q, k, v, m)}, bc.sync_for(dev))
    host_us = {n: h["s"] * 1e6 for n, h in host.items()}
    print("eager host us/call (B 1, ctx 128): " + ", ".join(f"{n} {u:.1f}" for n, u in host_us.items()))
    if args.json:
        bc.write_json(args.json, {"bench": "attention", "env": bc.environment(dev), "commit": bc.git_commit(),
                                  "heads": H, "kv_heads": KV, "head_dim": HD, "mask": args.mask,
                                  "rows": rows, "eager_host_us": host_us})
    return 0


if __name__ == "__main__":
    sys.exit(main())
