"""What the pipeline measured about a model version, for the service's model page: its curves, confusion
matrix, importance, fairness by group, gate verdict and model card.

Read from the files the evaluate, fairness and register stages wrote and the register stage logged
with the version's MLflow run (``plots/``, ``metrics/``, ``model_card.md``): from an exported model
folder's ``evaluation/`` copy (the image has no registry to ask), else downloaded once per run from
the registry into a cache. Nothing is recomputed here, so the page shows exactly what the gate judged.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from src.config import Settings
from src.modeling.registry import EVALUATION_DIR, download_evaluation
from src.modeling.tracking import connect
from src.scoring.model_store import LoadedModel

log = logging.getLogger(__name__)


class EvaluationMissing(Exception):
    """No evaluation for that version here; the message says why, for the page (status: 404 or 503)."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Evaluation:
    """One model version's evaluation on its test split (empty lists / None: a file the run did not log)."""

    roc: list[dict[str, float]]
    prc: list[dict[str, float]]
    calibration: list[dict[str, float]]
    importance: list[dict[str, Any]]
    confusion: dict[str, int] | None  # tn, fp, fn, tp at the threshold
    test: dict[str, Any] | None
    fairness: dict[str, Any] | None
    gate: dict[str, Any] | None
    card: str | None


def read_report(path: Path) -> Any:
    """A JSON report if it exists and parses, else None (one the pipeline or the monitor has not written yet)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", path, exc)
        return None


def _confusion(path: Path) -> dict[str, int] | None:
    """plots/confusion.csv (one ``actual,predicted`` row per test applicant) counted into its four cells."""
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            cells = {"tn": 0, "fp": 0, "fn": 0, "tp": 0}
            names = {("0", "0"): "tn", ("0", "1"): "fp", ("1", "0"): "fn", ("1", "1"): "tp"}
            for row in csv.DictReader(fh):
                cells[names[row["actual"], row["predicted"]]] += 1
    except (OSError, KeyError):
        return None
    return cells


def read_evaluation(folder: Path) -> Evaluation:
    plots, metrics = folder / "plots", folder / "metrics"
    card = folder / "model_card.md"
    return Evaluation(
        roc=read_report(plots / "roc.json") or [], prc=read_report(plots / "prc.json") or [],
        calibration=read_report(plots / "calibration.json") or [],
        importance=read_report(plots / "importance.json") or [],
        confusion=_confusion(plots / "confusion.csv"), test=read_report(metrics / "test.json"),
        fairness=read_report(metrics / "fairness.json"), gate=read_report(metrics / "gate.json"),
        card=card.read_text(encoding="utf-8") if card.is_file() else None)


class EvaluationSource:
    """Finds a version's evaluation: the served export's own copy, else the registry's run (cached per run)."""

    def __init__(self, settings: Settings, cache: Path | None = None) -> None:
        self.settings = settings
        self.cache = cache or Path(tempfile.gettempdir()) / "credit-default-evaluations"
        self._lock = threading.Lock()

    def for_version(self, served: LoadedModel, version: str | None = None) -> tuple[str, Evaluation]:
        """(version, its evaluation) of the served model's registered name; the served version by default."""
        version = version or served.version
        exported = Path(served.uri) / EVALUATION_DIR
        if version == served.version and Path(served.uri).is_dir():
            if not exported.is_dir():
                raise EvaluationMissing(f"The exported model at {served.uri} carries no evaluation (exported "
                                        f"before exports did); export it again to see it here.")
            return version, read_evaluation(exported)
        return version, read_evaluation(self._from_registry(served.name, version))

    def _from_registry(self, name: str, version: str) -> Path:
        try:
            connect(self.settings)
            run_id = MlflowClient().get_model_version(name, version).run_id
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
                raise EvaluationMissing(f"{name} has no version {version}.") from exc
            raise EvaluationMissing(f"The model registry cannot be reached to show version {version}: "
                                    f"{str(exc).splitlines()[0]}", 503) from exc
        except OSError as exc:
            raise EvaluationMissing(f"The model registry cannot be reached to show version {version}: {exc}",
                                    503) from exc
        folder = self.cache / run_id
        with self._lock:
            if not folder.is_dir():
                partial = Path(tempfile.mkdtemp(prefix=f".{run_id}-", dir=self._cache_dir()))
                try:
                    if not download_evaluation(run_id, partial):
                        raise EvaluationMissing(f"Version {version}'s run logged no evaluation.")
                    partial.replace(folder)
                finally:
                    shutil.rmtree(partial, ignore_errors=True)
        return folder

    def _cache_dir(self) -> Path:
        self.cache.mkdir(parents=True, exist_ok=True)
        return self.cache
