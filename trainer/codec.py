"""Holding a tensor in a strategy's number format, for real (METHOD 3.2).

Every stored array is a numpy array whose `.nbytes` is exactly what
`costmodel.formats.tensor_bytes` says for that format and logical shape:

- float32, float16, int32, int16, int8, uint8: the numpy dtype itself
  (integer formats hold reals rounded to the nearest integer and clipped;
  float16 flushes subnormals to zero, see `store_float16`);
- bool: 1 bit per element, `np.packbits` along the last axis, big-endian bit
  order within a byte; a last axis of n elements takes ceil(n / 8) bytes, the
  tail bits are 0. A bit means "x >= 0" for signs (+1 / -1) and "true" for masks;
- po2: one int8 code per element, sign plus exponent: 0 is zero, and
  code = s * (e + 64) is s * 2**e for e in [-63, 63]. Encoding rounds log2|x|
  to the nearest integer (so values are rounded in the log domain); values
  below 2**-63 become 0. Multiplying by a po2 value is a shift.
- bfloat16 cannot be held by numpy: asking for it raises TrainerError.

Decoding always yields float32 (the trainer computes in float32 on chunks:
numpy has no BLAS for float16) and is only ever applied to chunks of rows.
"""

from __future__ import annotations

import math

import numpy as np

from bnncost.trainer.errors import TrainerError

DTYPES: dict[str, type] = {
    "float32": np.float32,
    "float16": np.float16,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "po2": np.int8,
    "bool": np.uint8,
}
FLOATS = ("float32", "float16")


def check_holdable(fmt: str, what: str) -> None:
    """Raise TrainerError for a format numpy cannot hold (bfloat16) or does not know."""
    if fmt == "bfloat16":
        raise TrainerError(f"{what} is bfloat16, a format numpy cannot hold; the trainer cannot run this strategy")
    if fmt not in DTYPES:
        raise TrainerError(f"{what}: unknown format '{fmt}'")


def stored_shape(fmt: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the numpy array that holds a tensor of this logical shape."""
    if fmt == "bool":
        if not shape:
            return (1,)
        return (*shape[:-1], -(-shape[-1] // 8))
    return tuple(shape)


def empty(fmt: str, shape: tuple[int, ...], zero: bool = False) -> np.ndarray:
    make = np.zeros if zero else np.empty
    return make(stored_shape(fmt, shape), dtype=DTYPES[fmt])


def nbytes(fmt: str, shape: tuple[int, ...]) -> int:
    return math.prod(stored_shape(fmt, shape)) * np.dtype(DTYPES[fmt]).itemsize


# ---------------------------------------------------------------- bits

# byte -> its 8 bits (MSB first, as np.packbits) as +1/-1 and as 1/0, per dtype
_SIGN_TABLES: dict = {}
_MASK_TABLES: dict = {}
_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)  # (256, 8) of 0/1


def sign_table(dtype) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt not in _SIGN_TABLES:
        _SIGN_TABLES[dt] = (2 * _BITS.astype(np.int16) - 1).astype(dt)
    return _SIGN_TABLES[dt]


def mask_table(dtype) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt not in _MASK_TABLES:
        _MASK_TABLES[dt] = _BITS.astype(dt)
    return _MASK_TABLES[dt]


def unpack_into(packed: np.ndarray, n: int, out: np.ndarray, mode: str = "sign") -> None:
    """Expand packed bits (..., ceil(n/8)) into `out` (..., n) as +1/-1 (sign) or 1/0 (mask).

    Uses a byte -> 8 values lookup; when n is a multiple of 8 it writes straight
    into `out` with no temporary.
    """
    table = (sign_table if mode == "sign" else mask_table)(out.dtype)
    nb = packed.shape[-1]
    if n == nb * 8 and out.flags.c_contiguous:
        np.take(table, packed, axis=0, out=out.reshape(*packed.shape, 8))
    else:
        out[...] = table[packed].reshape(*packed.shape[:-1], nb * 8)[..., :n]


def rows(x: np.ndarray, fmt: str, n: int) -> np.ndarray:
    """A stored tensor whose last logical axis has n elements, as 2-D rows of that axis."""
    return x.reshape(-1, stored_shape(fmt, (n,))[-1])


def unpack_bits(packed: np.ndarray, n: int, group: int | None = None) -> np.ndarray:
    """Packed rows (r, bytes) -> booleans (r, n); `group`: the bytes hold groups of `group` bits,
    each packed on its own (a flattened packed tensor whose last axis was `group` long)."""
    if group is None or group % 8 == 0:
        return np.unpackbits(packed, axis=-1, count=n).view(bool)
    per = -(-group // 8)
    g = packed.reshape(packed.shape[0], -1, per)
    return np.unpackbits(g, axis=-1, count=group).view(bool).reshape(packed.shape[0], n)


def store_signs(bits: np.ndarray, dst: np.ndarray, fmt: str) -> None:
    """Store +1 where `bits` holds, else -1, into `dst` held in `fmt` (a binary tensor: METHOD 4.2)."""
    if fmt == "bool":
        pack_into(bits, dst)
    elif fmt == "po2":
        np.copyto(dst, np.where(bits, np.int8(64), np.int8(-64)))  # the po2 code of +-1 is +-64
    else:
        one = dst.dtype.type(1)
        np.copyto(dst, np.where(bits, one, -one))


def pack_into(bits: np.ndarray, out: np.ndarray) -> None:
    """Pack a boolean array (..., n) into `out` (..., ceil(n/8))."""
    out[...] = np.packbits(bits, axis=-1)


def store_mask(keep: np.ndarray, out: np.ndarray, fmt: str) -> None:
    """Store a boolean mask in its role's format: packed bits, or 0/1 values of a real format."""
    if fmt == "bool":
        pack_into(keep, out)
    else:
        encode_into(out, keep.astype(np.float32), fmt)


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")


def popcount_inplace(a: np.ndarray) -> np.ndarray:
    """Replace every unsigned integer in `a` by its number of set bits (numpy 2: bitwise_count)."""
    if HAS_BITWISE_COUNT:
        return np.bitwise_count(a, out=a)
    u8 = a.view(np.uint8)
    np.take(_POP8, u8, out=u8)
    if a.dtype != np.uint8:  # per-byte counts -> per-word counts
        words = u8.reshape(*a.shape, a.dtype.itemsize).sum(axis=-1, dtype=a.dtype)
        a[...] = words
    return a


# ---------------------------------------------------------------- float bit tricks

_UINT = {np.dtype(np.float16): (np.uint16, 0x8000, 0x3C00), np.dtype(np.float32): (np.uint32, 0x80000000, 0x3F800000)}


def copysign_one(src: np.ndarray, out: np.ndarray) -> bool:
    """out = +1 where src >= 0 (-0.0 included), else -1, by bit operations, when both share a float dtype.

    numpy's float16 ufuncs convert element by element (~10x slower than
    float32); setting the bits directly is exact and fast. Returns False when
    it does not apply (the caller falls back).
    """
    spec = _UINT.get(src.dtype)
    if spec is None or out.dtype != src.dtype:
        return False
    ut, sign, one = spec
    o = out.view(ut)
    bits = src.view(ut)
    np.bitwise_and(bits, ut(sign), out=o)
    o[bits == ut(sign)] = 0  # -0.0 >= 0: +1, as every packed sign bit says
    np.bitwise_or(o, ut(one), out=o)
    return True


def nonnegative(w: np.ndarray) -> np.ndarray:
    """w >= 0 as booleans (-0.0 included); for float16 on the bits, ~15x faster than numpy's float16 compare."""
    if w.dtype == np.float16:
        b = w.view(np.uint16)
        out = b < 0x8000
        out |= b == 0x8000
        return out
    return w >= 0


def abs_at_most_one(x: np.ndarray) -> np.ndarray:
    """|x| <= 1 as booleans; for float16 on the bits (1.0 is 0x3C00)."""
    if x.dtype == np.float16:
        return (x.view(np.uint16) & 0x7FFF) <= 0x3C00
    return np.abs(x) <= 1


def gate(x: np.ndarray, keep: np.ndarray, out: np.ndarray) -> bool:
    """out = x * keep for a 0/1 `keep`, by masking bits, when all three share a float dtype.

    Returns False when it does not apply. Exact: multiplying by 1 keeps x,
    by 0 gives +0 (where x * 0 would give -0 for negative x; the sums that
    follow cannot tell the difference).
    """
    spec = _UINT.get(x.dtype)
    if spec is None or keep.dtype != x.dtype or out.dtype != x.dtype:
        return False
    ut = spec[0]
    k = keep.view(ut)
    full = np.not_equal(k, 0).view(np.uint8).astype(ut)  # 1 where keep is 1
    np.negative(full, out=full)  # all ones where keep is 1 (unsigned wrap-around)
    np.bitwise_and(x.view(ut), full, out=out.view(ut))
    return True


# ---------------------------------------------------------------- po2

def po2_encode_into(dst: np.ndarray, x: np.ndarray) -> None:
    """Store float values as int8 power-of-two codes (see module docstring) with one float32 temporary.

    code = rint(log2|x|) clipped to [-64, 63] plus 64 (so below 2**-63, and 0,
    become code 0), negated where x < 0.
    """
    x = np.asarray(x)
    mag = np.abs(x, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log2(mag, out=mag)
    np.rint(mag, out=mag)
    np.fmax(mag, np.float32(-64), out=mag)  # log2(0) = -inf, and NaN, become -64: code 0
    np.fmin(mag, np.float32(63), out=mag)
    mag += np.float32(64)
    np.copyto(dst, mag, casting="unsafe")
    np.negative(dst, out=dst, where=np.broadcast_to(x < 0, dst.shape))


def po2_encode(x: np.ndarray) -> np.ndarray:
    """Float array -> int8 power-of-two codes (see module docstring)."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty(x.shape, np.int8)
    po2_encode_into(out, x)
    return out


# every int8 code (as its uint8 bit pattern) -> its float32 value
_PO2_VALUES = np.zeros(256, np.float32)
for _c in range(-127, 128):
    if _c:
        _PO2_VALUES[_c & 0xFF] = np.float32(np.sign(_c) * 2.0 ** (abs(_c) - 64))


def po2_decode_into(code: np.ndarray, out: np.ndarray) -> np.ndarray:
    """int8 power-of-two codes -> float32 into `out`, by table lookup a block at a time."""
    u = code.view(np.uint8)
    if u.ndim == 0 or u.size <= _GATHER:
        out[...] = _PO2_VALUES[u]
        return out
    per_row = max(1, u.size // u.shape[0])
    step = max(1, _GATHER // per_row)
    for r0 in range(0, u.shape[0], step):
        np.take(_PO2_VALUES, u[r0:r0 + step], out=out[r0:r0 + step])
    return out


def po2_decode(code: np.ndarray) -> np.ndarray:
    return po2_decode_into(code, np.empty(code.shape, np.float32))


# ---------------------------------------------------------------- encode / decode

# every float16 bit pattern -> its float32 value: a gather is ~2x faster than numpy's float16 cast
_F16_TO_F32 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


_GATHER = 8192  # values per gather: numpy widens the uint16 indices to int64 first (8 bytes each: 64 KiB)


def _f16_to_f32(arr: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float16 -> float32 by table lookup, a block of rows at a time (bounded index temporaries)."""
    if arr.size < 1024:  # small: numpy's cast has less overhead
        np.copyto(out, arr)
        return out
    bits = arr.view(np.uint16)
    take = _F16_TO_F32.take
    if bits.size <= _GATHER or bits.ndim == 0:
        take(bits, out=out)
        return out
    per_row = max(1, bits.size // bits.shape[0])
    step = max(1, _GATHER // per_row)
    if step == 1 and per_row > _GATHER and bits.ndim > 1:
        for i in range(bits.shape[0]):  # very long rows: recurse row by row
            _f16_to_f32(arr[i], out[i])
        return out
    for r0 in range(0, bits.shape[0], step):
        take(bits[r0:r0 + step], out=out[r0:r0 + step])
    return out


def decode(arr: np.ndarray, fmt: str, n: int | None = None, mode: str = "sign") -> np.ndarray:
    """A chunk of a stored tensor as float32 (bool: +1/-1 or 1/0 of the first n bits)."""
    if fmt == "float32":
        return arr
    if fmt == "float16":
        return _f16_to_f32(arr, np.empty(arr.shape, np.float32))
    if fmt == "po2":
        return po2_decode(arr)
    if fmt == "bool":
        n = arr.shape[-1] * 8 if n is None else n
        out = np.empty((*arr.shape[:-1], n), dtype=np.float32)
        unpack_into(arr, n, out, mode)
        return out
    return arr.astype(np.float32)


def decode_into(arr: np.ndarray, fmt: str, out: np.ndarray, n: int | None = None, mode: str = "sign") -> np.ndarray:
    """decode() into a float32 buffer of the decoded shape (no temporary for float16, float32 and bool)."""
    if fmt == "float16":
        _f16_to_f32(arr, out)
    elif fmt == "float32":
        np.copyto(out, arr)
    elif fmt == "bool":
        unpack_into(arr, out.shape[-1] if n is None else n, out, mode)
    elif fmt == "po2":
        po2_decode_into(arr, out)
    else:
        out[...] = decode(arr, fmt, n, mode)
    return out


def decode_copy(arr: np.ndarray, fmt: str, n: int | None = None, mode: str = "sign") -> np.ndarray:
    """Like decode, but always a new float32 array the caller may modify."""
    out = decode(arr, fmt, n, mode)
    return out.copy() if (out is arr or out.base is arr or np.shares_memory(out, arr)) else out


def encode_into(dst: np.ndarray, x: np.ndarray, fmt: str, mode: str = "sign", ftz: bool = True) -> None:
    """Store a float (or, for bool, boolean) chunk into `dst`, held in `fmt`.

    bool: `x` may be a boolean array (taken as is) or real values (bit = x >= 0).
    float16 flushes subnormals unless `ftz` is False (for values that are
    rarely that small, where the check costs more than the rare slow value).
    """
    if fmt == "bool":
        bits = x if x.dtype == np.bool_ else (x >= 0)
        pack_into(bits, dst)
    elif fmt == "po2":
        po2_encode_into(dst, x)
    elif fmt == "float16":
        store_float16(dst, x, ftz)
    elif fmt == "float32":
        dst[...] = x
    else:
        info = np.iinfo(DTYPES[fmt])
        dst[...] = np.clip(np.rint(x), info.min, info.max)


def encode(x: np.ndarray, fmt: str, mode: str = "sign") -> np.ndarray:
    out = empty(fmt, tuple(x.shape))
    encode_into(out, x, fmt, mode)
    return out


def add_into(dst: np.ndarray, x: np.ndarray, fmt: str) -> None:
    """dst += x for a real-valued stored chunk (float16, po2 and integers through float32)."""
    if fmt == "float32":
        dst += x
    else:
        encode_into(dst, decode(dst, fmt) + x, fmt)


def store(dst: np.ndarray, x: np.ndarray, fmt: str, accumulate: bool) -> None:
    """Write x into a stored chunk, or add it to what is there (a gradient's second writer)."""
    if accumulate:
        add_into(dst, x, fmt)
    else:
        encode_into(dst, x, fmt)


F16_TINY = np.float32(2.0 ** -14)  # float16's smallest normal number
_FLUSH_BLOCK = 1 << 14  # values per block of the flush's boolean masks


def store_float16(dst: np.ndarray, x, ftz: bool = True) -> None:
    """dst (float16) <- x, every value below float16's smallest normal (6.1e-5) in magnitude stored as 0.

    Storing float16 flushes subnormals to zero, as hardware does in its
    flush-to-zero mode (e.g. FZ16 on Armv8.2): numpy converts float16
    subnormals ~40x slower than normal values, and their few bits of precision
    do not matter to training (activation gradients are loss-scaled, see
    trainer.base.loss_scale). Values are copied straight into `dst`, skipping
    those a block's boolean masks find tiny (then set to 0): no float copy of
    x, and masks of at most _FLUSH_BLOCK values.
    """
    x = np.asarray(x)
    if not ftz or x.dtype.kind != "f" or x.dtype == np.float16:
        dst[...] = x
        return
    x = np.broadcast_to(x, dst.shape)
    if x.size == 0:
        return
    if x.ndim == 0:
        dst[...] = 0 if abs(float(x)) < F16_TINY else x
        return
    step = max(1, _FLUSH_BLOCK // max(1, x[0].size))
    for r0 in range(0, x.shape[0], step):
        xb, db = x[r0:r0 + step], dst[r0:r0 + step]
        tiny = np.less(xb, F16_TINY)
        tiny &= np.greater(xb, -F16_TINY)
        if not tiny.any():
            np.copyto(db, xb, casting="same_kind")
            continue
        np.invert(tiny, out=tiny)
        np.copyto(db, xb, casting="same_kind", where=tiny)
        np.invert(tiny, out=tiny)
        db[tiny] = 0
