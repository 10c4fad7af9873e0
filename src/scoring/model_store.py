"""Loading the served model from the registry (or an exported directory) and swapping it safely.

A ``models:/<name>@<alias>`` URI is resolved to its version once, and that version
(``models:/<name>/<version>``) is what gets loaded: if the alias moves meanwhile, the
model and the version it is logged under still agree.

Requests take a reference to the current :class:`LoadedModel` once and use it to
the end, so a reload that swaps in a new champion never changes a model under a
request in flight: old requests finish on the old model, new ones get the new.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from src.config import Settings, env
from src.modeling.model_uri import is_models_uri, parse_model_uri
from src.modeling.tracking import connect
from src.scoring.scorer import Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    scorer: Scorer
    name: str
    version: str
    uri: str
    loaded_at: str
    fairness: dict[str, Any] | None = None  # the gate's fairness verdict recorded with the model

    @property
    def meta(self) -> dict[str, Any]:
        return self.scorer.meta

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "uri": self.uri, "loaded_at": self.loaded_at,
                "dataset": self.meta["dataset"], "threshold": self.scorer.threshold,
                "probabilities_by": self.scorer.engine, "fairness": _fairness_summary(self.fairness)}


def _fairness_summary(verdict: dict[str, Any] | None) -> dict[str, Any]:
    """The fairness floors' verdict and any warning or failure, as the API and pages show it."""
    if verdict is None:
        return {"verdict": "not recorded", "warnings": [], "blocking": []}
    return {"verdict": verdict["verdict"], "warnings": verdict["warnings"], "blocking": verdict["blocking"]}


def resolve_version(uri: str) -> tuple[str, str, str]:
    """Name, version and the by-version URI behind a ``models:/`` URI (an alias is resolved once, here)."""
    ref = parse_model_uri(uri)
    version = ref.version or str(MlflowClient().get_model_version_by_alias(ref.name, str(ref.alias)).version)
    return ref.name, version, ref.by_version(version)


def load_model(uri: str, settings: Settings, *, top_reasons: int | None = None,
               num_threads: int | None = None) -> LoadedModel:
    """Load a pyfunc model (registry URI or local directory) and build its fast scorer.

    The scorer takes serve.top_reasons and serve.num_threads unless given (batch scoring
    sets its own: one LightGBM thread per chunk, the reasons it was asked for).
    """
    started = time.perf_counter()
    local = Path(uri)
    if local.is_dir():
        pyfunc = mlflow.pyfunc.load_model(str(local))
        info_file = local / "registry.json"
        info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.exists() else {}
        name, version = info.get("registered_model", local.name), str(info.get("version", "local"))
    else:
        connect(settings)
        name, version, source = resolve_version(uri) if is_models_uri(uri) else (uri, "unknown", uri)
        pyfunc = mlflow.pyfunc.load_model(source)
    model = pyfunc.unwrap_python_model()
    meta = model.meta
    dataset = meta["dataset"]
    # Described by the model's own inputs: a protected attribute is asked for only from a model
    # trained on it (fairness.use_protected, research), whatever params.yaml says today.
    profile = settings.profile_named(dataset).with_inputs(list(meta["features"]))
    scorer = Scorer(model.pipeline, meta, profile,
                    top_reasons=settings.serve.top_reasons if top_reasons is None else top_reasons,
                    refer_margin=settings.serve.refer_margin,
                    num_threads=settings.serve.num_threads if num_threads is None else num_threads,
                    adverse_reasons=settings.serve.top_reasons)
    loaded = LoadedModel(scorer=scorer, name=name, version=version, uri=uri,
                         loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
                         fairness=getattr(model, "fairness", None))
    log.info("loaded %s v%s from %s in %.1f s (probabilities by %s)", name, version, uri,
             time.perf_counter() - started, scorer.engine)
    return loaded


class ModelHolder:
    """The current model, its loading state, and an atomic swap for reloads."""

    def __init__(self, settings: Settings, uri: str | None = None) -> None:
        self.settings = settings
        self.uri = uri or env.model_uri(settings)
        self.current: LoadedModel | None = None
        self.error: str | None = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.current is not None

    def load(self) -> LoadedModel:
        """Load the configured model and make it current (raises on failure, keeping the old one)."""
        with self._lock:  # one load at a time; requests keep reading self.current meanwhile
            try:
                fresh = load_model(self.uri, self.settings)
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log.exception("could not load model %s", self.uri)
                raise
            self.current, self.error = fresh, None  # a single reference assignment: atomic for readers
            return fresh

    def load_in_background(self) -> threading.Thread:
        def target() -> None:
            try:
                self.load()
            except Exception:  # recorded in self.error and reported by /ready
                log.warning("model not loaded; /ready stays 503: %s", self.error)

        thread = threading.Thread(target=target, name="model-loader", daemon=True)
        thread.start()
        return thread
