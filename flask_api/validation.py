"""Applicant validation for the API and the form, generated from the dataset profile.

The pipeline validates whole tables with pandera (src/data/schemas.py); a
request of one applicant needs the same rules in microseconds, so they are
applied here row by row from the very same profile, and published as JSON
Schema at /api/v1/schema. Every problem is reported with its row and field.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from src.config import FeatureSpec, Profile
from src.config.profile import PROTECTED_MESSAGE


@dataclass(frozen=True)
class FieldError:
    row: int
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "field": self.field, "message": self.message}


def _fmt(number: float) -> str:
    return f"{number:g}"


def check_value(spec: FeatureSpec, value: Any, profile: Profile, strict: bool = True) -> tuple[Any, str | None]:
    """Return (clean value, None) or (None, message) for one field of one applicant.

    ``strict`` (the JSON API) wants JSON numbers for numeric fields and coded
    categories; the web form submits text, so it is checked with strict=False.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, (None if spec.nullable else "is required")
    accepted: tuple[type, ...] = (int, float, str) if not strict else (int, float)
    if spec.is_categorical:
        if spec.value_kind is int:
            codes = "must be one of " + ", ".join(f"{k} ({v})" for k, v in (spec.values or {}).items())
            if isinstance(value, bool) or not isinstance(value, accepted):
                return None, codes
            try:
                number = float(value)
            except (ValueError, OverflowError):
                return None, codes
            if not number.is_integer() or int(number) not in (spec.values or {}):
                return None, codes
            return int(number), None
        if not isinstance(value, str):
            return None, "must be a string"
        text = value.strip()
        rule = profile.clean.get(spec.name)
        if rule is not None:
            text = rule.compiled().sub(rule.replace, text).strip()
        if spec.values is not None and text not in spec.values:
            return None, f"must be one of {', '.join(map(str, spec.values))}"
        if not text:
            return None, "must not be empty"
        return text, None
    if isinstance(value, bool) or not isinstance(value, accepted):
        return None, "must be a number"
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an integer beyond any float
        return None, "must be a number"
    if not math.isfinite(number):
        return None, "must be a finite number"
    if spec.min is not None and number < spec.min:
        return None, f"must be at least {_fmt(spec.min)}" + (f" {spec.unit}" if spec.unit else "")
    if spec.max is not None and number > spec.max:
        return None, f"must be at most {_fmt(spec.max)}" + (f" {spec.unit}" if spec.unit else "")
    return number, None


_SLOW = object()  # "not obviously valid": check this row field by field with check_value
Checker = Callable[[Any], Any]


def _number_checker(spec: FeatureSpec) -> Checker:
    # Finite bounds, so inf and nan (which compare False) go the slow way and get their message.
    low = -sys.float_info.max if spec.min is None else spec.min
    high = sys.float_info.max if spec.max is None else spec.max
    nullable = spec.nullable

    def check(value: Any) -> Any:
        kind = type(value)  # exact types: bool (an int subclass) and str take the slow path
        if (kind is int or kind is float) and low <= value <= high:
            return float(value)
        if value is None and nullable:
            return None
        return _SLOW

    return check


def _code_checker(spec: FeatureSpec, profile: Profile) -> Checker:
    nullable = spec.nullable
    if spec.value_kind is int:
        int_codes = frozenset(spec.values or ())
        wanted: type = int
        codes: frozenset[Any] = int_codes
    else:
        rule = profile.clean.get(spec.name)
        pattern = rule.compiled() if rule is not None else None
        # Only labels that cleaning leaves unchanged may skip it; open sets always go the slow way.
        codes = frozenset(k for k in (spec.values or ()) if isinstance(k, str) and k and k.strip() == k and (
            pattern is None or pattern.sub(rule.replace, k).strip() == k))  # type: ignore[union-attr]
        wanted = str

    def check(value: Any) -> Any:
        if type(value) is wanted and value in codes:
            return value
        if value is None and nullable:
            return None
        return _SLOW

    return check


_PLANS: dict[int, tuple[Profile, frozenset[str], list[tuple[str, Checker]]]] = {}


def _fast_plan(profile: Profile) -> tuple[frozenset[str], list[tuple[str, Checker]]]:
    """Per-field checkers that accept only plainly valid JSON values, built once per profile.

    A row of plain in-range numbers and known codes (nearly every real request)
    is cleaned in a few microseconds; anything else falls back to
    :func:`check_value`, which gives the same clean values and the error messages.
    """
    cached = _PLANS.get(id(profile))
    if cached is not None and cached[0] is profile:
        return cached[1], cached[2]
    checkers = [(name, _code_checker(spec, profile) if spec.is_categorical else _number_checker(spec))
                for name, spec in profile.features.items()]
    names = frozenset(profile.features)
    _PLANS[id(profile)] = (profile, names, checkers)
    return names, checkers


def _fast_row(row: dict[str, Any], names: frozenset[str], checkers: list[tuple[str, Checker]],
              ) -> dict[str, Any] | None:
    if row.keys() != names:
        return None
    out = {}
    for name, check in checkers:
        value = check(row[name])
        if value is _SLOW:
            return None
        out[name] = value
    return out


def validate_applicants(rows: list[Any], profile: Profile, strict: bool = True,
                        ) -> tuple[list[dict[str, Any]], list[FieldError]]:
    """Clean every row, collecting every error (unknown, missing, wrong type, out of range)."""
    clean: list[dict[str, Any]] = []
    errors: list[FieldError] = []
    features = profile.features
    names, checkers = _fast_plan(profile)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            errors.append(FieldError(i, "", "each applicant must be a JSON object"))
            continue
        if strict and (fast := _fast_row(row, names, checkers)) is not None:
            clean.append(fast)
            continue
        errors.extend(FieldError(i, str(key), PROTECTED_MESSAGE if key in profile.protected else "is not a known field")
                      for key in row if key not in features)
        out: dict[str, Any] = {}
        for name, spec in features.items():
            value, problem = check_value(spec, row.get(name), profile, strict)
            if problem:
                errors.append(FieldError(i, name, problem))
            out[name] = value
        clean.append(out)
    return clean, errors


def applicant_json_schema(profile: Profile) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one applicant, from the profile."""
    properties: dict[str, Any] = {}
    for name, spec in profile.features.items():
        prop: dict[str, Any] = {"title": spec.label}
        if spec.is_categorical:
            if spec.values is not None:
                prop["enum"] = list(spec.values)
                prop["description"] = "; ".join(f"{k} = {v}" for k, v in spec.values.items())
                prop["type"] = "integer" if spec.value_kind is int else "string"
            else:
                prop.update(type="string", minLength=1)
        else:
            prop["type"] = "number"
            if spec.min is not None:
                prop["minimum"] = spec.min
            if spec.max is not None:
                prop["maximum"] = spec.max
            notes = [f"unit: {spec.unit}"] if spec.unit else []
            if spec.value_labels:
                notes.append(f"codes: {spec.value_labels_text()}")
            if notes:
                prop["description"] = "; ".join(notes)
        if spec.nullable:
            prop["type"] = [prop["type"], "null"]
            if "enum" in prop:
                prop["enum"] = [*prop["enum"], None]
        properties[name] = prop
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Applicant ({profile.name})",
        "type": "object",
        "properties": properties,
        "required": [n for n, s in profile.features.items() if not s.nullable],
        "additionalProperties": False,
    }
