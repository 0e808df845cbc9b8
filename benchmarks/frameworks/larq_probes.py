"""Runtime bytes per layer kind of the `larq` engine, from the probe recordings.

    python benchmarks/frameworks/larq_probes.py

Each probe (benchmarks/frameworks/probes/*.yaml) is a small base model plus
6 copies of one layer kind, measured at batch 16 like any model
(larq_measure.py ... --batch 16 --out benchmarks/frameworks/measurements/probes):
at 16 rows and more oneDNN's MatMul holds no small-batch state (the batch-law
recordings of probe-base: the runtime is one value at B = 4, 8, 12 and
another, 12.0 MB lower, at B = 16, 32, 64, 512; printed below as the
`small_batch` bytes). The runtime (what is not a tensor: traced graph,
optimised graph, executor, kernels) of 6 more layers of a kind, over 6, is
that kind's bytes per layer, after taking out what the engine models by
shape: its `constants` (the folded zeros of Larq's ste_sign gradient) and its
`distinct` runtime rules (oneDNN's primitives, cached per layer
configuration: a probe's 6 equal copies share one); what the base models hold beyond their own layers is the
fixed part. The probes are not evaluation points: the engine is checked on
the zoo and the residual models (measurements/larq-*.json), which no probe
resembles. The batch-8 probes of the first engine are kept in
measurements/probes/batch8/ for the record.
"""

from __future__ import annotations

import json
from pathlib import Path

from bnncost.costmodel.engine import load_engine
from bnncost.costmodel.memory import memory_plan
from bnncost.costmodel.strategy import load_strategy
from bnncost.layers.graph import graph_of

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROBES = HERE / "measurements" / "probes"
COPIES = 6


def modelled_by_shape(model_file: str, batch: int) -> int:
    """Bytes the `larq` engine gives this model by shape, not per layer: its `constants` (graph constants),
    its `distinct` runtime rules (oneDNN primitives, once per distinct layer configuration) and its `once`
    rules (XLA's compiler and sgemm code, once if any grouped conv)."""
    eng = load_engine("larq")
    plan = memory_plan(graph_of(str(ROOT / model_file)), load_strategy("standard"), retention=eng.retention,
                       engine=eng)
    prefixes = tuple(f"runtime.{c.name}." for c in eng.constants)
    distinct = {f"runtime.{r.name}" for r in eng.runtime if r.distinct or r.once}
    return sum(v.bytes_at(batch) for v in plan.variables if v.name.startswith(prefixes) or v.name in distinct)


def runtimes() -> dict[str, int]:
    """Each probe's measured runtime less what the engine models by shape (constants, primitives)."""
    out = {}
    for path in sorted(PROBES.glob("larq-probe-*.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        out[rec["model"].removeprefix("probe-")] = rec["runtime_bytes"] - modelled_by_shape(rec["model_file"],
                                                                                              rec["batch"])
    return out


def small_batch() -> int:
    """probe-base's runtime below 16 rows less at 16 rows (batch-law recordings, one harness)."""
    def rt(batch: int) -> int:
        path = PROBES / "batch-law" / f"larq-probe-base-standard-b{batch}.json"
        return json.loads(path.read_text(encoding="utf-8"))["runtime_bytes"]

    return rt(8) - rt(16)


def per_layer(rt: dict[str, int]) -> dict[str, int]:
    """Bytes per layer, by the probe that isolates it (conv probes against `base`, dense ones against `dense-base`)."""
    def extra(probe: str, base: str) -> float:
        return (rt[probe] - rt[base]) / COPIES

    sign = extra("sign", "base")
    batchnorm = extra("batchnorm", "base")
    return {
        "sign": round(sign),
        "batchnorm (after a conv2d, fused)": round(batchnorm),
        "batchnorm (after a dense)": round(extra("dense-batchnorm", "dense-base")),
        "relu": round(extra("relu", "base")),
        "prelu": round(extra("prelu", "base")),
        "dropout": round(extra("dropout", "base")),
        "maxpool": round(extra("maxpool", "base")),
        "avgpool": round(extra("avgpool", "base")),
        "conv2d (full precision)": round(extra("conv2d-fp", "base")),
        "conv2d (binary)": round(extra("sign-conv2d", "base") - sign),
        "conv2d (full precision, 2 groups: XLA)": round(extra("conv2d-fp-grouped", "base")),
        "conv2d (binary, 2 groups: XLA)": round(extra("sign-conv2d-grouped", "base") - sign),
        "dense (full precision)": round(extra("dense-fp", "dense-base")),
        "dense (binary)": round(extra("sign-dense", "dense-base") - sign),
        "add": round(extra("residual-batchnorm", "base") - batchnorm),
        "bias of a dense (beyond the dense)": round(extra("dense-bias", "dense-base") - extra("dense-fp", "dense-base")),
        # the same kinds on vectors, as a check that a kind's graph does not follow its shape
        "prelu (of vectors, check)": round(extra("dense-prelu", "dense-base")),
        "dropout (of vectors, check)": round(extra("dense-dropout", "dense-base")),
    }


def fixed(rt: dict[str, int], layer: dict[str, int]) -> dict[str, int]:
    """The base probes' runtime less their own layers' (global_avgpool, flatten and the loss stay in it)."""
    conv_base = rt["base"] - (layer["conv2d (full precision)"] + layer["batchnorm (after a conv2d, fused)"]
                              + layer["relu"] + layer["dense (full precision)"])
    dense_base = rt["dense-base"] - (2 * layer["dense (full precision)"] + layer["batchnorm (after a dense)"]
                                     + layer["relu"])
    return {"conv base probe": round(conv_base), "dense base probe": round(dense_base)}


def pooling_heads(rt: dict[str, int], fixed_bytes: dict[str, int]) -> dict[str, int]:
    """The conv base probe's head, its global average pool, is what its fixed bytes hold beyond the dense base
    probe's; a flatten in its place (probe-flatten-base) holds that less the difference of the two probes."""
    pool = fixed_bytes["conv base probe"] - fixed_bytes["dense base probe"]
    return {"global_avgpool": pool, "flatten": pool + rt["flatten-base"] - rt["base"]}


def main() -> None:
    rt = runtimes()
    layer = per_layer(rt)
    for k, v in layer.items():
        print(f"{k:36s} {v:12d} bytes per layer")
    fixed_bytes = fixed(rt, layer)
    for k, v in fixed_bytes.items():
        print(f"fixed, from the {k:20s} {v:12d} bytes")
    for k, v in pooling_heads(rt, fixed_bytes).items():
        print(f"{k:36s} {v:12d} bytes per layer")
    print(f"{'small_batch (B < 16), once':36s} {small_batch():12d} bytes")


if __name__ == "__main__":
    main()
