"""A restricted unpickler for the CIFAR python batches: dicts, lists, str/bytes/numbers and plain numeric
numpy arrays, nothing else.

Why not ``pickle.load``: CIFAR's ``data_batch_*`` / ``test_batch`` / ``train`` / ``test`` / ``meta`` files
ARE pickles, and they come from an operator directory a tenant names; unpickling runs whatever callables the
file names (a ``__reduce__`` gadget such as ``os.system``). Why not a hand-written opcode parser: the format
is pickle protocol 2 with numpy's own reconstruction protocol, so parsing it means re-implementing pickle.
Instead this subclasses ``pickle.Unpickler`` and overrides ``find_class`` (the one hook through which a
pickle reaches a callable, as the Python docs' "Restricting Globals" recipe does) so that only these names
resolve, each to a stand-in defined here, never to the real numpy callable:

* ``numpy.dtype`` → :class:`_DtypeSpec`, which accepts only plain numeric dtype codes (no object, void or
  structured dtypes) and records the byte order its ``__setstate__`` is given, checking the rest;
* ``numpy.ndarray`` → a marker, usable only as the first argument of ``_reconstruct``;
* ``numpy(._)core.multiarray._reconstruct`` → :class:`_ArraySpec`, whose ``__setstate__`` builds the array
  itself with ``np.frombuffer`` from the raw bytes after checking shape x itemsize (numpy's own
  ``ndarray.__setstate__`` is never called on pickle-supplied state);
* ``numpy(._)core.numeric._frombuffer`` (protocol 5 arrays) → the same checks, bytes only;
* ``_codecs.encode`` (how Python 3 protocol 2 writes bytes) → latin-1 only.

Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``…) raises ``UnpicklingError`` before it
is called; persistent ids are refused by ``pickle.Unpickler`` itself. The loaded object is then walked and
every stand-in replaced by its array; a stand-in that never got its state is refused.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np

from workers.engine.errors import InvalidInputError

# Plain numeric dtype codes a CIFAR file may use (it uses u1 for the pixels).
SAFE_DTYPE_CODES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8", "b1"})
BYTE_ORDERS = frozenset({"<", ">", "|", "="})
DTYPE_STATE_VERSION = 3  # numpy's dtype pickle state: (3, byteorder, subarray, names, fields, ...)


class _NdarrayMarker:
    """What ``numpy.ndarray`` resolves to: not callable, only accepted by ``_reconstruct``."""


NDARRAY = _NdarrayMarker()


class _DtypeSpec:
    def __init__(self, code: object, align: object = False, copy: object = False) -> None:
        if not isinstance(code, str) or code not in SAFE_DTYPE_CODES:
            raise pickle.UnpicklingError(f"dtype {code!r} is not a plain numeric dtype")
        self.code = code
        self.byte_order = "|"

    def __setstate__(self, state: object) -> None:
        if (
            not isinstance(state, tuple)
            or len(state) < 5
            or state[0] != DTYPE_STATE_VERSION
            or state[1] not in BYTE_ORDERS
            or any(part is not None for part in state[2:5])  # no sub-array, field names or fields
        ):
            raise pickle.UnpicklingError("dtype state is not that of a plain numeric dtype")
        self.byte_order = state[1]

    def dtype(self) -> np.dtype[Any]:
        dtype = np.dtype(self.code)
        if self.byte_order == "<":
            return dtype.newbyteorder("<")
        return dtype.newbyteorder(">") if self.byte_order == ">" else dtype


def _array_from_bytes(raw: object, dtype: object, shape: object, fortran: bool) -> np.ndarray:
    if isinstance(raw, str):
        raw = raw.encode("latin-1")  # Python 2 pickles read with encoding="latin1" (as torchvision does)
    if not isinstance(raw, bytes | bytearray):
        raise pickle.UnpicklingError("array data must be bytes")
    if not isinstance(dtype, _DtypeSpec):
        raise pickle.UnpicklingError("array dtype must come from numpy.dtype")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise pickle.UnpicklingError("array shape must be a tuple of non-negative integers")
    resolved = dtype.dtype()
    if math.prod(shape) * resolved.itemsize != len(raw):
        raise pickle.UnpicklingError(
            f"array of shape {shape} and dtype {resolved} needs {math.prod(shape) * resolved.itemsize} "
            f"bytes, the file holds {len(raw)}"
        )
    flat = np.frombuffer(bytes(raw), dtype=resolved)
    return flat.reshape(shape, order="F" if fortran else "C").copy()


class _ArraySpec:
    def __init__(self, subtype: object, shape: object = (0,), typecode: object = b"b") -> None:
        if subtype is not NDARRAY:
            raise pickle.UnpicklingError("only numpy.ndarray may be reconstructed")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        # numpy's array state: (version, shape, dtype, is_fortran, raw) — or without the version.
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise pickle.UnpicklingError("array state has an unknown layout")
        shape, dtype, fortran, raw = state
        self.array = _array_from_bytes(raw, dtype, shape, bool(fortran))


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> np.ndarray:
    return _array_from_bytes(buffer, dtype, shape, order == "F")


def _latin1_encode(text: object, encoding: object = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin-1 encoding of text is allowed")
    return text.encode("latin-1")


ALLOWED: dict[tuple[str, str], object] = {
    ("numpy", "dtype"): _DtypeSpec,
    ("numpy", "ndarray"): NDARRAY,
    ("numpy.core.multiarray", "_reconstruct"): _ArraySpec,
    ("numpy._core.multiarray", "_reconstruct"): _ArraySpec,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: not a data type") from None


def _resolve(value: object) -> object:
    if isinstance(value, _ArraySpec):
        if value.array is None:
            raise pickle.UnpicklingError("an array without its data")
        return value.array
    if isinstance(value, dict):
        return {_resolve(key): _resolve(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_resolve(item) for item in value)
    if value is None or isinstance(value, str | bytes | int | float | bool | np.ndarray):
        return value
    raise pickle.UnpicklingError(f"unexpected {type(value).__name__} in a data pickle")


def safe_unpickle(data: bytes, what: str) -> object:
    """The data in ``data`` (a pickle), with only the types above; :class:`InvalidInputError` otherwise."""
    try:
        loaded = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
        return _resolve(loaded)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise InvalidInputError(f"{what} is not a safe data pickle: {error}") from None
    except RecursionError:
        raise InvalidInputError(f"{what} is nested too deeply") from None


__all__ = ["RestrictedUnpickler", "safe_unpickle"]
