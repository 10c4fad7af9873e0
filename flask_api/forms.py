"""The loan-officer form, generated from the served model's dataset profile.

Nothing about a dataset is written down here: each profile feature becomes a
field (number input, select of human labels, or free text with suggestions),
and every field is checked by :func:`flask_api.validation.check_value`, the
function the JSON API uses, so a value the form accepts is exactly a value the
API accepts and the messages read the same. WTForms' own parsing (FloatField's
"Not a valid float value", SelectField's "Not a valid choice") is bypassed for
that reason: fields keep the submitted text and check_value decides.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask_wtf import FlaskForm
from wtforms import Field, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import StopValidation
from wtforms.widgets import NumberInput

from flask_api.validation import check_value
from src.config import FeatureSpec, Profile
from src.scoring.scorer import readable_number

NOT_GIVEN = ""  # the select option / empty input that means "no value" for a nullable field


class NumberField(StringField):
    """A number input that keeps the submitted text, so check_value (not WTForms) judges it."""

    widget = NumberInput()


class ProfileCheck:
    """WTForms validator running the API's rule for one feature; keeps the cleaned value on the field."""

    def __init__(self, spec: FeatureSpec, profile: Profile) -> None:
        self.spec = spec
        self.profile = profile
        # "required" makes WTForms render the attribute (announced by screen readers);
        # the form is novalidate, so the server still gives the message.
        self.field_flags = {} if spec.nullable else {"required": True}

    def __call__(self, form: FlaskForm, field: Field) -> None:
        value, problem = check_value(self.spec, field.data, self.profile, strict=False)
        if problem:
            field.clean = None
            raise StopValidation(f"{self.spec.label} {problem}")
        field.clean = value


class ApplicantForm(FlaskForm):
    """Base of the generated per-profile forms."""

    profile: Profile

    def row(self) -> dict[str, Any]:
        """The validated applicant (call after ``validate()`` returned True)."""
        return {name: getattr(self[name], "clean", None) for name in self.profile.features}

    def raw(self) -> dict[str, str]:
        """What was entered, as text (for re-filling the form)."""
        return {name: "" if self[name].data is None else str(self[name].data) for name in self.profile.features}


def fmt_number(value: float | None) -> str:
    """A number as a person would type it: 140000, not 140000.0; 0.1234, not 0.12340000000000001."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    number = float(value)
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else f"{number:.6g}"


def _field(spec: FeatureSpec, profile: Profile) -> Field:
    check = ProfileCheck(spec, profile)
    label = spec.label
    if spec.is_categorical and spec.values is not None:
        choices = [SelectChoice(str(code), text) for code, text in spec.values.items()]
        if spec.nullable:
            choices.insert(0, SelectChoice(NOT_GIVEN, "not given"))
        return SelectField(label, choices=choices, coerce=str, validate_choice=False, validators=[check])
    if spec.is_categorical:
        return StringField(label, validators=[check], render_kw={"list": f"{spec.name}-options",
                                                                 "autocomplete": "off", "spellcheck": "false"})
    attrs: dict[str, Any] = {"step": "any"}
    if spec.min is not None:
        attrs["min"] = fmt_number(spec.min)
    if spec.max is not None:
        attrs["max"] = fmt_number(spec.max)
    return NumberField(label, validators=[check], render_kw=attrs)


_CACHE: dict[str, tuple[Profile, type[ApplicantForm]]] = {}
_CACHE_LOCK = threading.Lock()


def form_class(profile: Profile) -> type[ApplicantForm]:
    """The form class for ``profile``, built once per profile name (rebuilt if that profile changed)."""
    with _CACHE_LOCK:
        cached = _CACHE.get(profile.name)
        if cached is not None and cached[0] == profile:
            return cached[1]
        attrs: dict[str, Any] = {name: _field(spec, profile) for name, spec in profile.features.items()}
        attrs["profile"] = profile
        cls = type(f"ApplicantForm_{profile.name}", (ApplicantForm,), attrs)
        _CACHE[profile.name] = (profile, cls)
        return cls


def default_values(profile: Profile, summary: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The training medians / modes as form text: a typical applicant to start from."""
    out: dict[str, str] = {}
    for name, spec in profile.features.items():
        default = (summary.get(name) or {}).get("default")
        if default is None:
            out[name] = NOT_GIVEN
        elif spec.is_categorical:
            out[name] = str(default)
        else:
            out[name] = fmt_number(default)
    return out


@dataclass(frozen=True)
class FieldInfo:
    """What the template shows around one input: unit, hint, suggestions."""

    name: str
    kind: str  # "number" | "select" | "text"
    unit: str | None
    hint: str
    optional: bool
    options: tuple[str, ...] = ()  # datalist suggestions for open category sets


def field_infos(profile: Profile, summary: Mapping[str, Mapping[str, Any]]) -> list[FieldInfo]:
    """Per field, in profile order: the allowed range (and typical range) in words, and suggestions."""
    infos = []
    for name, spec in profile.features.items():
        entry = summary.get(name) or {}
        parts: list[str] = []
        if spec.is_categorical and spec.values is not None:
            kind, unit = "select", None
        elif spec.is_categorical:
            kind, unit = "text", None
            seen = tuple(str(v) for v in entry.get("seen") or ())
            parts.append(f"Start typing to pick one of {len(seen):,} known values." if seen
                         else "Free text.")
            if name in profile.target_encode:  # unseen categories get the training average
                parts.append("A value the model has not seen counts as an average one.")
        else:
            kind, unit = "number", spec.unit
            unit_text = f" {spec.unit}" if spec.unit else ""
            if spec.min is not None and spec.max is not None:
                parts.append(f"From {readable_number(spec.min)} to {readable_number(spec.max)}{unit_text}.")
            elif spec.min is not None:
                parts.append(f"At least {readable_number(spec.min)}{unit_text}.")
            elif spec.max is not None:
                parts.append(f"At most {readable_number(spec.max)}{unit_text}.")
            if spec.value_labels:
                parts.append(f"Codes: {spec.value_labels_text()}.")
            if entry.get("p01") is not None and entry.get("p99") is not None:
                parts.append(f"Most applicants: {readable_number(entry['p01'])} to {readable_number(entry['p99'])}.")
        if spec.nullable:
            parts.append("Optional: leave empty if unknown.")
        infos.append(FieldInfo(name=name, kind=kind, unit=unit, hint=" ".join(parts), optional=spec.nullable,
                               options=tuple(str(v) for v in entry.get("seen") or ()) if kind == "text" else ()))
    return infos
