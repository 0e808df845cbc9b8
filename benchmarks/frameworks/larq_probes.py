"""Runtime bytes per layer kind of the `larq` engine, from the probe recordings.

    python benchmarks/frameworks/larq_probes.py

Each probe (benchmarks/frameworks/probes/*.yaml) is a small base model plus
6 copies of one layer kind, measured at batch 8 like any model
(larq_measure.py ... --out benchmarks/frameworks/measurements/probes). The
runtime (what is not a tensor: traced graph, optimised graph, executor,
kernels) of 6 more layers of a kind, over 6, is that kind's bytes per layer;
what the base models hold beyond their own layers is the fixed part. The
probes are not evaluation points: the engine is checked on the zoo and the
residual models (measurements/larq-*.json), which no probe resembles.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
COPIES = 6


def runtimes() -> dict[str, int]:
    out = {}
    for path in sorted((HERE / "measurements" / "probes").glob("larq-probe-*.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        out[rec["model"].removeprefix("probe-")] = rec["runtime_bytes"]
    return out


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
        "maxpool": round(extra("maxpool", "base")),
        "avgpool": round(extra("avgpool", "base")),
        "conv2d (full precision)": round(extra("conv2d-fp", "base")),
        "conv2d (binary)": round(extra("sign-conv2d", "base") - sign),
        "dense (full precision)": round(extra("dense-fp", "dense-base")),
        "dense (binary)": round(extra("sign-dense", "dense-base") - sign),
        "add": round(extra("residual-batchnorm", "base") - batchnorm),
    }


def fixed(rt: dict[str, int], layer: dict[str, int]) -> dict[str, int]:
    """The base probes' runtime less their own layers' (global_avgpool, flatten and the loss stay in it)."""
    conv_base = rt["base"] - (layer["conv2d (full precision)"] + layer["batchnorm (after a conv2d, fused)"]
                              + layer["relu"] + layer["dense (full precision)"])
    dense_base = rt["dense-base"] - (2 * layer["dense (full precision)"] + layer["batchnorm (after a dense)"]
                                     + layer["relu"])
    return {"conv base probe": round(conv_base), "dense base probe": round(dense_base)}


def main() -> None:
    rt = runtimes()
    layer = per_layer(rt)
    for k, v in layer.items():
        print(f"{k:36s} {v:12d} bytes per layer")
    for k, v in fixed(rt, layer).items():
        print(f"fixed, from the {k:20s} {v:12d} bytes")


if __name__ == "__main__":
    main()
