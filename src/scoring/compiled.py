"""The booster's trees compiled to native code (lleaves + LLVM) for scoring on the request path.

LightGBM's ``Booster.predict`` walks its trees in a generic interpreter; lleaves
compiles the same model text into a native function, several times faster on one row
and on a batch (docs/performance.md). The probabilities are LightGBM's own up to float rounding
(1e-15 here): every compiled model is checked against the booster on probe rows
spread over each feature's range (plus missing values) before it is used, and any
problem (lleaves not installed, a compile error, a mismatch) leaves the booster in
charge with a warning. Reasons (``pred_contrib``) always come from LightGBM.

Compiling takes a few seconds, so the object code is cached on disk under a key
made of the model text and the compiler versions; gunicorn workers and restarts
after the first load it in milliseconds. A cache file is written to a temporary
name and renamed into place, so concurrent workers never read a partial one, and it
is loaded only if its SHA-256 matches the digest recorded when it was compiled (LLVM
aborts the process on a damaged object file; a mismatch just compiles again).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PROBE_ROWS = 512
PROBE_SEED = 20261121
TOLERANCE = 1e-9  # probability units; the compiled trees differ from LightGBM by float rounding only


class CompileError(RuntimeError):
    """The trees could not be compiled, or the compiled function disagrees with LightGBM."""


@dataclass(frozen=True)
class CompiledTrees:
    """A compiled binary classifier: ``predict(matrix)`` gives P(class 1), one thread, like the booster."""

    model: Any  # lleaves.Model
    cache_file: Path
    seconds: float  # compile (or cache load) time
    from_cache: bool
    max_difference: float  # largest |compiled - LightGBM| on the probe rows

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return self.model.predict(matrix, n_jobs=1)


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "credit-default-compiled"


def _versions() -> str:
    parts = []
    for package in ("lleaves", "llvmlite"):
        try:
            parts.append(f"{package}={version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package}=none")
    return ";".join([*parts, platform.machine(), platform.python_version()])


def probe_matrix(model_text: str, n_features: int, rows: int = PROBE_ROWS, seed: int = PROBE_SEED) -> np.ndarray:
    """Rows spread over every feature's range from the model's ``feature_infos`` line, ~10 % missing.

    ``[lo:hi]`` is a numeric feature's training range; ``a:b:c`` a LightGBM categorical's
    values; ``none`` a feature the trees never split on.
    """
    infos: list[str] = []
    for line in model_text.splitlines():
        if line.startswith("feature_infos="):
            infos = line.removeprefix("feature_infos=").split()
            break
    if len(infos) != n_features:
        raise CompileError(f"model text has {len(infos)} feature_infos for {n_features} features")
    rng = np.random.default_rng(seed)
    matrix = np.empty((rows, n_features), dtype=np.float64)
    for j, info in enumerate(infos):
        if info.startswith("["):
            low, high = (float(x) for x in info.strip("[]").split(":"))
            matrix[:, j] = rng.uniform(low - 0.1 * abs(low) - 1, high + 0.1 * abs(high) + 1, rows)
        elif info == "none":
            matrix[:, j] = rng.normal(size=rows)
        else:
            matrix[:, j] = rng.choice([float(v) for v in info.split(":")], size=rows)
    matrix[rng.random((rows, n_features)) < 0.1] = np.nan
    return matrix


_compile_lock = threading.Lock()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compile_trees(booster: Any, num_iteration: int, cache_dir: Path | None = None,
                  tolerance: float = TOLERANCE) -> CompiledTrees:
    """Compile (or load from the cache) the first ``num_iteration`` trees; check them against LightGBM."""
    try:
        import lleaves  # noqa: PLC0415 - optional and heavy (LLVM): only when compiling is asked for
    except Exception as exc:  # ImportError, or OSError when LLVM's shared library cannot load
        raise CompileError(f"lleaves cannot be imported ({type(exc).__name__}: {exc})") from exc
    started = time.perf_counter()
    text = booster.model_to_string(num_iteration=num_iteration)
    key = hashlib.sha256(f"{_versions()}\n{text}".encode()).hexdigest()[:32]
    directory = cache_dir or default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    model_file = directory / f"{key}.txt"
    cache_file = directory / f"{key}.so"
    unique = f"{os.getpid()}-{threading.get_ident()}"
    if not model_file.exists():
        staged = directory / f"{key}.{unique}.txt.tmp"
        staged.write_text(text, encoding="utf-8")
        os.replace(staged, model_file)
    digest_file = directory / f"{key}.so.sha256"
    model = lleaves.Model(model_file=str(model_file))
    # LLVM aborts the whole process on a damaged object file, so a cache file is used only when its
    # digest matches the one written next to it at compile time; anything else is compiled afresh.
    from_cache = cache_file.exists() and digest_file.exists() and \
        digest_file.read_text(encoding="utf-8").strip() == _sha256(cache_file)
    try:
        with _compile_lock:  # one LLVM compile at a time per process (reloads may overlap)
            if from_cache:
                model.compile(cache=str(cache_file))
            else:
                staged = directory / f"{key}.{unique}.so.tmp"
                model.compile(cache=str(staged))
                staged_digest = directory / f"{key}.{unique}.sha256.tmp"
                staged_digest.write_text(_sha256(staged), encoding="utf-8")
                os.replace(staged, cache_file)
                os.replace(staged_digest, digest_file)
    except Exception as exc:
        raise CompileError(f"lleaves could not compile the model: {exc}") from exc
    seconds = time.perf_counter() - started

    probe = probe_matrix(text, booster.num_feature())
    expected = np.asarray(booster.predict(probe, num_iteration=num_iteration, num_threads=1), dtype=np.float64)
    got = np.asarray(model.predict(probe, n_jobs=1), dtype=np.float64)
    if got.shape != expected.shape:
        raise CompileError(f"compiled model gives shape {got.shape}, LightGBM {expected.shape}")
    difference = float(np.max(np.abs(got - expected))) if len(expected) else 0.0
    if not difference <= tolerance:  # also catches NaN
        raise CompileError(f"compiled model differs from LightGBM by {difference:.3g} on probe rows "
                           f"(tolerance {tolerance:g})")
    return CompiledTrees(model=model, cache_file=cache_file, seconds=seconds, from_cache=from_cache,
                         max_difference=difference)
