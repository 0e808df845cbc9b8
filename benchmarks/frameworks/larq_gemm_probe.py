"""The scratch oneDNN's sgemm allocates inside TensorFlow's MatMul, per dense-layer product and shape (memray).

    python benchmarks/frameworks/larq_gemm_probe.py [--out FILE]

TensorFlow's MklMatMulOp (the CPU MatMul of a Keras/Larq dense layer) calls
oneDNN's sgemm (dnnl_sgemm -> extended_sgemm -> gemm_driver). On its
copy-based path gemm_kernel_driver mallocs a buffer for the packed blocks of
op(A) and op(B) and frees it when the call returns: a temporary live only
while the product runs (the nocopy, small-n and gemv paths allocate none).
For each case below (the three products of a dense layer: forward y = x W,
input gradient dX = dY W^T, weight gradient dW = x^T dY, at one batch, fan-in
and fan-out) this runs the MatMul once to warm up, then once under a memray
tracker with native stacks, one thread and the system allocator as
larq_measure.py sets them, and records the largest allocation made under
oneDNN's gemm driver (0: none). The `larq` engine's `gemm_workspace` rule
(costmodel/engines/larq.yaml) is checked against the recording by
tests/test_larq_engine.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "measurements" / "probes" / "larq-onednn-sgemm.json"

# (product, batch, inputs, outputs): shapes chosen to pass through each branch of oneDNN's path choice and
# of its blocking (depth k <= 128, <= 384, < 768, beyond; n below 48-deep small-k blocking, above 384; m
# beyond the 48-row unroll), and a batch of 1 or 2 (gemv, the small-n kernel), none of them a point of the
# recordings.
CASES = [
    ("input_grad", 16, 256, 10), ("input_grad", 32, 300, 64), ("input_grad", 100, 784, 200),
    ("input_grad", 128, 512, 600), ("input_grad", 48, 1000, 900), ("input_grad", 8, 512, 10),
    ("input_grad", 64, 150, 40), ("input_grad", 199, 1100, 1199), ("input_grad", 200, 512, 512),
    ("input_grad", 64, 96, 96), ("input_grad", 64, 1500, 64),
    ("forward", 64, 784, 512), ("forward", 256, 2048, 1024), ("forward", 16, 256, 10),
    ("weight_grad", 64, 256, 256), ("weight_grad", 64, 8192, 1024), ("weight_grad", 32, 2048, 1024),
    ("weight_grad", 500, 600, 400), ("weight_grad", 16, 4096, 2048),
    ("forward", 1, 512, 1000), ("input_grad", 1, 512, 1000), ("weight_grad", 1, 512, 1000),
    ("input_grad", 2, 512, 1000), ("forward", 64, 3, 1),
]


def _operands(tf, product: str, batch: int, inputs: int, outputs: int):
    """(a, b, transpose_a, transpose_b) of TensorFlow's row-major MatMul for one product of a dense layer."""
    x = tf.random.normal((batch, inputs))
    w = tf.random.normal((inputs, outputs))
    dy = tf.random.normal((batch, outputs))
    if product == "forward":
        return x, w, False, False
    if product == "input_grad":  # _MatMulGrad: MatMul(grad, b, transpose_b=True)
        return dy, w, False, True
    return x, dy, True, False  # weight_grad: MatMul(a, grad, transpose_a=True)


def gemm_scratch(path: Path) -> int:
    """The largest allocation in a memray capture made under oneDNN's gemm driver."""
    import memray

    largest = 0
    for rec in memray.FileReader(path).get_allocation_records():
        if rec.size <= largest:
            continue
        if any("gemm_kernel_driver" in f or "sgemm_nocopy_driver" in f or "gemm_driver<" in f
               for f, _a, _b in rec.native_stack_trace(max_stacks=12)):
            largest = rec.size
    return largest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    os.environ.update({"OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1"})
    import memray
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    matmul = tf.function(lambda a, b, ta, tb: tf.linalg.matmul(a, b, transpose_a=ta, transpose_b=tb))
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="larq-gemm-probe-"))
    for product, batch, inputs, outputs in CASES:
        a, b, ta, tb = _operands(tf, product, batch, inputs, outputs)
        matmul(a, b, ta, tb).numpy()  # trace and warm up: kernels and primitives exist before the capture
        capture = tmp / f"{product}-{batch}-{inputs}-{outputs}.bin"
        with memray.Tracker(capture, native_traces=True):
            matmul(a, b, ta, tb).numpy()
        rows.append({"product": product, "batch": batch, "inputs": inputs, "outputs": outputs,
                     "scratch_bytes": gemm_scratch(capture)})
        capture.unlink()
        print(rows[-1], flush=True)
    tmp.rmdir()
    record = {
        "schema": "bnncost.onednn-sgemm-probe/1",
        "what": "largest allocation under oneDNN's gemm driver during one TensorFlow MatMul of a dense layer's "
                "product (forward x W, input_grad dY W^T, weight_grad x^T dY); 0: none",
        "environment": {"threads": 1, "TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1"},
        "versions": {"tensorflow": tf.__version__, "memray": getattr(memray, "__version__", "")},
        "cases": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
