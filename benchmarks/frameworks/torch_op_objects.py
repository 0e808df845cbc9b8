"""What one oneDNN convolution op holds besides tensor storage while it runs: its descriptors and context.

    python benchmarks/frameworks/torch_op_objects.py            # every configuration, recorded, then the table
    python benchmarks/frameworks/torch_op_objects.py --table    # the table of the recorded ones

PyTorch's float32 convolution on CPU is oneDNN through ideep. Every call
builds a primitive descriptor (oneDNN tries its implementations in order and
keeps the first that accepts: the descriptor holds the op's memory descriptors,
its kernel configuration, the scratchpad registry), a clone of the operation
descriptor, ideep's tensor wrappers and an execution context; the primitive
itself comes from oneDNN's cache and its JIT code stays (the engine's
jit_conv_kernels). The per-call objects are freed when the op returns, so they
are a temporary of every conv op, of fixed size whatever the tensors'.

Each configuration runs in a fresh process, one thread: the op is called
twice (primitive cached, code generated), then once between markers under
memray with native stacks. At the op's peak (its storage and objects
together), the allocations made inside the op and live there are split into
tensor storage (a stack through c10's CPU allocator) and objects (the rest).
The ops are the ones the harnesses run: F.conv2d (forward),
aten::convolution_backward with output_mask (True, False, False) (backward-data:
torch.nn.grad.conv2d_input), (False, True, False) (backward-weights:
conv2d_weight, and a first conv's ConvolutionBackward0) and (True, True, False)
(ConvolutionBackward0 of any other conv: both, one after the other).
Recorded in measurements/probes/torch-op-objects/; the `pytorch` engine's
onednn_op_objects temporaries take the median over the configurations.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
OUT = HERE / "measurements" / "probes" / "torch-op-objects"
# name -> (batch, in channels, out channels, kernel, stride, groups, input height = width): one per oneDNN
# implementation the recorded models run (a 3-channel stem, plain 3x3 convs, a strided one whose backward-data
# is brgemm, a 1x1 from 16 samples on, depthwise, grouped with 8 and with 4 channels per group), and one
# 3x3 at three sizes to show the objects do not follow the tensors.
CONFIGS = {
    "stem-3x3-s2": (16, 3, 16, 3, 2, 1, 16),
    "conv-3x3-64": (64, 64, 64, 3, 1, 1, 8),
    "conv-3x3-128x256": (16, 128, 256, 3, 1, 1, 8),
    "conv-3x3-128-b128": (128, 128, 128, 3, 1, 1, 8),
    "conv-3x3-s2": (16, 64, 128, 3, 2, 1, 8),
    "pointwise-16x32": (16, 16, 32, 1, 1, 1, 4),
    "depthwise-3x3": (16, 16, 16, 3, 1, 16, 8),
    "grouped-1x1-g4": (16, 16, 16, 1, 1, 4, 8),
    "grouped-3x3-s2-g2": (16, 16, 32, 3, 2, 2, 8),
}
# op -> aten::convolution_backward's output_mask (None: the forward)
OPS = {"forward": None, "input_grad": (True, False, False), "weight_grad": (False, True, False),
       "input_and_weight_grad": (True, True, False)}


def measure(name: str) -> dict:
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads
    os.environ["MKL_NUM_THREADS"] = "1"
    import memray
    import torch
    import torch.nn.functional as F
    from common import machine, mark, replay
    from torch_graph_objects import tensor_storage_bytes

    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch, cin, cout, k, stride, groups, size = CONFIGS[name]
    pad = k // 2
    x = torch.randn(batch, cin, size, size)
    w = torch.randn(cout, cin // groups, k, k)
    g = torch.randn_like(F.conv2d(x, w, None, stride, pad, 1, groups))

    def call(mask):
        if mask is None:
            return F.conv2d(x, w, None, stride, pad, 1, groups)
        return torch.ops.aten.convolution_backward(g, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0],
                                                   groups, mask)

    ops = {}
    for op, mask in OPS.items():
        call(mask), call(mask)
        path = Path(tempfile.mkdtemp(prefix="torch-op-objects-")) / "op.bin"
        with memray.Tracker(path, native_traces=True):
            mark("step_start")  # the op is the measured "step"
            result = call(mask)
            del result
            mark("step_end")
        walked = replay(path, keep_at_peak=True)
        step = walked["steps"][0]
        peak = step["peak"] - step["baseline"]
        storage = tensor_storage_bytes(walked["at_peak"])
        ops[op] = {"peak_bytes": peak, "tensor_storage_bytes": storage, "objects_bytes": peak - storage}
        path.unlink()
        path.parent.rmdir()
    return {"configuration": name, "batch": batch, "in_channels": cin, "out_channels": cout, "kernel": k,
            "stride": stride, "groups": groups, "input_size": size, "threads": 1,
            "versions": {"torch": torch.__version__, "memray": memray.__version__}, **machine(), "ops": ops}


def table() -> dict[str, list[int]]:
    """objects_bytes of every recorded configuration, per op."""
    recs = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    return {op: [r["ops"][op]["objects_bytes"] for r in recs] for op in OPS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), help="measure one configuration and print its JSON")
    p.add_argument("--table", action="store_true", help="print the table of the recorded configurations")
    args = p.parse_args(argv)
    if args.config:
        print(json.dumps(measure(args.config), indent=1))
        return 0
    if not args.table:
        OUT.mkdir(parents=True, exist_ok=True)
        for name in CONFIGS:
            done = subprocess.run([sys.executable, __file__, "--config", name], capture_output=True, text=True,
                                  check=True)
            (OUT / f"{name}.json").write_text(done.stdout)
    recs = {p.stem: json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))}
    print("| configuration | " + " | ".join(OPS) + " |\n|---|" + "---:|" * len(OPS))
    for name, rec in recs.items():
        print(f"| {name} | " + " | ".join(f"{rec['ops'][op]['objects_bytes']:,}" for op in OPS) + " |")
    print("| median | " + " | ".join(f"{statistics.median(v):,.0f}" for v in table().values()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
