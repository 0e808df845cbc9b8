"""benchmarks/frameworks/larq_tensor_log.py replays TensorFlow's memory log (no TensorFlow needed)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "frameworks"))

import larq_tensor_log  # noqa: E402

PREFIX = "2026-11-29 21:06:29.216675: I tensorflow/core/framework/log_memory.cc:34] __LOG_MEMORY__ "


def alloc(step: int, node: str, dims: list[int], nbytes: int, aid: int) -> str:
    shape = "".join(f" dim {{ size: {d} }}" for d in dims)
    return (f'{PREFIX}MemoryLogTensorAllocation {{ step_id: {step} kernel_name: "{node}" tensor {{ dtype: DT_FLOAT '
            f'shape {{{shape} }} allocation_description {{ requested_bytes: {nbytes} allocated_bytes: {nbytes} '
            f'allocator_name: "mklcpu" allocation_id: {aid} has_single_reference: true ptr: 1 }} }} }}')


def output(step: int, node: str, aid: int) -> str:
    return (f'{PREFIX}MemoryLogTensorOutput {{ step_id: {step} kernel_name: "{node}" tensor {{ dtype: DT_FLOAT '
            f'shape {{ dim {{ size: 4 }} }} allocation_description {{ requested_bytes: 16 allocated_bytes: 16 '
            f'allocator_name: "mklcpu" allocation_id: {aid} ptr: 1 }} }} }}')


def free(aid: int) -> str:
    return f'{PREFIX}MemoryLogTensorDeallocation {{ allocation_id: {aid} allocator_name: "mklcpu" }}'


def one_step(step: int, first_id: int) -> list[str]:
    """x (kept), dy, then ReluGrad writing into dy's buffer, then a new dX beside it, then the frees."""
    a, b, c = first_id, first_id + 1, first_id + 2
    return [alloc(step, "m/relu/Relu", [8, 16], 512, a), alloc(step, "gradient_tape/m/Tile", [8, 16], 512, b),
            output(step, "gradient_tape/m/relu/ReluGrad", b), alloc(step, "gradient_tape/m/bn/Grad", [8, 16], 512, c),
            free(a), free(b), free(c)]


def test_the_last_step_s_peak_and_the_buffers_an_op_took_over():
    constants = [alloc(-6, "Unknown", [1000], 4000, 1)]  # made once, before the steps: not a step's tensor
    log = "\n".join(constants + one_step(-1111111111, 10) + one_step(-2222222222, 20) + ["unrelated line"])
    r = larq_tensor_log.replay(log)
    assert r["step_peak_bytes"] == 3 * 512
    assert [(t["node"], t["shape"], t["also_output_of"]) for t in r["tensors"]] == [
        ("m/relu/Relu", [8, 16], []),
        ("gradient_tape/m/Tile", [8, 16], ["gradient_tape/m/relu/ReluGrad"]),
        ("gradient_tape/m/bn/Grad", [8, 16], [])]
