"""One applicant through LightGBM's single-row C API: the trees' own cost, not the wrapper's.

``Booster.predict`` on a one-row matrix spends most of its time in Python
(a predictor object and a parameter string per call, four C calls, each giving up
and retaking the GIL); the trees themselves take a few microseconds. LightGBM's C
API has a path made for this case: ``LGBM_BoosterPredictForMatSingleRowFastInit``
prepares a prediction (type, iterations, threads) once and
``LGBM_BoosterPredictForMatSingleRowFast`` then scores one row per call. A
prepared configuration may not be shared between threads, so each thread gets its
own. Probabilities are called without releasing the GIL (a few microseconds: a
hand-over to another thread and back costs more than it frees); TreeSHAP
contributions, ~100x the work, release it. Tests check both against
``Booster.predict`` on whole test splits, bit for bit.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np
from lightgbm import Booster
from lightgbm.basic import _LIB

NORMAL, CONTRIB = 0, 3  # C_API_PREDICT_NORMAL (probability), C_API_PREDICT_CONTRIB (TreeSHAP)
FLOAT64 = 1  # C_API_DTYPE_FLOAT64

# The same library LightGBM's wrapper loaded, once more through PyDLL: its calls keep the GIL.
_HOLD_GIL = ctypes.PyDLL(_LIB._name)


def _error() -> str:
    return _LIB.LGBM_GetLastError().decode("utf-8", "replace")


class _Prepared:
    """One thread's prepared prediction of one type: LightGBM's FastConfig, its input and output."""

    def __init__(self, booster: Booster, kind: int, num_iteration: int, n_columns: int, threads: int) -> None:
        self.booster = booster  # the handle must outlive the configuration built on it
        self.handle = ctypes.c_void_p()
        parameters = f"num_threads={threads}".encode() if threads else b""
        status = _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(kind), ctypes.c_int(0), ctypes.c_int(num_iteration),
            ctypes.c_int(FLOAT64), ctypes.c_int32(n_columns), ctypes.c_char_p(parameters),
            ctypes.byref(self.handle))
        if status != 0:
            raise RuntimeError(f"LightGBM could not prepare single-row prediction: {_error()}")
        self.row = np.zeros(n_columns, dtype=np.float64)
        self.out = np.zeros(n_columns + 1 if kind == CONTRIB else 1, dtype=np.float64)
        self.written = ctypes.c_int64()
        self.args = (self.handle, ctypes.c_void_p(self.row.ctypes.data), ctypes.byref(self.written),
                     ctypes.c_void_p(self.out.ctypes.data))
        library = _LIB if kind == CONTRIB else _HOLD_GIL
        self.call = library.LGBM_BoosterPredictForMatSingleRowFast

    def __call__(self, row: np.ndarray) -> np.ndarray:
        self.row[:] = row
        if self.call(*self.args) != 0:
            raise RuntimeError(f"LightGBM single-row prediction failed: {_error()}")
        return self.out.copy()

    def __del__(self) -> None:
        if self.handle:
            _LIB.LGBM_FastConfigFree(self.handle)
            self.handle = ctypes.c_void_p()


class SingleRowPredictor:
    """``probability(row)`` and ``contributions(row)`` for one encoded row, as ``Booster.predict`` gives them."""

    def __init__(self, booster: Booster, num_iteration: int, n_columns: int, threads: int = 0) -> None:
        self.booster = booster
        self.num_iteration = num_iteration
        self.n_columns = n_columns
        self.threads = threads
        self._local = threading.local()  # per thread: {kind: _Prepared}

    def _prepared(self, kind: int) -> _Prepared:
        cache: dict[int, _Prepared] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        prepared = cache.get(kind)
        if prepared is None:
            prepared = cache[kind] = _Prepared(self.booster, kind, self.num_iteration, self.n_columns, self.threads)
        return prepared

    def probability(self, row: np.ndarray) -> np.ndarray:
        """Shape (1,): the probability of default."""
        return self._prepared(NORMAL)(row)

    def contributions(self, row: np.ndarray) -> np.ndarray:
        """Shape (1, n_columns + 1): TreeSHAP log-odds per column, then the bias."""
        return self._prepared(CONTRIB)(row).reshape(1, -1)

    def __getstate__(self) -> dict[str, Any]:  # prepared configurations are per process and per thread
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
