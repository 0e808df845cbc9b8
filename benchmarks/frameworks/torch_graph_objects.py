"""The bytes of a PyTorch step that are not tensor storage: autograd's graph and the tensors' own objects.

    python benchmarks/frameworks/torch_graph_objects.py MODEL --batch B --strategy standard|proposed
    python benchmarks/frameworks/torch_graph_objects.py --probes     # every probe, both strategies, and the table

One process measures one (model, strategy, batch) the way torch_measure.py does
(one thread, the import finished, three warm-up steps, then a step between
markers), with memray's native stacks. At the step's peak, every allocation
made inside the step and still live is tensor storage when its stack passes
through c10's CPU allocator (c10::alloc_cpu), and otherwise an object: an
autograd node (its C++ Node and, for a Python autograd Function, the
Function's ctx), a tensor's TensorImpl, StorageImpl and AutogradMeta, the
Python wrappers. Those objects are made in the
forward and live as long as the graph, to the step's end, so they sit under
every peak of the step: the measured tensor peak (persistent tensors plus the
step's rise) holds them. Recorded: `objects_bytes`, the step's rise at its peak
less the tensor storage made in the step and live there (so objects freed
from the baseline count against it). At a backward peak, also autograd's graph
task (`peak_graph_task_bytes`: the GraphTask, its thread-local state, its
future, and the node tables compute_dependencies builds, given apart), which
lives from the backward's start to its end.

With --probes: every probe model of benchmarks/frameworks/probes/ (a small
base plus 6 copies of one layer kind), batch 16, both strategies, each in a
fresh process, recorded in measurements/probes/torch-graph/; then the objects
per layer of each kind, (probe - base) / 6, which the `pytorch` engine's
`autograd_graph` variables cite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PROBE_DIR = HERE / "probes"
OUT = HERE / "measurements" / "probes" / "torch-graph"
PROBE_BATCH = 16
COPIES = 6
STRATEGIES = ("standard", "proposed")
# probe -> (what its 6 copies are, the base it adds them to, kinds to take out per copy)
PROBES = {
    "probe-sign": ("sign", "probe-base", ()),
    "probe-relu": ("relu", "probe-base", ()),
    "probe-prelu": ("prelu", "probe-base", ()),
    "probe-maxpool": ("maxpool", "probe-base", ()),
    "probe-avgpool": ("avgpool", "probe-base", ()),
    "probe-dropout": ("dropout", "probe-base", ()),
    "probe-batchnorm": ("batchnorm (spatial)", "probe-base", ()),
    "probe-residual-batchnorm": ("add", "probe-base", ("batchnorm (spatial)",)),
    "probe-conv2d-fp": ("conv2d (real)", "probe-base", ()),
    "probe-sign-conv2d": ("conv2d (binary)", "probe-base", ("sign",)),
    "probe-dense-batchnorm": ("batchnorm (vector)", "probe-dense-base", ()),
    "probe-dense-fp": ("dense (real)", "probe-dense-base", ()),
    "probe-sign-dense": ("dense (binary)", "probe-dense-base", ("sign",)),
}
TENSOR_STORAGE = ("c10::alloc_cpu", "DefaultCPUAllocator")


def measure(model_ref: str, batch: int, strategy: str) -> dict:
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads
    os.environ["MKL_NUM_THREADS"] = "1"
    import memray
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    import torch_measure
    from common import machine, mark, replay

    from bnncost.layers.graph import graph_of

    graph = graph_of(model_ref)
    torch_measure._finish_import(torch, strategy)
    tmp = Path(tempfile.mkdtemp(prefix="torch-objects-"))
    with memray.Tracker(tmp / "run.bin", native_traces=True):
        _model, trainer, x, y = torch_measure.warmed_up(torch, graph, strategy, batch)
        trainer.zero_grad()
        mark("step_start")
        trainer.step(x, y, marks=mark)
        mark("step_end")
    walked = replay(tmp / "run.bin", keep_at_peak=True, keep_at="forward_end")
    step = walked["steps"][0]
    task, tables = _graph_task(walked["at_peak"]) if step.get("peak_phase") == "backward" else (0, 0)
    at = {"forward_end": (step["forward_end"] - step["baseline"], tensor_storage_bytes(walked["at_forward_end"])),
          "peak": (step["peak"] - step["baseline"], tensor_storage_bytes(walked["at_peak"]))}
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return {"model": graph.model.name, "model_ref": _in_repository(model_ref), "strategy": strategy, "batch": batch,
            "versions": {"torch": torch.__version__, "memray": memray.__version__}, **machine(), "threads": 1,
            "peak_phase": step.get("peak_phase"),
            "peak_graph_task_bytes": task, "peak_graph_task_node_tables_bytes": tables,
            **{f"{k}_{what}_bytes": v for k, (rise, storage) in at.items()
               for what, v in (("rise", rise), ("tensor_storage", storage), ("objects", rise - storage))}}


def _in_repository(model_ref: str) -> str:
    """A model file's path from the repository's root (a record holds no machine's paths), a zoo name as is."""
    path = Path(model_ref).resolve()
    return str(path.relative_to(HERE.parents[1])) if path.is_relative_to(HERE.parents[1]) else model_ref


def tensor_storage_bytes(records) -> int:
    """Bytes of the records whose stack passes through c10's CPU allocator: tensor storage."""
    return sum(rec.size for rec in records
               if any(name in frame for frame, _f, _l in rec.native_stack_trace(max_stacks=30)
                      for name in TENSOR_STORAGE))


def _graph_task(records) -> tuple[int, int]:
    """(all, node tables) of autograd's graph task live at a backward peak: what Engine::execute makes itself
    (the GraphTask, its thread-local state and future), not the ops it runs (thread_main -> evaluate_function);
    the node tables are compute_dependencies' nodes_in_graph_ set and dependencies_ map (one entry per node)."""
    task = tables = 0
    for rec in records:
        frames = [frame for frame, _f, _l in rec.native_stack_trace(max_stacks=60)]
        if any("Engine::execute(" in f for f in frames) and not any("Engine::thread_main" in f for f in frames):
            task += rec.size
            tables += rec.size if any("Engine::compute_dependencies" in f for f in frames) else 0
    return task, tables


def run_probes() -> None:
    """Each probe and base in a fresh process, both strategies; one JSON each."""
    OUT.mkdir(parents=True, exist_ok=True)
    names = sorted({p for p in PROBES} | {base for _k, base, _o in PROBES.values()})
    for name in names:
        for strategy in STRATEGIES:
            out = OUT / f"{name}-{strategy}.json"
            cmd = [sys.executable, __file__, str(PROBE_DIR / f"{name}.yaml"), "--batch", str(PROBE_BATCH),
                   "--strategy", strategy, "--out", str(out)]
            subprocess.run(cmd, check=True)


def per_kind() -> dict[str, dict[str, int]]:
    """Objects per layer of each probe's kind, (probe - base) / 6, less the kinds taken out; per strategy."""
    table: dict[str, dict[str, int]] = {}
    for strategy in STRATEGIES:
        rec = {p.name.removesuffix(f"-{strategy}.json"): json.loads(p.read_text())["forward_end_objects_bytes"]
               for p in OUT.glob(f"*-{strategy}.json")}
        kinds: dict[str, int] = {}
        for probe in sorted(PROBES, key=lambda p: len(PROBES[p][2])):  # kinds taken out are measured first
            kind, base, minus = PROBES[probe]
            kinds[kind] = round((rec[probe] - rec[base]) / COPIES) - sum(kinds[m] for m in minus)
        kinds["base model"] = rec["probe-base"]
        kinds["dense base model"] = rec["probe-dense-base"]
        table[strategy] = kinds
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?")
    p.add_argument("--batch", type=int, default=PROBE_BATCH)
    p.add_argument("--strategy", choices=STRATEGIES, default="standard")
    p.add_argument("--out", type=Path)
    p.add_argument("--probes", action="store_true", help="measure every probe, then print the table")
    p.add_argument("--table", action="store_true", help="print the table of the recorded probes")
    args = p.parse_args(argv)
    if args.probes:
        run_probes()
    if args.probes or args.table:
        table = per_kind()
        print(f"| kind | {' | '.join(STRATEGIES)} |\n|---|---:|---:|")
        for kind in table[STRATEGIES[0]]:
            print(f"| {kind} | {' | '.join(f'{table[s][kind]:,}' for s in STRATEGIES)} |")
        return 0
    if not args.model:
        p.error("a MODEL, --probes or --table")
    rec = measure(args.model, args.batch, args.strategy)
    text = json.dumps(rec, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(f"{rec['model']} {rec['strategy']} B={rec['batch']}: " + "; ".join(
        f"{k}: rise {rec[f'{k}_rise_bytes']:,}, tensor storage {rec[f'{k}_tensor_storage_bytes']:,}, "
        f"objects {rec[f'{k}_objects_bytes']:,}" for k in ("forward_end", "peak")) + f" (peak in {rec['peak_phase']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
