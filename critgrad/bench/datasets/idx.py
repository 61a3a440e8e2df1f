"""Reader (and writer, for test fixtures) of the idx format used by MNIST and Fashion-MNIST.

An idx file is: two zero bytes, one byte naming the element type, one byte giving the number of
dimensions ``d``, then ``d`` big-endian uint32 sizes, then the elements in C order, big-endian.
Files may be gzip-compressed (``.gz``), as the original MNIST distribution is.
"""

from __future__ import annotations

import gzip
import math
import os
import struct

import numpy as np

from critgrad.bench.datasets._integrity import corrupt, read_bytes

# Element type codes of the format, and the big-endian numpy type each one stands for.
_TYPE_CODES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF_KIND = {(dtype.kind, dtype.itemsize): code for code, dtype in _TYPE_CODES.items()}


def _open(path: str | os.PathLike, mode: str):
    # gzip is chosen by name rather than by sniffing, so a corrupt .gz fails loudly as gzip.
    return gzip.open(path, mode) if str(path).endswith(".gz") else open(path, mode)


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of one idx file into a native-endian numpy array; CorruptData (a
    ValueError) naming ``source`` when the bytes are not an idx file."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise corrupt(source, "not an idx file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _TYPE_CODES:
        raise corrupt(source, f"unknown idx element type 0x{code:02x}")
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise corrupt(source, "truncated idx header")
    shape = struct.unpack(f">{ndim}I", raw[4:header_end])
    dtype = _TYPE_CODES[code]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header_end != expected:
        raise corrupt(
            source,
            f"idx payload has {len(raw) - header_end} bytes, shape {shape} needs {expected} "
            f"({'truncated' if len(raw) - header_end < expected else 'trailing bytes'})",
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def read_idx_bytes(path: str | os.PathLike) -> bytes:
    """The decompressed bytes of an idx file (``.gz`` or plain); CorruptData naming the file when
    it is empty, damaged or impossibly large."""
    return read_bytes(path)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (``.gz`` or plain) into a numpy array."""
    return parse_idx(read_idx_bytes(path), source=str(path))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an idx file (gzip-compressed when ``path`` ends in ``.gz``)."""
    array = np.asarray(array)
    key = (array.dtype.kind if array.dtype.kind != "b" else "u", array.dtype.itemsize)
    if key not in _CODE_OF_KIND:
        raise ValueError(f"array dtype {array.dtype} has no idx element type")
    code = _CODE_OF_KIND[key]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = np.ascontiguousarray(array, dtype=_TYPE_CODES[code]).tobytes()
    with _open(path, "wb") as handle:
        handle.write(header + payload)
