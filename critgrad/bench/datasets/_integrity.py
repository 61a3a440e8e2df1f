"""Reading files from user folders without trusting them.

Every loader reads through these helpers, so that a file that is empty, truncated, not in its
format, or larger than any real one gives one :class:`~critgrad.bench.contract.CorruptData` naming
the file, never an ``EOFError`` from deep inside a decompressor; and so that nothing in a data
folder can run code:

* :func:`read_bytes` decompresses ``.gz`` / ``.bz2`` by name (so a damaged archive fails as one) up
  to a size limit, and reports a damaged stream with the file's name;
* :func:`load_pickle` reads a pickle with an unpickler that can build only what the official CIFAR
  files contain (dicts, lists, tuples, strings, bytes, numbers and numpy arrays of plain numeric
  types) and refuses every other global a pickle names, before anything is built with it.
  ``pickle.loads`` on a file someone hands you runs whatever callable the file names.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from critgrad.bench.contract import CorruptData

# Larger than any file of the supported data sets (CIFAR's train pickle is 150 MB, MNIST's largest
# idx file 47 MB; GloVe and SNLI are streamed, not read whole); a file claiming more is not one.
DEFAULT_LIMIT = 1 << 30
_STREAM_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)


def corrupt(path: str | os.PathLike, what: str) -> CorruptData:
    """The error for a bad data file: its path, then what is wrong, on one line."""
    return CorruptData(f"{path}: {' '.join(str(what).split())}")


def open_stream(path: str | os.PathLike):
    """A binary stream of ``path``, decompressed by its suffix (``.gz``, ``.bz2``)."""
    name = str(path)
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def read_bytes(path: str | os.PathLike, limit: int = DEFAULT_LIMIT) -> bytes:
    """The (decompressed) contents of ``path``; CorruptData when it is empty, damaged, or larger
    than ``limit`` bytes."""
    try:
        with open_stream(path) as stream:
            raw = stream.read(limit + 1)
    except _STREAM_ERRORS as error:
        raise corrupt(path, f"cannot be read ({type(error).__name__}: {error})") from None
    if not raw:
        raise corrupt(path, "empty file")
    if len(raw) > limit:
        raise corrupt(path, f"larger than {limit} bytes, more than any file of this data set")
    return raw


def read_text(path: str | os.PathLike, limit: int = DEFAULT_LIMIT) -> str:
    """``read_bytes`` decoded as UTF-8, line ends translated as ``open()`` does in text mode
    (``\r\n`` and ``\r`` become ``\n``); CorruptData naming the byte offset otherwise."""
    raw = read_bytes(path, limit)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise corrupt(path, f"not UTF-8 text (byte {error.start}: {error.reason})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# ---- pickles ------------------------------------------------------------------------------------


def _array_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:  # an object array unpickles its items: refuse it outright
        raise pickle.UnpicklingError(f"refused: a numpy array of {dtype} (holds Python objects)")
    return dtype


class _ArrayType:
    """What ``numpy.ndarray`` resolves to: a marker that ``_reconstruct`` accepts as the array
    type, and that cannot be called to build anything itself."""


_NDARRAY = _ArrayType()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("refused: an array of another type than numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, _array_dtype(dtype))


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    array = np.frombuffer(buffer, dtype=_array_dtype(dtype))
    return array.reshape(shape, order=order)


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    # How Python 3 pickles bytes at protocol 2: harmless, and needed for re-pickled copies.
    return text.encode(encoding)


# (module, name) -> what the unpickler may build for it. Nothing else resolves.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _array_dtype,
    ("_codecs", "encode"): _codecs_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, str, bytes, numbers and plain numpy arrays; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused: the file asks for {module}.{name}, which a data file has no need of "
                "(only dicts, lists, strings, bytes, numbers and numpy arrays are read)"
            ) from None


def load_pickle(blob: bytes, source: str | os.PathLike) -> Any:
    """Unpickle ``blob`` (read from ``source``) with :class:`SafeUnpickler`, Python 2 strings as
    bytes; CorruptData naming ``source`` for anything it refuses or cannot parse."""
    try:
        return SafeUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        if str(error).startswith("refused"):
            raise corrupt(source, f"not a data pickle, {error}") from None
        raise corrupt(source, f"not a readable pickle ({error})") from None
    except (
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        RecursionError,
    ) as error:
        raise corrupt(source, f"not a readable pickle ({type(error).__name__}: {error})") from None


# ---- a per-process memo of files already verified --------------------------------------------

_VERIFIED: dict[tuple, Any] = {}


def file_identity(*paths: Path) -> tuple:
    """What tells a verified file from a changed one: path, size and modification time."""
    identity = []
    for path in paths:
        stat = path.stat()
        identity.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return tuple(identity)


def once(key: tuple, check: Callable[[], Any]) -> Any:
    """``check()``, remembered for ``key`` (a failure is not remembered: it raises each time)."""
    if key not in _VERIFIED:
        _VERIFIED[key] = check()
    return _VERIFIED[key]
