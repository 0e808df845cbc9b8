"""Measure the heap of one steady-state PyTorch training step with memray, and record it as JSON.

    python benchmarks/frameworks/torch_measure.py MODEL --batch B [--out NAME]

MODEL is a zoo name or a model YAML. One process measures one (model, strategy, batch):
1. one thread: OMP_NUM_THREADS=1 before torch loads, then torch.set_num_threads(1);
2. the import is finished: torch, and what it loads lazily (autograd, Adam, the
   conv / pool / batchnorm / loss kernels), by one step of a small probe model
   that is then dropped;
3. one memray tracker from there on: build the model and Adam, create the batch
   (float32 data, float16 for proposed; int64 targets), three warm-up steps (the first makes Adam's
   state), then two measured steps, each `zero_grad(set_to_none=True)` and then
   between markers: forward + loss, backward, Adam + clip. Replaying every
   allocation and free (common.replay) gives the heap when the step starts
   (the baseline: parameters, batchnorm buffers, Adam's m and v, the batch and
   whatever the runtime cached during warm-up) and the step's peak.

Recorded (bytes):
- process_peak_bytes: the heap at the step's peak, counted from the finished import;
- tensor_peak_bytes: the persistent tensors (parameters, buffers, Adam state,
  the batch; from their shapes) plus the step's peak above the baseline;
- runtime_bytes: their difference (not tensors: modules, caches, BLAS buffers).
Attribution: `saved`, what autograd saves per bnncost layer (a saved-tensor
hook in one more step: shape, dtype, bytes, and whether it is a parameter, the
layer's input, its output, or a tensor another layer saves too); `at_peak`,
the step's allocations live at its peak, grouped by the Python line that made
them (memray's stacks).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WARMUP = 3
MEASURED = 2


def _finish_import(torch, strategy: str) -> None:
    """Run the framework paths every model uses once, so their lazy imports are not counted as the model's."""
    from torch import nn

    if strategy == "proposed":  # its Functions and float16 kernels, on a probe of the same layer kinds
        from torch_proposed import L1BatchNorm, PackedConv2d, PackedLinear, PackedSign, ProposedTrainer

        probe = nn.Sequential(PackedConv2d(2, 2, 3, 1, 1, False, False), L1BatchNorm(2), PackedSign(),
                              PackedConv2d(2, 2, 3, 1, 1, True, True), nn.ReLU(), nn.MaxPool2d(2),
                              nn.AvgPool2d(1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              PackedLinear(2, 2, True, False), L1BatchNorm(2))
        trainer = ProposedTrainer(probe)
        for _ in range(2):
            trainer.zero_grad()
            trainer.step(torch.randn(2, 2, 4, 4, dtype=torch.float16), torch.tensor([0, 1]))
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            trainer.step(torch.randn(2, 2, 4, 4, dtype=torch.float16), torch.tensor([0, 1]))
        del probe, trainer

    probe = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
                          nn.MaxPool2d(2), nn.AvgPool2d(1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(2, 2, bias=False), nn.BatchNorm1d(2))
    opt = torch.optim.Adam(probe.parameters())
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        out = probe(torch.randn(2, 2, 4, 4))
        torch.nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
        opt.step()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        probe(torch.randn(2, 2, 4, 4)).sum().backward()
    del probe, opt


def saved_by_layer(trainer, x, y, model) -> list[dict]:
    """What autograd saves in one step, per bnncost layer, via torch.autograd.graph.saved_tensors_hooks."""
    import torch

    current = {"layer": "loss"}
    outputs: dict[int, str] = {}
    inputs: dict[int, str] = {}
    params = {p.data_ptr() for p in model.parameters()}

    def pre(mod, args):
        current["layer"] = mod.bnncost_layer
        if args and isinstance(args[0], torch.Tensor):
            inputs.setdefault(args[0].data_ptr(), mod.bnncost_layer)

    def post(mod, args, out):
        if isinstance(out, torch.Tensor):
            outputs.setdefault(out.data_ptr(), mod.bnncost_layer)
        current["layer"] = "loss"

    hooks = []
    for m in model.modules():
        if hasattr(m, "bnncost_layer") and not list(m.children()):
            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    rows: list[dict] = []

    def pack(t):
        ptr = t.data_ptr()
        rows.append({"layer": current["layer"], "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                     "bytes": t.numel() * t.element_size(), "ptr": ptr})
        return t

    trainer.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.step(x, y)
    for h in hooks:
        h.remove()
    seen: dict[int, int] = {}
    for r in rows:
        seen[r["ptr"]] = seen.get(r["ptr"], 0) + 1
    for r in rows:
        ptr = r.pop("ptr")
        r["is"] = ("parameter" if ptr in params else
                   f"output of {outputs[ptr]}" if ptr in outputs else
                   f"input of {inputs[ptr]}" if ptr in inputs else "new")
        r["saved_times"] = seen[ptr]
    return rows


def group_at_peak(records) -> list[dict]:
    """Step allocations live at the peak, grouped by the innermost Python line of the harness or torch."""
    groups: dict[str, list[int]] = {}
    for rec in records:
        where = "?"
        for func, file, line in rec.stack_trace(max_stacks=12):
            if "frameworks" in file or "/torch/" in file:
                where = f"{Path(file).name}:{line} {func}"
                break
        g = groups.setdefault(where, [0, 0, []])
        g[0] += rec.size
        g[1] += 1
        if len(g[2]) < 6:
            g[2].append(rec.size)
    rows = [{"where": k, "bytes": v[0], "allocations": v[1], "sizes": v[2]} for k, v in groups.items()]
    return sorted(rows, key=lambda r: -r["bytes"])


def warmed_up(torch, graph, strategy: str, batch: int) -> tuple:
    """(model, trainer, x, y) as a user's script holds them after WARMUP steps: the model built from the graph,
    its trainer (Adam), one batch (float16 data for proposed; int64 targets). Inside the caller's tracker."""
    from torch_model import build_torch_model, classes, input_shape

    if strategy == "proposed":
        from torch_proposed import ProposedLayers as Layers, ProposedTrainer as Trainer
    else:
        from torch_model import Layers, StandardTrainer as Trainer
    model = build_torch_model(graph, Layers())
    trainer = Trainer(model)
    x = torch.randn((batch, *input_shape(graph)), dtype=trainer.data_dtype)
    y = torch.randint(0, classes(graph), (batch,))
    for _ in range(WARMUP):
        trainer.zero_grad()
        trainer.step(x, y)
    return model, trainer, x, y


def measure(model_ref: str, batch: int, strategy: str, *, attribute: bool = True) -> dict:
    import memray
    import numpy
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    from common import SCHEMA, machine, mark, replay
    from torch_model import check_shapes
    from bnncost.layers.graph import graph_of

    graph = graph_of(model_ref)
    _finish_import(torch, strategy)
    tmp = Path(tempfile.mkdtemp(prefix="torch-measure-"))
    t0 = time.time()
    with memray.Tracker(tmp / "run.bin"):
        model, trainer, x, y = warmed_up(torch, graph, strategy, batch)
        for _ in range(MEASURED):
            trainer.zero_grad()
            mark("step_start")
            trainer.step(x, y, marks=mark)
            mark("step_end")
        persistent = trainer.persistent_bytes() + x.numel() * x.element_size() + y.numel() * y.element_size()
        saved = saved_by_layer(trainer, x, y, model) if attribute else []
    seconds = time.time() - t0
    # After the tracker: an eval forward at B=1 makes oneDNN primitives (JIT code) for shapes the training
    # never runs, which a user's process does not hold (inside the tracker it added 0.7-1.7 MB of runtime).
    check_shapes(graph, model)
    walked = replay(tmp / "run.bin", keep_at_peak=attribute)
    steps = walked["steps"]
    worst = max(steps, key=lambda s: s["peak"] - s["baseline"])
    step_bytes = worst["peak"] - worst["baseline"]
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return {
        "schema": SCHEMA,
        "framework": "pytorch",
        "engine": "pytorch",
        "versions": {"torch": torch.__version__, "memray": memray.__version__, "numpy": numpy.__version__},
        **machine(),
        "threads": torch.get_num_threads(),
        "model": graph.model.name,
        "model_ref": model_ref,
        "strategy": strategy,
        "batch": batch,
        "tensor_peak_bytes": persistent + step_bytes,
        "process_peak_bytes": worst["peak"],
        "runtime_bytes": worst["peak"] - persistent - step_bytes,
        "baseline_bytes": worst["baseline"],
        "persistent_tensor_bytes": persistent,
        "step_peak_above_baseline_bytes": step_bytes,
        "peak_phase": worst.get("peak_phase"),
        "steps": [{"baseline": s["baseline"], "peak": s["peak"], "end": s["end"], "phase_peaks": s["phases"]}
                  for s in steps],
        "seconds": round(seconds, 1),
        "attribution": {"saved": saved, "at_peak": group_at_peak(walked["at_peak"])[:40] if attribute else []},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--strategy", choices=("standard", "proposed"), default="standard",
                    help="standard (BinaryNet, torch_model.py) or proposed (Wang et al. 2021, torch_proposed.py)")
    ap.add_argument("--out", help="record name (default pytorch-<model>-<strategy>-b<batch>)")
    ap.add_argument("--no-attribution", action="store_true")
    args = ap.parse_args(argv)
    from common import write_record

    rec = measure(args.model, args.batch, args.strategy, attribute=not args.no_attribution)
    name = args.out or f"pytorch-{rec['model']}-{args.strategy}-b{args.batch}"
    path = write_record(rec, name)
    print(f"{path.name}: tensor {rec['tensor_peak_bytes']} process {rec['process_peak_bytes']} "
          f"runtime {rec['runtime_bytes']} peak in {rec['peak_phase']} ({rec['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
