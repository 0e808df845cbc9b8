"""Measure the heap of one steady-state Larq/Keras training step with memray, and record it as JSON.

    python benchmarks/frameworks/larq_measure.py MODEL --batch B [--out DIR] [--attribute [baseline]] [--pooled]
                                                 [--print] [--executor-log] [--memory-log]

MODEL is a zoo name or a model YAML. One process measures one (model, batch):
1. environment before TensorFlow loads: one thread (OMP_NUM_THREADS=1, then
   tf.config.threading intra = inter = 1) and TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1,
   so that every tensor TF allocates is a malloc memray sees (oneDNN's pooled
   CPU allocator otherwise keeps freed step tensors in its own pool: --pooled
   leaves the variable unset, to show the difference);
2. the import is finished: `import tensorflow, larq`, plus what they load
   lazily (Keras' modules, the tracing machinery: a two-layer probe model is
   compiled and one function traced, then dropped);
3. one memray tracker from there to the end: build the model, compile it
   (Adam, standard strategy), create the batch (float32 data, int32 labels,
   made by TF), run three warm-up steps (the first traces the step and makes
   Adam's slots), collect Python's cyclic garbage (what tracing left), then
   three measured steps, each between two marker allocations, with the
   collector off.
   Replaying every allocation and free gives the heap when the step starts
   (the baseline: weights, batchnorm variables, Adam's m and v, the batch,
   the traced graphs and kernels) and the step's peak.

Recorded (bytes): process_peak_bytes = the heap at the step's peak, counted
from the finished import; tensor_peak_bytes = persistent tensors (the model's
and the optimizer's variables, from their shapes) + the batch + the step's
peak above the baseline; runtime_bytes = their difference (what is not a
tensor: traced graphs, executors, kernels, caches). With --attribute the
tracker also keeps native stacks, and the record lists, per TensorFlow kernel,
the bytes it allocated in the step that are live at the step's peak.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEASUREMENTS = HERE / "measurements"


def _set_environment(pooled: bool, executor_log: bool = False, memory_log: bool = False) -> dict[str, str]:
    env = {"OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if not pooled:
        env["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] = "1"
    modules = []
    if executor_log:  # every op the executor runs, on stderr (larq_op_order.py, larq_executor_state.py)
        modules.append("executor=1")
    if memory_log:  # every tensor allocation (with its node) and deallocation, on stderr (larq_tensor_log.py)
        modules.append("log_memory=3")
    if modules:
        env.update(TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE=",".join(modules))
    os.environ.update(env)
    return env


MARK_STEP_START = 3_141_593  # odd malloc sizes no TensorFlow buffer has: they mark the
MARK_STEP_END = 2_718_283  # measured steps in memray's record stream
MEASURED_STEPS = 3  # the recorded step peak is the largest of these (TF's op order can vary a little)


def _mark(size: int) -> None:
    """One malloc and free of `size` bytes through numpy (whose malloc memray intercepts)."""
    import numpy as np

    marker = np.empty(size, dtype=np.uint8)
    del marker


def _repo_relative(model_ref: str) -> str | None:
    """A user model's file relative to the repository (None for a zoo name), so tests find it in any checkout."""
    from bnncost.layers.model import looks_like_path

    if not looks_like_path(model_ref):
        return None
    path = Path(model_ref).resolve()
    try:
        return str(path.relative_to(HERE.parent.parent))
    except ValueError:
        return str(path)


def _kernel_of(stack) -> str:
    """The innermost TensorFlow op kernel (or runtime function) a native stack passes through."""
    for func, _file, _line in stack:
        if "::Compute" in func and "tensorflow" in func:
            return func.split("(")[0][:160]
    for func, _file, _line in stack:
        if "tensorflow" in func:
            return func.split("(")[0][:160]
    return stack[0][0][:160] if stack else "?"


_FREES = {"FREE", "MUNMAP", "PYMALLOC_FREE"}  # AllocatorType names that release memory


def walk(path: Path, attribute: str | None) -> dict:
    """Replay every allocation and free from the import on: per marked step, the heap at its start and its peak.

    One tracker spans the whole run, so a buffer allocated before a step and
    freed inside it (Keras swaps a variable's buffer when it assigns the clipped
    kernel) is subtracted, which a tracker started at the step would miss.
    """
    import memray

    frees = {int(getattr(memray.AllocatorType, name)) for name in _FREES}
    live: dict[int, int] = {}
    records: dict[int, object] = {}  # address -> record, with --attribute only
    at_first_step: list = []
    born_in_step: dict[int, object] = {}
    heap = warmup_peak = 0
    steps: list[dict] = []
    in_step = False
    at_peak: list = []
    reader = memray.FileReader(path)
    for rec in reader.get_allocation_records():
        size = rec.size
        if int(rec.allocator) in frees:
            gone = live.pop(rec.address, None)
            if gone is not None:
                heap -= gone
                born_in_step.pop(rec.address, None)
                records.pop(rec.address, None)
            continue
        if size == MARK_STEP_START:
            if attribute and not steps:
                at_first_step = list(records.values())
                records = {}
            in_step = True
            steps.append({"baseline": heap, "peak": heap})
            born_in_step = {}
            continue
        if size == MARK_STEP_END:
            in_step = False
            steps[-1]["end"] = heap
            continue
        live[rec.address] = size
        heap += size
        if attribute == "baseline" and not steps:
            records[rec.address] = rec
        if not steps:
            warmup_peak = max(warmup_peak, heap)
        elif in_step:
            born_in_step[rec.address] = rec
            if heap > steps[-1]["peak"]:
                steps[-1]["peak"] = heap
                if attribute and len(steps) == 1:
                    at_peak = list(born_in_step.values())
    if not steps or "end" not in steps[-1]:
        raise RuntimeError(f"{path}: the step markers are missing from memray's records")
    out = {"steps": steps, "warmup_peak": warmup_peak}
    if attribute:
        out["kernels"] = _by_kernel(at_peak)
        if attribute == "baseline":
            out["baseline_kernels"] = _by_kernel(at_first_step)
    return out


def _by_kernel(records: list) -> list[dict]:
    by_kernel: dict[str, list] = {}
    for rec in records:
        entry = by_kernel.setdefault(_kernel_of(rec.native_stack_trace(max_stacks=40)), [0, 0, []])
        entry[0] += rec.size
        entry[1] += 1
        entry[2].append(rec.size)
    # the sizes of a kernel's tensors tell which layers' outputs they are (the small ones are bookkeeping)
    rows = [{"kernel": k, "bytes": v[0], "allocations": v[1],
             "sizes_from_64KiB": sorted((n for n in v[2] if n >= 65536), reverse=True)} for k, v in by_kernel.items()]
    return sorted(rows, key=lambda r: -r["bytes"])[:60]


def graph_ops(step, x, y, layer_names: list[str]) -> dict:
    """Operations in the traced step (forward, gradient and update), in all and per bnncost layer (by name scope)."""
    ops = step.get_concrete_function(x, y).graph.get_operations()
    per_layer = {name: 0 for name in layer_names}
    for op in ops:
        parts = op.name.split("/")
        for name in layer_names:
            if name in parts:
                per_layer[name] += 1
                break
    return {"total": len(ops), "per_layer": per_layer}


def _finish_import(tf, lq) -> None:
    """Load what TensorFlow and Keras import lazily (Keras' modules, the tracing machinery) before the baseline.

    Those modules are the framework's import, the same for every model; what
    the tracker sees after this is the model's own: its tensors, its traced
    graphs and its kernels.
    """
    probe = tf.keras.Sequential([lq.layers.QuantDense(2, input_shape=(2,)), tf.keras.layers.BatchNormalization()])
    probe.compile(optimizer=tf.keras.optimizers.Adam(), loss=tf.keras.losses.SparseCategoricalCrossentropy())

    @tf.function
    def double(v):
        return v * 2.0

    double(tf.ones((2,)))
    for cls in (tf.keras.layers.Conv2D, tf.keras.layers.MaxPooling2D, tf.keras.layers.AveragePooling2D,
                tf.keras.layers.GlobalAveragePooling2D, tf.keras.layers.Add, tf.keras.layers.ReLU,
                tf.keras.layers.Flatten, tf.keras.layers.Activation, lq.layers.QuantConv2D, lq.quantizers.SteSign):
        assert cls is not None
    del probe
    tf.keras.backend.clear_session()


def measure(model_ref: str, batch: int, *, attribute: str | None, pooled: bool, executor_log: bool = False,
            memory_log: bool = False) -> dict:
    env = _set_environment(pooled, executor_log, memory_log)
    import memray
    import numpy as np
    import tensorflow as tf
    import larq as lq

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    sys.path.insert(0, str(HERE))
    from bnncost.calibrate.machine import cpu_model
    from larq_model import build_larq_model, compile_standard, train_step_function

    from bnncost.layers.graph import graph_of

    graph = graph_of(model_ref)
    _finish_import(tf, lq)
    tmp = Path(tempfile.mkdtemp(prefix="larq-measure-"))
    t0 = time.time()
    with memray.Tracker(tmp / "run.bin", native_traces=bool(attribute)):
        model = build_larq_model(graph)
        compile_standard(model)
        classes = graph.output_shape[0]
        tf.random.set_seed(0)
        x = tf.random.normal((batch, *graph.model.input), dtype=tf.float32)
        y = tf.random.uniform((batch,), maxval=classes, dtype=tf.int32)
        step = train_step_function(model)
        for _ in range(3):  # the first traces the step and makes Adam's slots
            step(x, y)
        gc.collect()  # tracing leaves cyclic garbage (FuncGraphs); the baseline is what the process keeps
        gc.disable()
        for _ in range(MEASURED_STEPS):
            _mark(MARK_STEP_START)
            loss = step(x, y)["loss"]
            _mark(MARK_STEP_END)
        gc.enable()
    seconds = time.time() - t0
    heap = walk(tmp / "run.bin", attribute)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()

    def nbytes(v) -> int:
        return int(np.prod(v.shape)) * v.dtype.size

    weights = sum(nbytes(v) for v in model.variables)
    optimizer = sum(nbytes(v) for v in model.optimizer.variables)
    data = nbytes(x) + nbytes(y)
    persistent = weights + optimizer
    worst = max(heap["steps"], key=lambda st: st["peak"] - st["baseline"])
    above = worst["peak"] - worst["baseline"]
    ops = graph_ops(step, x, y, [n.name for n in graph.nodes])
    record = {
        "schema": "bnncost.framework-measurement/1",
        "framework": "larq",
        "engine": "larq",
        "model": graph.model.name,
        "model_file": _repo_relative(model_ref),
        "strategy": "standard",
        "batch": batch,
        "step": "Keras Model.train_step (what model.fit runs per batch) in one tf.function, batch given as tensors",
        "optimizer": "tf.keras.optimizers.Adam(1e-3), not XLA-compiled on CPU",
        "allocator": "pooled (oneDNN default)" if pooled else "system malloc (TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1)",
        "threads": 1,
        "environment": env,
        "versions": {
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": getattr(tf.keras, "__version__", ""), "larq": lq.__version__,
            "memray": getattr(memray, "__version__", ""), "numpy": np.__version__,
        },
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "baseline": "heap live (since `import tensorflow, larq`) when the measured step starts: after model build, "
                    "compile, batch creation and three warm-up steps",
        "tensor_peak_bytes": persistent + data + above,
        "process_peak_bytes": worst["peak"],
        "runtime_bytes": worst["peak"] - (persistent + data + above),
        "baseline_bytes": worst["baseline"],
        "parts": {
            "weight_and_batchnorm_variables": weights,
            "optimizer_variables": optimizer,
            "batch": data,
            "baseline_heap": worst["baseline"],
            "step_peak_above_baseline": above,
            "each_step_peak_above_baseline": [st["peak"] - st["baseline"] for st in heap["steps"]],
            "each_step_end_minus_baseline": [st["end"] - st["baseline"] for st in heap["steps"]],
            "warmup_peak_since_import": heap["warmup_peak"],
        },
        "graph_ops": ops,
        "loss": float(loss),
        "seconds": round(seconds, 1),
    }
    if attribute:
        record["attribution"] = {
            "what": "bytes allocated in the step and live at its peak, by the innermost TensorFlow kernel",
            "kernels": heap["kernels"],
            **({"baseline_what": "bytes live when the first measured step starts (allocated since the import), "
                                 "by the innermost TensorFlow function",
                "baseline_kernels": heap["baseline_kernels"]} if "baseline_kernels" in heap else {}),
        }
    return record


def record_path(out: Path, record: dict) -> Path:
    tag = "-pooled" if "pooled" in record["allocator"] else ""
    return out / f"larq-{record['model']}-{record['strategy']}-b{record['batch']}{tag}.json"


def fresh_process(model: str, batch: int, *flags: str) -> tuple[dict, str]:
    """One more process of this harness (`--print` and the flags): its record and what it wrote on stderr
    (TensorFlow's logs are large, so stderr goes through a file)."""
    import subprocess

    command = [sys.executable, str(Path(__file__).resolve()), model, "--batch", str(batch), "--print", *flags]
    with tempfile.TemporaryDirectory(prefix="larq-measure-") as tmp:
        err_path = Path(tmp) / "stderr.log"
        with err_path.open("w") as err:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True)
        log = err_path.read_text(errors="replace")
    if done.returncode:
        raise SystemExit(f"larq_measure.py {model} --batch {batch} failed:\n" + "\n".join(log.splitlines()[-5:]))
    return json.loads(done.stdout), log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--out", type=Path, default=MEASUREMENTS)
    p.add_argument("--attribute", nargs="?", const="step", choices=["step", "baseline"],
                   help="record native stacks: bytes at the step's peak per kernel (and, with 'baseline', "
                        "the bytes live before the step too: slow)")
    p.add_argument("--pooled", action="store_true", help="leave oneDNN's pooled allocator on (hides step tensors)")
    p.add_argument("--print", action="store_true", help="print the record instead of writing it")
    p.add_argument("--executor-log", action="store_true",
                   help="TensorFlow's executor logs every op it runs to stderr (TF_CPP_VMODULE=executor=1)")
    p.add_argument("--memory-log", action="store_true",
                   help="TensorFlow logs every tensor it allocates, with its node, to stderr (log_memory=3)")
    args = p.parse_args(argv)
    if args.batch < 1:
        print(f"--batch must be a positive integer, got {args.batch}", file=sys.stderr)
        return 2
    record = measure(args.model, args.batch, attribute=args.attribute, pooled=args.pooled,
                     executor_log=args.executor_log, memory_log=args.memory_log)
    text = json.dumps(record, indent=1) + "\n"
    if args.print:
        print(text, end="")
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        path = record_path(args.out, record)
        path.write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
