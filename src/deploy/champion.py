"""Did this pipeline run promote a new champion? Asked of the registry, not of a file.

The retrain workflow asks the registry for the champion's version before ``dvc repro``
(``python -m src.deploy champion``) and again afterwards (``promoted --before V``): the
alias pointing at another version means the register stage's gate promoted a new model.
A rerun that registered nothing, or a model that failed the gate, leaves it where it was.
"""

from __future__ import annotations

from src.modeling.registry import champion_promoted


def outputs(name: str, after: str | None, before: str | None) -> dict[str, str]:
    """key=value pairs for $GITHUB_OUTPUT: promoted, and the champion's model URI when it changed."""
    promoted = champion_promoted(after, before)
    out = {"promoted": "true" if promoted else "false"}
    if promoted:
        out.update(model=name, version=str(after), model_uri=f"models:/{name}/{after}")
    return out
