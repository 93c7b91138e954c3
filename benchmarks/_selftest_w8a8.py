"""CPU self-tests of the W8A8 benchmark harness (``python benchmarks/bench_w8a8.py --selftest``):
shape parsing, the L2 rotation plan, the random operand pools, the references, the tables and the
JSON with fake timings, then the whole measuring pipeline on CPU tensors with a pure-torch stand-in
for zqkernels (no GPU and no built zqkernels needed)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MAX_COPIES, ROTATE_MIN_BYTES, git_commit, gpu_slug, rotate_bytes_for, rotation_copies  # noqa: E402
from bench_w8a8 import (  # noqa: E402
    BIG,
    CHECK_TOL,
    COLUMNS,
    FLOOR_MAX_M,
    METHOD_NOTES,
    _calls,
    _check_ok,
    _empty_row,
    _Pool,
    _ratio,
    _run_impl,
    default_json_path,
    format_configs,
    format_header,
    format_notes,
    format_quant,
    format_row,
    format_table_header,
    input_bytes,
    parse_shapes,
    problems,
    ref_gemm,
    rel_err,
    row_ok,
    row_warnings,
    torch_quant_per_token,
    write_json,
)


def _fake_row(M: int, N: int, K: int, seed: int) -> dict[str, Any]:
    import random

    rnd = random.Random(seed)
    row = _empty_row(M, N, K)
    base = 2.0 * M * N * K / 700e12 * 1e6 + 8.0
    for c in COLUMNS:
        row[f"{c}_us"] = base * rnd.uniform(0.5, 2.5)
        row["method"][c] = "graph"
    if M <= 16:
        row["int_mm_us"] = row["w8a8_torch_us"] = None
        row["errors"]["int_mm"] = "RuntimeError: self.size(0) needs to be greater than 16, but got 16"
        row["errors"]["w8a8_torch"] = row["errors"]["int_mm"]
    row["gemm_rel_err"], row["linear_rel_err"] = 2.1e-3, 2.4e-3
    flops = 2.0 * M * N * K
    for c in COLUMNS:
        us = row[f"{c}_us"]
        row[f"{c}_tops"] = flops / (us * 1e-6) / 1e12 if us else None
    row["speedup_vs_int_mm"] = _ratio(row["int_mm_us"], row["zq_gemm_us"])
    row["speedup_vs_fp8row"] = _ratio(row["fp8row_us"], row["zq_gemm_us"])
    row["linear_speedup_vs_bf16"] = _ratio(row["bf16_us"], row["zq_linear_us"])
    if M <= FLOOR_MAX_M:
        row["floor_us"] = N * K / 3.0e12 * 1e6
        row["gemm_over_floor"] = row["zq_gemm_us"] / row["floor_us"]
    return row


def selftest_format() -> None:
    """Table / JSON formatting with fake timings, shape parsing, rotation plan on CPU tensors."""
    import tempfile

    # Grid and shape parsing.
    full, short = problems(False), problems(True)
    assert len(full) == 3 * 11 + 1 and full[0] == BIG, len(full)
    assert len(short) == 2 * 4 + 1 and (16, 22016, 4096) in short
    assert parse_shapes(["128x4096x4096", "8,16,32", (1, 2, 3)], [1]) == [
        (128, 4096, 4096),
        (8, 16, 32),
        (1, 2, 3),
    ]
    assert parse_shapes(["4096x11008"], [1, 64]) == [(1, 4096, 11008), (64, 4096, 11008)]
    assert problems(False, ["4096x4096"], ms=[3]) == [(3, 4096, 4096)]
    for bad in ("12", "1x2x3x4", "ax3", "0x4x4"):
        try:
            parse_shapes([bad], [1])
        except ValueError:
            pass
        else:
            raise AssertionError(f"parse_shapes accepted {bad!r}")

    # Rotation plan: every column's cycled set exceeds the target (unless capped), never < 2 copies.
    rb = rotate_bytes_for(50 * 2**20)
    assert rb == int(2.4 * 50 * 2**20) and rb >= ROTATE_MIN_BYTES
    for M, N, K in full:
        for c in COLUMNS:
            b = input_bytes(c, M, N, K)
            n = rotation_copies(b, rb)
            assert n >= 2 and (n * b >= rb or n == MAX_COPIES), (c, M, N, K, n, b)
            assert (n - 1) * b < rb or n == 2, (c, M, N, K, n)  # no more copies than needed
    assert input_bytes("zq_gemm", 1, 4096, 4096) == 4096 + 4096 * 4096 + 4 + 4 * 4096
    assert input_bytes("bf16", 16, 4096, 4096) == 2 * 16 * 4096 + 2 * 4096 * 4096
    assert rotation_copies(16 * 2**20, rb) == 8 and rotation_copies(10**9, rb) == 2
    assert rotation_copies(1, rb) == MAX_COPIES

    # Pools on CPU: independent allocations, distinct random data, right dtypes and ranges.
    pool = _Pool(16, 256, 128, torch.device("cpu"), seed=1)
    ws = pool.get("wq", 3)
    assert len({w.data_ptr() for w in ws}) == 3 and not torch.equal(ws[0], ws[1])
    assert pool.get("wq", 2)[0] is ws[0] and len(pool.copies["wq"]) == 3  # shared, extended on demand
    allq = torch.cat([w.flatten() for w in ws]).int()
    assert allq.min() >= -127 and allq.max() <= 127 and (allq != 0).float().mean() > 0.9
    s = pool.get("sw", 2)[0]
    assert s.dtype == torch.float32 and s.min() >= 0.5e-2 and s.max() <= 1.5e-2
    assert pool.get("x8", 1)[0].dtype == torch.float8_e4m3fn and pool.get("sa", 1)[0].shape == (16, 1)
    assert pool.get("xb", 1)[0].dtype == torch.bfloat16 and pool.get("xb", 1)[0].float().std() > 0.5
    # The calls of a cycle bind different copies.
    calls = _calls("int_mm", pool, 3, None)
    outs = [c() for c in calls]
    assert outs[0].dtype == torch.int32 and not torch.equal(outs[0], outs[1])
    assert pool.nbytes() > 0

    # Reference and the torch quantization (docs/SCALES.md): exact on a hand-made case.
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], dtype=torch.bfloat16)
    q, sx = torch_quant_per_token(x)
    assert q.tolist() == [[64, -127, 32], [0, 0, 0]], q.tolist()  # 127/2 * 1 = 63.5 -> 64 (half to even)
    assert sx.flatten().tolist() == [float(torch.tensor(2.0) / 127.0), 0.0]  # fp32 division
    r = ref_gemm(
        torch.tensor([[1, 2]], dtype=torch.int8),
        torch.tensor([[3, 4], [5, 6]], dtype=torch.int8),
        torch.tensor([0.5]),
        torch.tensor([1.0, 2.0]),
    )
    assert r.tolist() == [[5.5, 17.0]]
    assert rel_err(r.float(), r) == 0.0 and not _check_ok(float("nan")) and not _check_ok(None)

    # Table: fake rows, a '-' peer, an ERR of ours, a failed check.
    rows = [_fake_row(M, N, K, i) for i, (M, N, K) in enumerate(full)]
    rows[3]["linear_rel_err"] = 0.31
    rows[5]["zq_linear_us"] = None
    rows[5]["errors"]["zq_linear"] = "RuntimeError: int8_gemm: K must be a multiple of 16, got 11008"
    header = {
        "zqkernels_version": "0.1.0",
        "commit": "503d244",
        "torch": torch.__version__,
        "cuda": "13.0",
        "device": "NVIDIA H100 80GB HBM3",
        "date": "2025-01-01T00:00:00Z",
        "copy_bw_Bps": 3.01e12,
        "rotate_bytes": rb,
        "method": METHOD_NOTES,
    }
    lines = format_header(header) + format_table_header() + [format_row(r) for r in rows]
    table = format_table_header() + [format_row(r) for r in rows]
    for ln in table:
        # Every '|' of every line at the same column: the groups line up.
        assert [i for i, ch in enumerate(ln) if ch == "|"] == [
            i for i, ch in enumerate(table[0]) if ch == "|"
        ], ln
    assert "ERR" in format_row(rows[5]) and "!" in format_row(rows[3])
    assert format_row(rows[1]).split("|")[1].split()[3] == "-"  # int_mm at M=1
    warn = [w for r in rows for w in row_warnings(r)]
    assert len(warn) == 2 and all(w.startswith("WARNING") for w in warn), warn
    assert not row_ok(rows[3]) and not row_ok(rows[5]) and row_ok(rows[0])
    notes = format_notes(rows)
    assert len(notes) == 3 and "int_mm on 1x4096x4096" in notes[1], notes

    # Tile table (recipe -> tile names, as in zqkernels.info()["gemm_tiles"]).
    cfg_lists = {
        "sm90_int8_rowwise": ["128x128x128_c2x1_pp", "swap_64x16x256_pp"],
        "sm80_int8": ["128x128x64_s3"],
    }
    for i, r in enumerate(rows[:4]):
        r["configs"] = {
            "sm90_int8_rowwise/128x128x128_c2x1_pp": {"index": 0, "us": 10.0 + i, "rel_err": 2e-3},
            "sm90_int8_rowwise/swap_64x16x256_pp": {"index": 1, "us": 9.0 + 2 * i, "rel_err": 2e-3},
            "sm80_int8/128x128x64_s3": {"index": 2, "us": None, "error": "RuntimeError: x"},
        }
    rows[0]["configs"]["sm90_int8_rowwise/128x128x128_c2x1_pp"]["rel_err"] = 0.5
    cl = format_configs(rows[:4], cfg_lists)
    assert "#2 = sm80_int8/128x128x64_s3" in cl[4], cl
    assert "9.0*" in cl[-4] and "10.0!" in cl[-4] and cl[-4].split("|")[-1].split()[0] == "#1", cl
    assert cl[-1].split("|")[-1].split()[0] == "#0" and cl[-1].split("|")[-2].split()[-1] == "-", cl
    auto_over_best = rows[3]["zq_gemm_us"] / 13.0
    assert cl[-1].rstrip().endswith(f"{auto_over_best:.2f}"), cl

    # Quant table.
    qrows = [
        {
            "M": 8192,
            "K": 4096,
            "bytes": 3 * 8192 * 4096 + 4 * 8192,
            "zq_us": 35.0,
            "zq_GBps": 2877.0,
            "zq_frac_copy": 0.956,
            "torch_us": None,
            "torch_GBps": None,
            "torch_frac_copy": None,
        }
    ]
    ql = format_quant(qrows, 3.01e12)
    assert "96%" in ql[-1] and ql[-1].rstrip().endswith("-"), ql

    # JSON round trip (NaN -> null, atomic write).
    rows[0]["zq_gemm_spread"] = float("nan")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "sub" / "x.json"
        write_json(p, header, rows, qrows)
        doc = json.loads(p.read_text())
        assert doc["rows"][0]["zq_gemm_spread"] is None and len(doc["rows"]) == len(rows)
        assert doc["header"]["commit"] == "503d244" and doc["quant"][0]["M"] == 8192

    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3" and gpu_slug("") == "unknown-gpu"
    assert default_json_path("/tmp/r", "NVIDIA H100 80GB HBM3", "abc1234") == Path(
        "/tmp/r/w8a8_h100-80gb-hbm3_abc1234.json"
    )
    c = git_commit()
    assert c == "unknown" or re.fullmatch(r"[0-9a-f]{4,40}(-dirty)?", c), c

    print("\n".join(lines + warn + notes + cl + ql))
    print("selftest_format: ok")


class _FakeZq:
    """Pure-torch stand-in for the zqkernels API (CPU self-test of the pipeline only)."""

    __version__ = "0.0.0-fake"

    @staticmethod
    def info() -> dict[str, Any]:
        return {
            "version": "0.0.0-fake",
            "gpu": None,
            "compiled_archs": [],
            "gemm_tiles": {"sm90_fake": ["good", "broken"], "sm80_fake": ["refuses"], "empty": []},
        }

    @staticmethod
    def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, s = torch_quant_per_token(x)
        return q, s.flatten()

    @staticmethod
    def int8_gemm(xq, wq, sx, sw, bias=None, out_dtype=torch.bfloat16, *, backend="auto", tile=None):
        if tile == "refuses":
            raise RuntimeError("int8_gemm: tile 'refuses' does not take this shape")
        y = (xq.float() @ wq.float().t()) * sx.float().view(-1, 1) * sw.float().view(1, -1)
        if tile == "broken":
            y = y * 1.5  # a wrong tile: must be flagged by the check
        return y.to(out_dtype)


def selftest_cpu() -> None:
    """The whole measuring pipeline on CPU tensors with _FakeZq and tiny shapes."""
    import tempfile

    lines: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny CPU ops: thread-pool wake-ups would dominate the run time
    try:
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "r.json"
            _header, rows, qrows = _run_impl(
                [(1, 256, 128), (32, 256, 128), (64, 128, 256)],
                zq=_FakeZq,
                device=torch.device("cpu"),
                configs=True,
                eager_above=None,
                target_s=0.002,
                seed=0,
                rotate_bytes=2**18,
                copy_bytes=2**20,
                quant_shapes=[(64, 256)],
                out_json=out,
                print_fn=lines.append,
                settings={"selftest": True},
            )
            doc = json.loads(out.read_text())
    finally:
        torch.set_num_threads(threads)
    print("\n".join(lines))
    assert len(rows) == 3 and len(doc["rows"]) == 3 and doc["header"]["device"] == "cpu"
    for r in rows:
        for c in ("zq_gemm", "zq_linear", "bf16", "fp8row"):
            if c == "fp8row" and "only supports per-tensor scaling for CPU" in str(r["errors"].get(c, "")):
                continue  # older torch CPU builds have no row-wise _scaled_mm: recorded as an error cell
            assert r[f"{c}_us"] is not None and r[f"{c}_us"] > 0, (c, r["errors"])
        assert r["gemm_rel_err"] < CHECK_TOL and r["linear_rel_err"] < CHECK_TOL, r
        cfg = r["configs"]
        assert set(cfg) == {"sm90_fake/good", "sm90_fake/broken", "sm80_fake/refuses"}, cfg
        assert cfg["sm90_fake/good"]["us"] > 0 and cfg["sm80_fake/refuses"]["us"] is None
        assert _check_ok(cfg["sm90_fake/good"]["rel_err"]) and cfg["sm80_fake/refuses"]["index"] == 2
        assert not _check_ok(cfg["sm90_fake/broken"]["rel_err"]) and not row_ok(r)
        n = r["n_copies"]["zq_gemm"]
        assert n * input_bytes("zq_gemm", r["M"], r["N"], r["K"]) >= 2**18 or n == MAX_COPIES
    assert rows[0]["floor_us"] > 0 and qrows[0]["zq_us"] > 0 and qrows[0]["torch_us"] > 0
    assert any("config sm90_fake/broken" in ln for ln in lines)
    assert any(ln.startswith("  #1 = sm90_fake/broken") for ln in lines), lines
    assert doc["header"]["n_failed_rows"] == 3
    print("selftest_cpu: ok")


if __name__ == "__main__":
    selftest_format()
    selftest_cpu()
