"""The strict base every settings model shares: unknown keys, wrong types and out-of-range values are errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Frozen, no unknown keys, no coercion: ``"no"`` is not a boolean, ``2.9`` not a whole number."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, protected_namespaces=())


# LightGBM parameters the profile sets per input (features.<column>.monotone, native_categorical):
# never under train.lgbm nor a profile's lgbm, where they would silently disagree with the columns.
PER_INPUT_LGBM_KEYS = ("monotone_constraints", "monotone_constraint", "mc", "categorical_feature", "cat_feature")


def empty_as_none(value: Any) -> Any:
    """``0``, ``""`` and null all mean "not set" (e.g. ingest.sample_rows: 0 = every row)."""
    return value or None


def as_tuple(value: Any) -> Any:
    """YAML lists become tuples (settings are immutable); anything else is left for the type check."""
    return tuple(value) if isinstance(value, list) else value
