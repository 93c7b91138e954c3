"""Where a converted model's time goes: dynamo graph breaks of the zq model under torch.compile,
and a kernel-level profile (CUDA time per kernel name) of BERT-large b8 s128 bf16 vs zq, eager."""
import copy
import sys

import torch
import transformers
import zqkernels
from torch.profiler import ProfilerActivity, profile

torch.manual_seed(0)
dev = "cuda"
cfg = transformers.BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              intermediate_size=4096, attn_implementation="sdpa")
m = transformers.BertModel(cfg).to(dev, torch.bfloat16).eval()
zq = zqkernels.quantize_model(copy.deepcopy(m))
ids = torch.randint(0, 1000, (8, 128), device=dev)

if "explain" in sys.argv:
    torch._dynamo.reset()
    small = zqkernels.quantize_model(copy.deepcopy(transformers.BertModel(
        transformers.BertConfig(num_hidden_layers=2, attn_implementation="sdpa")).to(dev, torch.bfloat16).eval()))
    with torch.no_grad():
        ex = torch._dynamo.explain(small)(ids)
    print("graphs", ex.graph_count, "breaks", ex.graph_break_count)
    for b in ex.break_reasons[:8]:
        print("BREAK:", str(b.reason)[:300])
        for fr in b.user_stack[-3:]:
            print("    ", fr.filename.split("site-packages/")[-1], fr.lineno, fr.name)



def prof(model, label):
    with torch.no_grad():
        for _ in range(3):
            model(ids)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(5):
                model(ids)
            torch.cuda.synchronize()
    rows = []
    for e in p.key_averages():
        if e.device_time_total > 0:
            rows.append((e.device_time_total / 5, e.count / 5, e.key))
    rows.sort(reverse=True)
    tot = sum(r[0] for r in rows)
    print(f"== {label}: {tot / 1e3:.3f} ms of kernels per forward")
    for t, n, k in rows[:14]:
        print(f"  {t / 1e3:8.3f} ms  x{n:5.0f}  {k[:110]}")

prof(m, "bf16 eager")
prof(zq, "zq eager")
