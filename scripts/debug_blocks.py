"""Debug: eager vs eager vs CUDA graph for a converted BERT, with hand-over accounting."""
import torch, transformers, zqkernels
from zqkernels.nn import blocks

taken = []
orig = blocks.QuantizedBlock._take_handoff
def spy(self, x):
    r = orig(self, x)
    taken.append(r is not None)
    return r
blocks.QuantizedBlock._take_handoff = spy
cfg = transformers.BertConfig(num_hidden_layers=4, attn_implementation="sdpa")
m = transformers.BertModel(cfg).to("cuda", torch.bfloat16).eval()
m = zqkernels.quantize_model(m)
ids = torch.randint(0, 1000, (8, 128), device="cuda")
with torch.no_grad():
    taken.clear(); e1 = m(ids).last_hidden_state; print("eager1 taken", taken)
    taken.clear(); e2 = m(ids).last_hidden_state; print("eager2 taken", taken, "equal", torch.equal(e1, e2))
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            taken.clear(); m(ids); print("side", taken)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    taken.clear()
    with torch.cuda.graph(g, stream=s):
        out = m(ids).last_hidden_state
    print("capture taken", taken)
    g.replay(); torch.cuda.synchronize()
    print("graph==eager", torch.equal(out, e1), float((out.float()-e1.float()).abs().max()))
    import os; os.environ["ZQKERNELS_PDL"]="0"
