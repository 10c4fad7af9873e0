"""The one parser of ``models:/`` URIs: ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.

The container build, the registry CLI, the service and batch scoring all name a model
this way (as MLflow does); parsing it in one place keeps them agreeing on what is valid.
"""

from __future__ import annotations

from typing import NamedTuple

from src.common import PipelineError

MODELS_SCHEME = "models:/"


class ModelRef(NamedTuple):
    """A parsed ``models:/`` URI: the name, and either an alias or a version (the other is None)."""

    name: str
    alias: str | None
    version: str | None

    def by_version(self, version: str | int) -> str:
        """``models:/<name>/<version>``: the URI that keeps naming one model whatever the aliases do."""
        return f"{MODELS_SCHEME}{self.name}/{version}"


def is_models_uri(uri: str) -> bool:
    return uri.startswith(MODELS_SCHEME)


def parse_model_uri(uri: str) -> ModelRef:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> (name, alias, version), one of them None."""
    ref = uri.removeprefix(MODELS_SCHEME) if uri.startswith(MODELS_SCHEME) else None
    if ref and "@" in ref:
        name, alias = ref.split("@", 1)
        if name and alias and "/" not in name:
            return ModelRef(name, alias, None)
    elif ref and ref.count("/") == 1:
        name, version = ref.split("/")
        if name and version.isdigit():
            return ModelRef(name, None, version)
    raise PipelineError(f"model URI '{uri}' is not models:/<name>@<alias> or models:/<name>/<version>")
