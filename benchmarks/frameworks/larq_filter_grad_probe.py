"""The buffers TensorFlow's oneDNN Conv2DBackpropFilter allocates, in order (memray, one op alone).

    python benchmarks/frameworks/larq_filter_grad_probe.py B H CIN COUT STRIDE
    python benchmarks/frameworks/larq_filter_grad_probe.py 16 16 64 64 1

Runs tf.raw_ops.Conv2DBackpropFilter (3x3, 'SAME') in a tf.function the way the
Larq harness runs TensorFlow (oneDNN on the system allocator, one thread), three
times to warm up, then once under memray, and prints every allocation of at least
3 KB made inside it with the bytes live after it: the HWIO dW it returns and the
dW in oneDNN's blocked layout it reorders from (the `larq` engine's
blocked_weight_grad temporaries, costmodel/engines/larq.yaml).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.update({"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1", "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"})


def main(argv: list[str]) -> int:
    import tensorflow as tf

    from common import heap_events, traced

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    batch, hw, cin, cout, stride = (int(a) for a in argv)
    x = tf.random.normal((batch, hw, hw, cin))
    dy = tf.random.normal((batch, hw // stride, hw // stride, cout))

    @tf.function
    def filter_grad(x, dy):
        return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=[3, 3, cin, cout], out_backprop=dy,
                                               strides=[1, stride, stride, 1], padding="SAME")

    for _ in range(3):
        filter_grad(x, dy)
    peak = 0
    with traced(lambda: filter_grad(x, dy), prefix="filter-grad-") as path:
        for _, size, freed, now in heap_events(path):
            peak = max(peak, now)
            if not freed and size >= 3000:
                print(f"alloc {size:>11,}  live {now:>11,}")
    print(f"dW (HWIO) {9 * cin * cout * 4:,} B; peak inside the op {peak:,} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
