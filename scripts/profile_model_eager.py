"""cProfile of one eager forward of HF BERT-large (batch 8, seq 128) in bf16 and after
quantize_model: where the host time of the converted model goes (benchmarks/bench_models_eager.py
times it)."""

from __future__ import annotations

import copy
import cProfile
import pstats
import time

import torch
import zqkernels as zq
from transformers import BertConfig, BertModel


def main() -> None:
    dev = torch.device("cuda")
    cfg = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    m = BertModel(cfg).to(dev, torch.bfloat16).eval()
    q = zq.quantize_model(copy.deepcopy(m))
    ids = torch.randint(0, cfg.vocab_size, (8, 128), device=dev)
    with torch.inference_mode():
        for name, model in (("bf16", m), ("w8a8", q)):
            for _ in range(3):
                model(input_ids=ids)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                model(input_ids=ids)
            t_launch = (time.perf_counter() - t0) / 10
            torch.cuda.synchronize()
            t_all = (time.perf_counter() - t0) / 10
            print(f"{name}: host {t_launch * 1e3:.2f} ms/forward (launch side), with sync {t_all * 1e3:.2f} ms")
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(5):
                model(input_ids=ids)
            torch.cuda.synchronize()
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
