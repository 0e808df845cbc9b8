"""What TensorFlow/oneDNN holds before a Larq step, by TensorFlow kernel and oneDNN function (memray, native stacks).

    python benchmarks/frameworks/larq_jit_attribution.py MODEL --batch B [--out DIR]

Runs larq_measure.py's measurement with `--attribute baseline` and groups the
bytes live when the first measured step starts (allocated since the import)
by the innermost TensorFlow kernel and the innermost oneDNN (`dnnl::`)
function of each allocation's stack, so that oneDNN's JIT code
(`jit_generator`, one code buffer per generated kernel) shows apart from the
graph's objects. It also lists the tensors the executor's ConstantOp kernels
hold (graph constants, e.g. the zeros Grappler folds from Larq's ste_sign
gradient). The larq engine's `jit_*` and `constants` rules cite these
records (measurements/attribution/*-jit.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import larq_measure  # noqa: E402

TF_KERNEL_OF = larq_measure._kernel_of


def kernel_and_onednn(stack) -> str:
    """'<TensorFlow kernel> | <innermost oneDNN function>' of a native stack."""
    tf_kernel = TF_KERNEL_OF(stack).split("<")[0]
    onednn = next((func.split("(")[0][:110] for func, _f, _l in stack if "dnnl" in func), None)
    return f"{tf_kernel} | {onednn}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--out", type=Path, default=HERE / "measurements" / "attribution")
    args = p.parse_args(argv)
    constants: list[int] = []
    calls = [0]
    by_kernel = larq_measure._by_kernel

    def grouped(records):  # first call: the step's peak; second: the baseline
        calls[0] += 1
        if calls[0] == 2:
            for rec in records:
                if any("ConstantOp::ConstantOp" in f for f, _a, _b in rec.native_stack_trace(max_stacks=12)):
                    constants.append(rec.size)
        return by_kernel(records)

    larq_measure._by_kernel = grouped
    larq_measure._kernel_of = kernel_and_onednn
    try:
        rec = larq_measure.measure(args.model, args.batch, attribute="baseline", pooled=False)
    finally:
        larq_measure._by_kernel, larq_measure._kernel_of = by_kernel, TF_KERNEL_OF
    out = {k: rec[k] for k in ("schema", "model", "model_file", "batch", "versions", "environment",
                               "runtime_bytes", "baseline_bytes", "tensor_peak_bytes", "process_peak_bytes")}
    out["what"] = ("bytes live when the first measured step starts, by '<TensorFlow kernel> | <innermost oneDNN "
                   "function>'; graph_constants: sizes of the tensors ConstantOp kernels hold")
    out["baseline_kernels"] = rec["attribution"]["baseline_kernels"]
    out["graph_constants"] = sorted(constants, reverse=True)[:50]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"larq-{rec['model']}-standard-b{rec['batch']}-jit.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
