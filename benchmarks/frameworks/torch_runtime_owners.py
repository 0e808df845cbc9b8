"""What PyTorch's runtime holds after warm-up, by the oneDNN primitive or library routine that allocated it.

    python benchmarks/frameworks/torch_runtime_owners.py MODEL --batch B [--out FILE.json]

One process, one thread: build MODEL (zoo name or YAML) as torch_model.py does, run
three standard-strategy training steps under memray with native stacks, and group
every allocation still live afterwards by its owner: the innermost oneDNN class in
its stack whose name says what it is (a convolution direction, a reorder, the
sgemm driver or its small-n kernels), or MKL's sgemm buffers (mkl_serv_allocate).
Besides, the bytes of Xbyak code buffers
(jit_generator_t, 256 KiB per JIT kernel), and per owner how many it holds. The model's tensors (parameters,
Adam state, the batch) are live too and fall under `-`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

KERNEL_CODE_BYTES = 262_144  # Xbyak's code buffer, oneDNN's maximum code size: one per JIT kernel
MKL_BUFFERS = "mkl_serv_allocate"  # MKL's sgemm packing buffers (kept in its pool)
OWNER = re.compile(r"dnnl::impl::cpu::(?:x64::)?([a-z0-9_]*(?:convolution|reorder|gemm|smalln|pool|batch_norm|matmul"
                   r"|inner_product)[a-z0-9_]*)")


def owner_of(frames: list[str]) -> str:
    if any("mkl_serv_allocate" in name for name in frames):
        return MKL_BUFFERS
    for name in frames:
        m = OWNER.search(name)
        if m and "gemm_info_t" not in m.group(1):
            return m.group(1)
    return "-"


def owners(model_ref: str, batch: int) -> dict:
    import memray
    import torch

    torch.set_num_threads(1)
    import torch_measure
    from torch_model import Layers, StandardTrainer, build_torch_model, classes, input_shape

    from bnncost.layers.graph import graph_of

    graph = graph_of(model_ref)
    torch_measure._finish_import(torch, "standard")
    tmp = Path(tempfile.mkdtemp(prefix="torch-owners-"))
    kept = []
    with memray.Tracker(tmp / "run.bin", native_traces=True):
        model = build_torch_model(graph, Layers())
        trainer = StandardTrainer(model)
        x = torch.randn((batch, *input_shape(graph)))
        y = torch.randint(0, classes(graph), (batch,))
        for _ in range(3):
            trainer.zero_grad()
            trainer.step(x, y)
        kept.append((model, trainer, x, y))
    by_owner: dict[str, list[int]] = {}
    code = 0
    for rec in memray.FileReader(tmp / "run.bin").get_leaked_allocation_records(merge_threads=True):
        frames = [f[0] for f in rec.native_stack_trace(max_stacks=40)]
        entry = by_owner.setdefault(owner_of(frames), [0, 0, 0])
        entry[0] += rec.size
        entry[1] += 1
        if any("jit_generator_t::jit_generator_t" in f for f in frames[:6]):
            code += rec.size
            if rec.size == rec.n_allocations * KERNEL_CODE_BYTES:  # code buffers (memray merges equal stacks)
                entry[2] += rec.n_allocations
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    from common import machine

    return {"model": graph.model.name, "batch": batch, "torch": torch.__version__, "memray": memray.__version__,
            **machine(), "jit_code_bytes": code,
            "owners": {k: {"bytes": v[0], "allocations": v[1], "jit_kernels": v[2]}
                       for k, v in sorted(by_owner.items(), key=lambda kv: -kv[1][0])}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.batch < 1:
        print(f"--batch must be a positive integer, got {args.batch}", file=sys.stderr)
        return 2
    rec = owners(args.model, args.batch)
    text = json.dumps(rec, indent=1) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text if not args.out else f"{args.out}: {len(rec['owners'])} owners, JIT code {rec['jit_code_bytes']:,} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
