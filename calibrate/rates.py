"""Sustained rates of every (format, kind) the op counter uses, through the bundled trainer's kernels.

- `mac` at a real format, and `shift` at po2: the trainer's product kernel (trainer.kernels.matmul:
  the operand decoded from its format to float32 tiles, multiplied by a float32 sign matrix,
  the result stored back), on a product the size of a small conv layer's (256 x 576 by 576 x 128):
  multiply-accumulates per second;
- `xnor_popcount` at bool: the binary layers' forward (XOR of packed 64-bit words, popcount, sum
  per output), per 64-bit word;
- every other kind: the elementwise path the trainer's layers take, a chunk of rows at a time
  (trainer.base.CHUNK_BYTES): decode from the format, the numpy ufunc of that kind in float32,
  encode back. A compare or an abs runs on the decoded values too.
bfloat16 is not measured: numpy cannot hold it and the trainer refuses it.
Every rate is one core's (the trainer runs one Python thread), the median of `repeats` timings of the
process's CPU time (time.process_time: what other processes on a shared machine do not inflate).
"""

from __future__ import annotations

import time

import numpy as np

from bnncost.trainer import codec
from bnncost.trainer.base import CHUNK_BYTES, row_chunks
from bnncost.trainer.kernels import matmul

FLOAT_KINDS = ("mac", "add", "mul", "div", "sqrt", "abs", "compare", "exp")
INT_KINDS = ("mac", "add", "mul", "compare")
MEASURED: dict[str, tuple[str, ...]] = {
    "float32": FLOAT_KINDS, "float16": FLOAT_KINDS,
    "int32": INT_KINDS, "int16": INT_KINDS, "int8": INT_KINDS, "uint8": INT_KINDS,
    "po2": ("shift",), "bool": ("xnor_popcount",),
}
_UFUNC = {
    "add": lambda x: np.add(x, x, out=x),
    "mul": lambda x: np.multiply(x, x, out=x),
    "div": lambda x: np.divide(x, np.float32(3.0), out=x),
    "sqrt": lambda x: np.sqrt(np.abs(x, out=x), out=x),
    "abs": lambda x: np.abs(x, out=x),
    "compare": lambda x: np.greater(x, np.float32(0.5)),
    "exp": lambda x: np.exp(np.minimum(x, np.float32(8.0), out=x), out=x),
}


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times))


def _values(fmt: str, shape: tuple[int, ...], rng) -> np.ndarray:
    return codec.encode(rng.uniform(-2, 2, size=shape).astype(np.float32), fmt)


def product_rate(fmt: str, repeats: int, rng) -> float:
    """Multiply-accumulates per second of the trainer's matmul with one operand in `fmt`."""
    m, k, n = 256, 576, 128
    a = _values(fmt, (m, k), rng)
    b = np.where(rng.random((k, n)) < 0.5, 1.0, -1.0).astype(np.float32)
    out = np.empty((m, n), np.float32)
    return m * k * n / _median_time(lambda: matmul(a, fmt, b, "float32", out, "float32"), repeats)


def xnor_rate(repeats: int, rng) -> float:
    """64-bit words per second through the binary forward's XOR, popcount and per-output sum."""
    r, n, words = 256, 128, 9  # a 3x3 patch of 64 channels: 9 words
    pat = rng.integers(0, 2**63, size=(r, words), dtype=np.uint64)
    filt = rng.integers(0, 2**63, size=(n, words), dtype=np.uint64)
    dst = np.empty((r, n, words), np.uint64)

    def run():
        np.bitwise_xor(pat[:, None, :], filt[None, :, :], out=dst)
        codec.popcount_inplace(dst)
        d = dst.sum(axis=-1, dtype=np.int32)
        d *= -2

    return r * n * words / _median_time(run, repeats)


def elementwise_rate(fmt: str, kind: str, repeats: int, rng) -> float:
    """Elements per second of one `kind` over a 1 MiB-of-float32 tensor held in `fmt`, chunk by chunk."""
    cols = 256
    rows = (1 << 18) // cols
    x = _values(fmt, (rows, cols), rng)
    out = codec.empty(fmt, (rows, cols))
    step = max(1, CHUNK_BYTES // (4 * cols))
    ops = (_UFUNC["mul"], _UFUNC["add"]) if kind == "mac" else (_UFUNC[kind],)

    def run():
        for r0, r1 in row_chunks(rows, step):
            v = codec.decode_copy(x[r0:r1], fmt)
            for op in ops:
                res = op(v)
            if res.dtype == np.bool_:
                continue
            codec.encode_into(out[r0:r1], res, fmt)

    return rows * cols / _median_time(run, repeats)


def sustained_rates(repeats: int, progress=None) -> dict[str, dict[str, tuple[float, str]]]:
    """format -> kind -> (per second, how it was measured)."""
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, tuple[float, str]]] = {}
    for fmt, kinds in MEASURED.items():
        for kind in kinds:
            if kind in ("mac", "shift") and fmt in ("float32", "float16", "po2"):
                rate, how = product_rate(fmt, repeats, rng), "trainer.kernels.matmul 256x576 @ 576x128, operand in " + fmt
            elif kind == "xnor_popcount":
                rate, how = xnor_rate(repeats, rng), "the binary forward's XOR + popcount + sum, 256 rows x 128 filters x 9 words"
            else:
                rate, how = elementwise_rate(fmt, kind, repeats, rng), (
                    f"decode {fmt} -> float32, numpy {kind}, encode back, 1 MiB in {CHUNK_BYTES // 1024} KiB chunks")
            out.setdefault(fmt, {})[kind] = (rate, how)
            if progress is not None:
                progress(f"rate {fmt} {kind}")
    return out


def rate_steps() -> int:
    return sum(len(k) for k in MEASURED.values())
