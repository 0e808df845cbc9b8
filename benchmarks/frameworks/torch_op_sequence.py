"""The allocations one harness module makes in its forward and backward, in order (memray).

    python benchmarks/frameworks/torch_op_sequence.py linear 256 1024 512
    python benchmarks/frameworks/torch_op_sequence.py conv2d 128 3 32 32      # B Cin Cout H(=W), 3x3 same
    python benchmarks/frameworks/torch_op_sequence.py conv2d 128 32 32 16 32  # ... groups (here depthwise)
    python benchmarks/frameworks/torch_op_sequence.py conv2d 128 96 96 16 1 2  # ... groups, stride
    python benchmarks/frameworks/torch_op_sequence.py sign 256 1024
    python benchmarks/frameworks/torch_op_sequence.py batchnorm 128 32 32 32  # B C H W (or B C)
    python benchmarks/frameworks/torch_op_sequence.py --standard conv2d 2 512 512 4  # torch_model.py's

The proposed strategy's modules (torch_proposed.ProposedLayers, float16), or
with --standard the standard strategy's (torch_model.Layers, float32).

Prints every allocation and free of at least an eighth of the input's elements
in bytes, with the bytes live (above what was live before the step) and the
harness line that allocated it: what the engine's staged temporaries
(costmodel/engines/pytorch.yaml) say an op holds one stage after another.
One thread, two warm-up steps first (oneDNN's and MKL's caches are filled).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def module_and_input(kind: str, dims: list[int], standard: bool):
    """One module as the harness builds it (torch_model.Layers for the standard strategy), and its input."""
    import torch

    from torch_model import Layers
    from torch_proposed import ProposedLayers

    layers = Layers() if standard else ProposedLayers()
    if kind == "linear":
        batch, fan_in, units = dims
        module, x = layers.dense(fan_in, units, True), torch.randn(batch, fan_in)
    elif kind == "conv2d":
        batch, cin, cout, hw, groups, stride = (*dims, 1, 1, 1)[:6] if len(dims) == 4 else (*dims, 1)[:6]
        module = layers.conv(cin, cout, 3, stride, 1, True) if groups == 1 else \
            layers.grouped_conv(cin, cout, 3, stride, 1, True, groups)
        x = torch.randn(batch, cin, hw, hw)
    elif kind == "sign":
        module, x = layers.sign(), torch.randn(*dims)
    elif kind == "batchnorm":
        module, x = layers.batchnorm(dims[1], len(dims) == 4), torch.randn(*dims)
    else:
        raise SystemExit(f"unknown module '{kind}'; one of linear, conv2d, sign, batchnorm")
    return (module, x) if standard else (module.half(), x.half())


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    import torch

    from common import heap_events, traced

    torch.set_num_threads(1)
    standard = argv[0] == "--standard"
    argv = argv[1:] if standard else argv
    module, x = module_and_input(argv[0], [int(a) for a in argv[1:]], standard)
    x = x.requires_grad_()

    def step():
        y = module(x)
        y.backward(torch.ones_like(y))

    for _ in range(2):
        step()
    smallest = max(1, math.prod(x.shape) // 8)
    with traced(step, prefix="op-sequence-") as path:
        for rec, size, freed, now in heap_events(path):
            if size < smallest:
                continue
            if freed:
                print(f"  free  {size:>13,}  live {now:>13,}")
            else:
                frame = rec.stack_trace(max_stacks=1)
                where = f"{Path(frame[0][1]).name}:{frame[0][2]} {frame[0][0]}" if frame else "?"
                print(f"alloc {size:>13,}  live {now:>13,}  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
