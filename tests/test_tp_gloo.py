"""Tensor parallelism across processes (torch.distributed, gloo backend, CPU reference kernels): a
quantized MLP split colwise (up) then rowwise (down) over 2 and 4 processes gives, on every rank, the
sum of its parts computed in one process (up to the all-reduce's float32 summation order) and the
unsplit MLP up to activation rounding; a gathered colwise layer gives the unsplit layer exactly."""

from __future__ import annotations

import os
import tempfile
import warnings

import pytest
import torch
import torch.distributed as dist

SCHEMES = ("w8a8", "fp8", "w4a8", "w4a8-fp")


def _mark_done(init: str, rank: int) -> None:
    """Record that `rank` passed every check (the file next to the rendezvous file)."""
    open(init.removeprefix("file://") + f".done{rank}", "w").close()


def _spawn(fn, world: int, d: str, *args) -> None:
    """Run fn(rank, world, init, *args) on `world` processes. Gloo's worker threads can abort a process
    while the interpreter shuts down, after the test's work (torch's own issue: pytorch/pytorch#179291);
    such an exit is accepted, with a warning, only when every rank recorded that it passed."""
    init = "file://" + os.path.join(d, "rendezvous")
    try:
        torch.multiprocessing.spawn(fn, args=(world, init, *args), nprocs=world, join=True)
    except torch.multiprocessing.ProcessExitedException as e:
        if not all(os.path.exists(os.path.join(d, f"rendezvous.done{r}")) for r in range(world)):
            raise
        warnings.warn(f"every rank passed, then a process died at exit: {e}", stacklevel=2)
TOL = {"w8a8": 0.02, "w4a8": 0.02, "fp8": 0.05, "w4a8-fp": 0.05}


def _mlp(scheme):
    from zqkernels.nn import QLinear

    torch.manual_seed(0)
    up, down = torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 512)
    return QLinear.from_linear(up, scheme).eval(), QLinear.from_linear(down, scheme).eval()


def _llama_float():
    """The float 2-layer Llama every test here converts (8 heads, 4 KV heads: whole heads on 2 or 4 ranks)."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=256, num_attention_heads=8, num_key_value_heads=4,
                                   intermediate_size=512, num_hidden_layers=2, attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(cfg).eval()


def _llama(scheme_config):
    import zqkernels

    m = _llama_float()
    zqkernels.quantize_(m, scheme_config)
    return m


def _block_worker(rank: int, world: int, init: str) -> None:
    import copy

    from zqkernels.nn import FP8Config, W4A8Config, W8A8Config
    from zqkernels.nn.tp import parallelize_blocks

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(3))
        # logits cosine against the unsplit model: the rowwise GEMMs quantize their K-slices per token
        for config, floor in ((W8A8Config(), 0.999), (FP8Config(), 0.995), (W4A8Config(group_size=64), 0.995)):
            m = _llama(config)
            with torch.no_grad():
                ref = m(ids).logits.float()
            tp = copy.deepcopy(m)
            assert parallelize_blocks(tp) == 2
            blk = tp.model.layers[0]
            assert (blk.heads, blk.kv_heads) == (8 // world, 4 // world)
            with torch.no_grad():
                out = tp(ids).logits.float()
                # decoding with a dynamic cache on the rank's heads: the same next tokens
                gen = tp.generate(ids[:1, :6], max_new_tokens=3, do_sample=False, attention_mask=torch.ones(1, 6, dtype=torch.long))
                gen_ref = m.generate(ids[:1, :6], max_new_tokens=3, do_sample=False, attention_mask=torch.ones(1, 6, dtype=torch.long))
            cos = float(torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0))
            assert cos > floor, (type(config).__name__, cos)
            assert gen.shape == gen_ref.shape
            outs = [torch.empty_like(out) for _ in range(world)]
            dist.all_gather(outs, out)
            assert all(torch.equal(o, out) for o in outs)  # every rank holds the same logits
        dist.barrier()  # every rank done before any tears its connections down
        _mark_done(init, rank)
    finally:
        dist.destroy_process_group()


def _plan_worker(rank: int, world: int, init: str, ckpt: str = "", *per_linear: str) -> None:
    import copy

    import zqkernels
    from zqkernels.nn.tp import ColwiseQLinear, RowwiseQLinear, parallelize_model

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        m = _llama_float()
        zqkernels.quantize_model(m, fused_blocks=False)  # per-Linear QLinears; lm_head stays float
        ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            ref = m(ids).logits.float()
        tp = copy.deepcopy(m)
        done = parallelize_model(tp)  # transformers' tp_plan
        assert done["model.layers.0.self_attn.q_proj"] == "colwise" and done["lm_head"] == "colwise_gather_output"
        assert done["model.embed_tokens"].startswith("replicated")
        assert isinstance(tp.model.layers[1].mlp.down_proj, RowwiseQLinear)
        assert isinstance(tp.model.layers[1].self_attn.k_proj, ColwiseQLinear)
        with torch.no_grad():
            out = tp(ids).logits.float()
        cos = float(torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0))
        assert cos > 0.999, cos
        if ckpt:  # every rank loads the fused checkpoint, then keeps its part
            loaded = zqkernels.load_quantized(ckpt)
            with torch.no_grad():
                ref2 = loaded(ids).logits.float()
            done = parallelize_model(loaded)
            assert any(v.startswith("fused block") for v in done.values())
            with torch.no_grad():
                out2 = loaded(ids).logits.float()
            cos2 = float(torch.nn.functional.cosine_similarity(out2.flatten(), ref2.flatten(), dim=0))
            assert cos2 > 0.999, cos2
            _check_streamed_load(ckpt, ids, out2, fused=True)
        for ckpt_per_linear in per_linear:  # per-Linear checkpoints: split by the plan while loading
            loaded = zqkernels.load_quantized(ckpt_per_linear)
            parallelize_model(loaded)
            with torch.no_grad():
                out3 = loaded(ids).logits.float()
            _check_streamed_load(ckpt_per_linear, ids, out3, fused=False)
        dist.barrier()  # every rank done before any tears its connections down
        _mark_done(init, rank)
    finally:
        dist.destroy_process_group()


def _check_streamed_load(ckpt: str, ids: torch.Tensor, want: torch.Tensor, fused: bool) -> None:
    """load_quantized(ckpt, tp=True) gives the logits of load_quantized + parallelize_model bit for
    bit, and splits each layer before it reads the next one's tensors."""
    import zqkernels
    from zqkernels.nn import checkpoint, tp_load

    events: list[str] = []
    pop, pop_rows, finish = checkpoint._Lazy.pop, checkpoint._Lazy.pop_rows, tp_load.TPStream.finish

    def spy_pop(self, k):
        events.append("read " + k)
        return pop(self, k)

    def spy_pop_rows(self, k, *a):
        events.append("read " + k)
        events.append("slice " + k)
        return pop_rows(self, k, *a)

    def spy_finish(self, take):
        if self.current is not None:
            events.append("split " + self.current)
        return finish(self, take)

    checkpoint._Lazy.pop, checkpoint._Lazy.pop_rows, tp_load.TPStream.finish = spy_pop, spy_pop_rows, spy_finish
    try:
        streamed = zqkernels.load_quantized(ckpt, tp=True)
    finally:
        checkpoint._Lazy.pop, checkpoint._Lazy.pop_rows, tp_load.TPStream.finish = pop, pop_rows, finish
    with torch.no_grad():
        got = streamed(ids).logits.float()
    assert torch.equal(got, want)
    layers = streamed.model.layers
    if fused:  # the blocks are linked as load_quantized links them (the next block's input handed over)
        assert layers[0]._next is layers[1]
    else:  # the colwise layers were read as this rank's rows only, the rowwise ones whole
        q = layers[0].self_attn.q_proj
        assert type(q).__name__ == "ColwiseQLinear" and q.shard.out_features == 256 // dist.get_world_size()
        assert type(layers[0].mlp.down_proj).__name__ == "RowwiseQLinear"
        sliced = [e for e in events if e.startswith("slice ")]
        assert any(e.startswith("slice model.layers.0.self_attn.q_proj.weight") for e in sliced), sliced[:4]
        assert not any("down_proj" in e or "o_proj" in e for e in sliced)
    split0 = events.index("split model.layers.0")
    assert not any(e.startswith("read model.layers.1.") for e in events[:split0]), events[: split0 + 1]
    assert any(e.startswith("read model.layers.1.") for e in events[split0:])


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo")
def test_per_linear_llama_by_transformers_tp_plan_and_a_loaded_checkpoint():
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    import zqkernels

    with tempfile.TemporaryDirectory() as d:
        m = _llama_float()
        zqkernels.quantize_model(m)  # fused W8A8 blocks
        ckpt = os.path.join(d, "ckpt")
        zqkernels.save_quantized(m, ckpt)
        m = _llama_float()
        zqkernels.quantize_model(m, fused_blocks=False)
        ckpt2 = os.path.join(d, "ckpt_per_linear")
        zqkernels.save_quantized(m, ckpt2)
        m = _llama_float()
        zqkernels.quantize_(m, zqkernels.nn.W4A8Config(group_size=64, fused_blocks=False))  # packed INT4 rows
        ckpt3 = os.path.join(d, "ckpt_per_linear_w4a8")
        zqkernels.save_quantized(m, ckpt3)
        _spawn(_plan_worker, 2, d, ckpt, ckpt2, ckpt3)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo")
@pytest.mark.parametrize("world", [2, 4])
def test_fused_llama_blocks_across_processes(world):
    pytest.importorskip("transformers")
    with tempfile.TemporaryDirectory() as d:
        _spawn(_block_worker, world, d)


def _worker(rank: int, world: int, init: str) -> None:
    from zqkernels.nn.tp import parallelize_qlinear, shard_qlinear

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(1)
        x = torch.randn(6, 512)
        act = torch.nn.functional.silu
        for scheme in SCHEMES:
            up, down = _mlp(scheme)
            tp_up = parallelize_qlinear(up, "colwise")
            tp_down = parallelize_qlinear(down, "rowwise", input_is_parallel=True)
            with torch.no_grad():
                y = tp_down(act(tp_up(x)))
                parts = sum(shard_qlinear(down, "rowwise", r, world)(act(shard_qlinear(up, "colwise", r, world)(x))).float()
                            for r in range(world))  # fmt: skip
                ref = down(act(up(x))).float()
            torch.testing.assert_close(y.float(), parts, rtol=1e-5, atol=1e-5, msg=lambda m: f"{scheme} rank {rank}: {m}")
            assert float((y.float() - ref).norm() / ref.norm()) < TOL[scheme], scheme
            gathered = parallelize_qlinear(up, "colwise", gather_output=True)
            with torch.no_grad():
                assert torch.equal(gathered(x), up(x)), scheme
            full_in = parallelize_qlinear(down, "rowwise")  # slices the whole input itself
            with torch.no_grad():
                h = act(up(x))
                torch.testing.assert_close(full_in(h), tp_down(act(tp_up(x))), rtol=1e-5, atol=1e-5)
        dist.barrier()  # every rank done before any tears its connections down
        _mark_done(init, rank)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo")
@pytest.mark.parametrize("world", [2, 4])
def test_mlp_across_processes(world):
    with tempfile.TemporaryDirectory() as d:
        _spawn(_worker, world, d)


def test_needs_an_initialised_process_group():
    from zqkernels.nn import QLinear
    from zqkernels.nn.tp import parallelize_qlinear

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        parallelize_qlinear(QLinear.from_linear(torch.nn.Linear(64, 64)), "colwise")
