"""Small helpers every stage shares: logging set-up, user-facing errors, file output."""

from __future__ import annotations

import gc
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.config import ConfigError, env

if TYPE_CHECKING:
    import pandas as pd

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class PipelineError(RuntimeError):
    """An error the user can act on; printed as one clear line, never as a traceback."""


class _MainModuleName(logging.Filter):
    """Show ``python -m src.data.ingest``'s records as ``src.data.ingest``, not ``__main__``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "__main__":
            spec = getattr(sys.modules.get("__main__"), "__spec__", None)
            record.name = spec.name if spec else record.name
        return True


def freeze_survivors() -> None:
    """Move everything alive now (imports, a loaded model, an engine) to the garbage collector's permanent
    generation, for a long-running process about to start its loop (a gunicorn worker, the log shipper).
    Left in the collector, every full collection walks those objects again: a CPU burst of several ms,
    a few times a minute, that requests queue behind. Collections then scan only what the loop creates."""
    gc.collect()
    gc.freeze()


def setup_logging() -> None:
    """Configure the root logger once, from the entry point (never at import time)."""
    level = (env.text(env.LOG_LEVEL) or "INFO").upper()
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_MainModuleName())


def run_main(stage: Callable[[], None]) -> None:
    """Run a stage's ``main`` so that expected failures exit 1 with a readable message."""
    setup_logging()
    log = logging.getLogger(stage.__module__)
    try:
        stage()
    except (PipelineError, ConfigError) as exc:
        log.error("%s", exc)
        sys.exit(1)


def write_json(path: Path, payload: Any) -> None:
    """Write JSON with a trailing newline, creating the folder; small files, diff-friendly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_table(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)


def _require(path: Path) -> None:
    if not path.exists():
        raise PipelineError(f"{path} is missing: run the stage that produces it first (dvc repro)")


def read_table(path: Path) -> pd.DataFrame:
    import pandas as pd  # noqa: PLC0415  (the CLIs that only log, e.g. python -m src.deploy, start 0.6 s sooner)

    _require(path)
    return pd.read_parquet(path)


def read_json(path: Path) -> Any:
    """An earlier stage's JSON output (a clear error naming it when that stage has not run)."""
    _require(path)
    return json.loads(path.read_text(encoding="utf-8"))
