"""Did this pipeline run promote a new champion? Read from metrics/gate.json (the register stage's report).

The retrain workflow saves gate.json before ``dvc repro`` and asks afterwards: a
report identical to the saved one means the register stage did not run at all
(nothing changed, or DVC restored it from the cache); ``already_registered`` means
the same model bytes were registered before; otherwise a passed gate moved the
``champion`` alias to the reported version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_report(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def champion_promoted(after: dict[str, Any] | None, before: dict[str, Any] | None = None) -> bool:
    """True when ``after`` records a new version that passed the gate (and so became champion) in this run."""
    if not after or after.get("already_registered") or after.get("decision") != "passed":
        return False
    return after != before


def outputs(after: dict[str, Any] | None, before: dict[str, Any] | None) -> dict[str, str]:
    """key=value pairs for $GITHUB_OUTPUT: promoted, and the champion's model URI when it changed."""
    promoted = champion_promoted(after, before)
    out = {"promoted": "true" if promoted else "false"}
    if promoted and after:
        out.update(model=str(after.get("registered_model", "")), version=str(after.get("version", "")),
                   model_uri=f"models:/{after.get('registered_model')}/{after.get('version')}")
    return out
