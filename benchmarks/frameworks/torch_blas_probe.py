"""Probe MKL's sgemm packing buffers inside PyTorch: the buffer each gemm shape allocates, from an empty pool.

    python benchmarks/frameworks/torch_blas_probe.py [--out measurements/probes/torch-mkl-sgemm.json]
    python benchmarks/frameworks/torch_blas_probe.py --depths 1 2 --out .../torch-mkl-sgemm-shallow.json
    python benchmarks/frameworks/torch_blas_probe.py --min-bytes 0 --out .../torch-mkl-sgemm-amd.json

MKL picks its sgemm code by CPU vendor as well as by ISA: on Intel AVX-512 CPUs it runs
mkl_blas_avx512_* kernels, on AMD ones (even with AVX-512) its generic mkl_blas_def_* code, whose
buffers differ; each record names the CPU and the code path (the mkl_blas_*_getbufs frame) it saw.

Every float32 matmul on CPU is MKL's sgemm. Each probe empties MKL's buffer pool
(mkl_serv_free_buffers, exported by libtorch_cpu), marks memray's stream, then
runs one torch.mm whose column-major sgemm has the given transposes and m, n, k:
  TN: mm(x[n, k], W[m, k].t())   (F.linear's forward)
  NN: mm(dY[n, k], W[k, m])      (a linear layer's dX)
  NT: mm(P[k, n].t(), Q[k, m])   (a linear layer's dW)
The allocations made by mkl_serv_allocate in it (memray native stacks) are the
packing buffers; the grid is 3 transposes x 4 depths x 17 x 17 shapes. The
`pytorch` engine's `blas_buffers` rule (costmodel/engines/pytorch.yaml) is read
off this grid; tests/test_engine_pytorch.py checks the rule against it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SIZES = (8, 16, 32, 48, 64, 96, 128, 144, 160, 176, 192, 224, 256, 320, 384, 512, 1024)
DEPTHS = (10, 64, 256, 1024)
MARK = 3_141_593  # an odd malloc size between probes


def _operands(torch, trans: str, m: int, n: int, k: int):
    if trans == "TN":
        x, w = torch.randn(n, k), torch.randn(m, k)
        return lambda: torch.mm(x, w.t())
    if trans == "NN":
        a, b = torch.randn(n, k), torch.randn(k, m)
        return lambda: torch.mm(a, b)
    p, q = torch.randn(k, n).t(), torch.randn(k, m)
    return lambda: torch.mm(p, q)


def probe(cases: list[tuple[str, int, int, int]], paths: set[str]) -> list[list[int]]:
    """For each (trans, m, n, k): the sizes of the MKL buffers its gemm allocates from an empty pool.

    Adds to `paths` the MKL routines that asked for them (the frame below mkl_serv_allocate)."""
    import memray
    import numpy as np
    import torch

    torch.set_num_threads(1)
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    torch.mm(torch.randn(300, 300), torch.randn(300, 300))  # MKL's per-thread state, once
    calls = [_operands(torch, *c) for c in cases]
    frees = {int(getattr(memray.AllocatorType, n)) for n in ("FREE", "MUNMAP", "PYMALLOC_FREE")}
    path = Path(tempfile.mkdtemp(prefix="blas-probe-")) / "run.bin"
    with memray.Tracker(path, native_traces=True):
        for call in calls:
            lib.mkl_serv_free_buffers()
            marker = np.empty(MARK, dtype=np.uint8)
            del marker
            call()
    out: list[list[int]] = []
    for rec in memray.FileReader(path).get_allocation_records():
        if int(rec.allocator) in frees:
            continue
        if rec.size == MARK:
            out.append([])
        elif out:
            frames = [f[0] for f in rec.native_stack_trace(max_stacks=12)]
            if "mkl_serv_allocate" in frames:
                out[-1].append(rec.size)
                paths.add(frames[frames.index("mkl_serv_allocate") + 1])
    path.unlink()
    path.parent.rmdir()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "measurements" / "probes" / "torch-mkl-sgemm.json"))
    ap.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS), help="the k of the grid")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="the m and n of the grid")
    ap.add_argument("--min-bytes", type=int, default=100_000,
                    help="keep buffers larger than this (100 kB: the packing buffers, not MKL's bookkeeping)")
    args = ap.parse_args(argv)
    import torch
    from common import machine

    cases = [(t, m, n, k) for t in ("TN", "NN", "NT") for k in args.depths for m in args.sizes for n in args.sizes]
    rows, paths = [], set()
    chunk_size = len(args.sizes) ** 2
    for i in range(0, len(cases), chunk_size):  # one tracker per depth and transposes
        chunk = cases[i:i + chunk_size]
        rows += [{"trans": t, "m": m, "n": n, "k": k, "buffers": [b for b in bufs if b > args.min_bytes]}
                 for (t, m, n, k), bufs in zip(chunk, probe(chunk, paths))]
    doc = {"schema": "bnncost.blas-probe/1", "versions": {"torch": torch.__version__},
           "mkl": torch.__config__.show().split("Math Kernel Library Version ")[1].split("-")[0],
           "machine": machine(), "mkl_routines": sorted(paths),
           "note": f"buffers: sizes of MKL's allocations (> {args.min_bytes:,} B) one gemm made from an empty pool",
           "probes": rows}
    Path(args.out).write_text(json.dumps(doc, indent=0) + "\n")
    print(f"{args.out}: {len(rows)} gemms, {sum(1 for r in rows if r['buffers'])} on the packing path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
