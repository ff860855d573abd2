"""An unpickler for data files: it builds dicts, lists, tuples, strings, bytes, numbers and numpy
arrays, and refuses every other object before anything of it runs.

Pickle is a small program: its ``GLOBAL``/``STACK_GLOBAL`` opcodes import any callable and its
``REDUCE`` opcode calls it, so ``pickle.load`` on a CIFAR batch from an untrusted copy runs whatever
the file says (``os.system``, ...). Containers, strings and numbers need no global at all; the only
globals a numpy array needs are its rebuild function (``_reconstruct``, or ``_frombuffer`` in
protocol 5), its class and its dtype. Those are all that
:class:`DataUnpickler` looks up; any other name raises :class:`UnsafePickleError` at the opcode that
asks for it, before the call. The same idea as ``torch.load(weights_only=True)``, for numpy.

numpy writes its rebuild function under the module it lived in when the file was written:
``numpy.core.multiarray`` (numpy 1, the official CIFAR files) or ``numpy._core.multiarray`` (numpy 2).
Both names are admitted and mapped to the installed numpy's, without importing the deprecated
``numpy.core`` alias.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

# The installed numpy's multiarray module: numpy._core in numpy 2, numpy.core in numpy 1.
try:
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # numpy 1
    from numpy.core import multiarray as _multiarray, numeric as _numeric

_LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1")


def _encode_latin1(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (``encode(text, "latin1")``), and only so."""
    if not isinstance(text, str) or str(encoding).lower() not in _LATIN1:
        raise UnsafePickleError(f"_codecs.encode({type(text).__name__}, {encoding!r}): only latin1 text is admitted")
    return codecs.encode(text, "latin1")


# (module, name) -> the object the unpickler gets for it. Nothing outside this table is imported.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(module, "_reconstruct"): _multiarray._reconstruct
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _multiarray.scalar  # numpy scalars, e.g. a np.int64 label
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _numeric._frombuffer  # arrays pickled with protocol 5
       for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode_latin1,  # bytes in protocol 2 written by Python 3
}
ALLOWED = "dicts, lists, tuples, strings, bytes, numbers and numpy arrays"


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for an object outside :data:`ALLOWED_GLOBALS`; nothing of it was called."""


class DataUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` returns only the entries of :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused to load the global {module}.{name}; admitted: {ALLOWED}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refused a persistent id {pid!r}; admitted: {ALLOWED}")


def load_data_pickle(path: str | Path, encoding: str = "ASCII") -> Any:
    """The object pickled in ``path``, built by :class:`DataUnpickler`.

    Args:
        path: the pickle file.
        encoding: how Python 2 ``str`` objects are decoded (``"latin1"`` for the CIFAR batches, whose
            numpy arrays were pickled as Python 2 strings), as ``pickle.load`` takes it.

    Raises:
        UnsafePickleError: the file asks for a global outside the allow-list (the message names it).
        pickle.UnpicklingError, EOFError, ...: whatever ``pickle.load`` raises on bytes that are not a pickle.
    """
    with open(path, "rb") as f:
        return DataUnpickler(f, encoding=encoding).load()
