"""The bytes a parsed FunctionDef of a Larq model's traced train step takes in protobuf's upb arena.

    python benchmarks/frameworks/larq_function_def.py MODEL [MODEL ...] [--batch 16] [--out FILE]

TensorFlow's Python side parses the traced step's FunctionDef into a Python
protobuf message three times and keeps all three for the process's life
(tensorflow/python/eager/polymorphic_function: two from
ConcreteFunction.__init__ via AtomicFunction.definition, one cached at the
first call, AtomicFunction.cached_definition; memray's Python stacks of the
_upb_Arena_SlowMalloc allocations live before a step, digits-mlp,
holdout-mlp, cnv and holdout-deep at B=16). protobuf's upb backend puts a
message in an arena that grows by blocks of 576 x 2^i - 16 bytes (560,
1136, 2288, ..., memray), each new block twice the last, so one copy holds
the sum of the blocks up to the first whose total reaches the message's
in-arena size S: a step function of S.

S is not the wire size (the parsed message holds maps, arrays and copies),
so this script measures it: N copies of the FunctionDef parsed into one arena
(a FunctionDefLibrary whose `function` field repeats it) take N x S, and
glibc's mallinfo2 shows where, as N grows from 1 to 128, the arena takes
another block; each such N bounds S to (blocks before / N, blocks before /
(N - 1)]. The record keeps both bounds and their midpoint, with the wire
size, the node count and the protobuf version. One process for all models;
no memray.

The larq engine does not use this yet. The sizes add up by layer kind (per
kind from the probes, (probe - base) / 6: every recorded and holdout model
within -4.4..0% of its measured size, and 22 of 23 in the right number of
blocks), but the engine's per-layer `graph_*` runtime rules, measured on the
probes, also average other memory that comes in steps (Python's 1 MiB object
arenas); modelling the arena's blocks exactly, with those rules less each
probe's arena, made the Larq process peaks worse (-5.2..+2.0% -> -7.0..+1.9%
on the 30 recordings, holdout-deep -3.5 -> -7.1%), so it waits for the
other steps to be modelled too. Record: measurements/probes/larq-function-def.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

OUT = HERE / "measurements" / "probes" / "larq-function-def.json"
MAX_COPIES = 128


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


@lru_cache(maxsize=None)
def _mallinfo2():
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2


def _heap_in_use() -> int:
    info = _mallinfo2()()
    return info.uordblks + info.hblkhd


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _arena_of_copies(wire: bytes, copies: int) -> int:
    """Heap bytes taken by parsing `copies` copies of a FunctionDef into one message (one arena)."""
    from tensorflow.core.framework import function_pb2

    one = _varint((1 << 3) | 2) + _varint(len(wire)) + wire  # FunctionDefLibrary.function (field 1)
    before = _heap_in_use()
    message = function_pb2.FunctionDefLibrary.FromString(one * copies)
    taken = _heap_in_use() - before
    del message
    return taken


def in_arena_bytes(wire: bytes) -> dict:
    """Bounds of S from the copy counts at which the arena takes another block."""
    steps = []
    previous = _arena_of_copies(wire, 1)
    for copies in range(2, MAX_COPIES + 1):
        taken = _arena_of_copies(wire, copies)
        if taken > 1.5 * previous:  # a block twice the last: copies x S no longer fit what copies - 1 took
            steps.append((copies, previous))
        previous = taken
    low = max(before / copies for copies, before in steps)
    high = min(before / (copies - 1) for copies, before in steps)
    return {"in_arena_bytes": round((low + high) / 2), "in_arena_low": int(low), "in_arena_high": int(high),
            "block_steps": steps}


def function_def_of(model_ref: str, batch: int) -> tuple[str, bytes, int]:
    """(model name, wire bytes, nodes) of the train step's FunctionDef, traced as larq_measure.py traces it."""
    import tensorflow as tf

    from larq_model import build_larq_model, compile_standard, train_step_function
    from bnncost.layers.graph import graph_of

    graph = graph_of(model_ref)
    tf.keras.backend.clear_session()
    model = build_larq_model(graph)
    compile_standard(model)
    tf.random.set_seed(0)
    x = tf.random.normal((batch, *graph.model.input), dtype=tf.float32)
    y = tf.random.uniform((batch,), maxval=graph.output_shape[0], dtype=tf.int32)
    step = train_step_function(model)
    step(x, y)
    definition = step.get_concrete_function(x, y).function_def
    return graph.model.name, definition.SerializeToString(), len(definition.node_def)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    import larq_measure

    env = larq_measure._set_environment(pooled=False)
    import google.protobuf
    import tensorflow as tf
    import larq as lq

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from google.protobuf.internal import api_implementation

    record = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    record.update({
        "schema": "bnncost.larq-function-def/1",
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "versions": {"tensorflow": tf.__version__, "larq": lq.__version__, "protobuf": google.protobuf.__version__,
                     "protobuf_backend": api_implementation.Type()},
        "environment": env, "batch": args.batch,
    })
    models = record.setdefault("models", {})
    for ref in args.models:
        name, wire, nodes = function_def_of(ref, args.batch)
        models[name] = {"model_file": larq_measure._repo_relative(ref), "wire_bytes": len(wire), "nodes": nodes,
                        **in_arena_bytes(wire)}
        print(f"{name}: {len(wire):,} B on the wire, {models[name]['in_arena_bytes']:,} B in the arena "
              f"({models[name]['in_arena_low']:,} to {models[name]['in_arena_high']:,})", flush=True)
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
