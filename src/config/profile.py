"""A dataset profile: where its raw file comes from, how its columns are named, typed and bounded.

Everything the pipeline, the service and batch scoring know about a dataset's columns comes
from here, so a row the model is trained on and a row it scores are described once.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from src.config.base import PER_INPUT_LGBM_KEYS, Strict, as_tuple
from src.config.errors import ConfigError, KeyProblem, config_error

FeatureType = Literal["numeric", "categorical"]
RawFormat = Literal["csv", "xls", "xlsx", "parquet"]
Direction = Literal["increasing", "decreasing"]
PROTECTED_MESSAGE = "is a protected attribute (a prohibited basis for a credit decision); the model does not use it"


class FeatureSpec(Strict):
    """One model input column: its type and the values a valid row may hold."""

    name: str
    type: FeatureType
    label: str = ""  # shown in forms and reasons; empty: the column's name
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    # code -> human-readable label for categorical columns; None = open set
    # (any non-empty string, e.g. 300 city names).
    values: dict[int | str, str] | None = None
    # Numeric columns only: values that are codes rather than amounts (Taiwan's repayment
    # status: -1 = "paid in full", not "-1 months late"), shown as their label.
    value_labels: dict[float, str] | None = None
    # Risk direction: the predicted risk may only rise (increasing) or only fall (decreasing) as
    # this input grows (LightGBM's monotone_constraints). Numeric inputs, or ordinal categories
    # in the order their values are listed; never a target-encoded column.
    monotone: Direction | None = None
    # Adverse-action reason: a stable code and the plain statement a declined applicant is given
    # (with their value) when this input raised their risk most. Required of every model input.
    reason_code: str | None = Field(None, pattern=r"^[A-Z][A-Z0-9]{1,7}$")
    reason: str | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _check(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        ftype = raw.get("type")
        if ftype not in ("numeric", "categorical"):
            return raw  # the type's own error names the allowed ones
        values = raw.get("values")
        if values is not None:
            if ftype == "numeric":
                raise KeyProblem("values", "is for categorical features (numeric ones have min, max, value_labels)")
            if not isinstance(values, dict) or not values:
                raise KeyProblem("values", "must map each code to a label, e.g. {1: male, 2: female}")
            for code, label in values.items():
                if isinstance(label, bool) or not isinstance(label, str | int | float) or not str(label).strip():
                    raise KeyProblem(f"values.{code}", f"is {label!r}; it must be a non-empty text label")
            raw["values"] = {k: str(v) for k, v in values.items()}  # labels are display text
        if ftype == "categorical" and ("min" in raw or "max" in raw):
            raise KeyProblem("min" if "min" in raw else "max", "is for numeric features")
        lo, hi = raw.get("min"), raw.get("max")
        if isinstance(lo, int | float) and isinstance(hi, int | float) and lo > hi:
            raise KeyProblem("", f"has min {lo} > max {hi}")
        if raw.get("value_labels") is not None:
            raw["value_labels"] = _value_labels(raw["value_labels"], ftype, lo, hi)
        raw.setdefault("label", raw.get("name", ""))
        return raw

    def value_label(self, value: Any) -> str | None:
        """The label of a numeric code, or None for an ordinary value."""
        if not self.value_labels or isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return self.value_labels.get(float(value))

    def value_labels_text(self) -> str:
        """The codes in words, as the form's hint and the JSON Schema show them: "-1 = paid in full; ..."."""
        return "; ".join(f"{code:g} = {label}" for code, label in (self.value_labels or {}).items())

    @property
    def is_categorical(self) -> bool:
        return self.type == "categorical"

    @property
    def value_kind(self) -> type:
        """The Python type of the category codes (int codes stay ints, labels stay str)."""
        if self.values and all(isinstance(k, int) and not isinstance(k, bool) for k in self.values):
            return int
        return str


def _value_labels(raw: Any, ftype: Any, lo: Any, hi: Any) -> dict[float, str]:
    """``value_labels:`` of a numeric feature: {number within min..max: non-empty label}."""
    where = "value_labels"
    if ftype != "numeric":
        raise KeyProblem(where, "is for numeric features (categoricals have 'values')")
    if not isinstance(raw, dict) or not raw:
        raise KeyProblem(where, "must map numbers to labels, e.g. {-1: paid in full}")
    labels: dict[float, str] = {}
    for key, label in raw.items():
        if isinstance(key, bool) or not isinstance(key, int | float):
            raise KeyProblem(where, f"key {key!r} is not a number")
        if (isinstance(lo, int | float) and key < lo) or (isinstance(hi, int | float) and key > hi):
            raise KeyProblem(where, f"key {key} is outside the feature's range {lo}..{hi}")
        if not isinstance(label, str) or not label.strip():
            raise KeyProblem(f"{where}.{key}", "needs a non-empty text label")
        labels[float(key)] = label.strip()
    return labels


class ProtectedSpec(FeatureSpec):
    """A protected attribute: kept in the data to measure fairness by group, never a model input.

    ``bands`` (numeric ones) cut it into the groups reported, e.g. age [25, 35, 45, 62] gives
    under 25, 25-34, 35-44, 45-61 and 62+ (62 is the ECOA's "elderly" line).
    """

    bands: tuple[float, ...] | None = None
    # The gate's action when this attribute fails a fairness floor (None: gate.fairness.action).
    gate: Literal["block", "warn"] | None = None

    _listed = field_validator("bands", mode="before")(as_tuple)

    @model_validator(mode="after")
    def _bands(self) -> ProtectedSpec:
        if self.monotone is not None:
            raise KeyProblem("monotone", "is for model inputs; a protected attribute is not one")
        if self.reason_code is not None or self.reason is not None:
            raise KeyProblem("reason_code" if self.reason_code is not None else "reason",
                             "is for model inputs; a protected attribute is never a reason")
        if self.bands is None:
            if not self.is_categorical:
                raise KeyProblem("bands", "is required for a numeric attribute: the edges of the groups "
                                          "reported, e.g. [25, 35, 45, 62]")
            return self
        if self.is_categorical:
            raise KeyProblem("bands", "is for numeric attributes (a categorical one is grouped by its values)")
        edges = list(self.bands)
        if not edges or any(a >= b for a, b in pairwise(edges)):
            raise KeyProblem("bands", f"is {edges}; it must be a non-empty list of increasing numbers")
        lo, hi = self.min, self.max
        if (lo is not None and edges[0] <= lo) or (hi is not None and edges[-1] > hi):
            raise KeyProblem("bands", f"is {edges}; every edge must lie above min {lo} and at most max {hi}")
        return self

    def as_input(self) -> FeatureSpec:
        """The same column as a model input (the research switch ``fairness.use_protected``)."""
        return FeatureSpec.model_validate(self.model_dump(exclude={"bands", "gate"}, exclude_none=True))


class DownloadSpec(Strict):
    """Where the original raw file can be fetched from, and how to trust it."""

    url: str
    file: str
    sha256: str | None = None
    member: str | None = None  # the file inside a zip download
    format: RawFormat = "csv"
    read_options: dict[str, Any] = Field(default_factory=dict)


class SqlSource(Strict):
    """A table or a query in a database, which ``python -m src.data.snapshot`` copies into ``source.file`` (a
    Parquet file under data/external/<dataset>/), so the pipeline reads a tracked file and DVC sees a change."""

    url_env: str  # the environment variable holding the SQLAlchemy URL (it holds a password: never in params)
    table: str | None = None
    query: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> SqlSource:
        if (self.table is None) == (self.query is None):
            raise KeyProblem("", "needs exactly one of 'table' and 'query'")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.url_env):
            raise KeyProblem("url_env", f"is {self.url_env!r}; it must name an environment variable")
        return self


class JoinSpec(Strict):
    """A second file joined to the source on a key column, one row each (a payment history kept apart from
    the applicant table, as lenders keep them). A key on one side only is an error, never a lost row."""

    file: str
    on: str  # the key column, as both sides spell it (a raw column name)
    format: RawFormat = "csv"
    read_options: dict[str, Any] = Field(default_factory=dict)


class SourceSpec(Strict):
    file: str
    format: RawFormat = "csv"
    read_options: dict[str, Any] = Field(default_factory=dict)
    sha256: str | None = None
    homepage: str = ""
    instructions: str = ""
    download: DownloadSpec | None = None
    sql: SqlSource | None = None  # the file is a snapshot of this table or query
    join: JoinSpec | None = None  # ...joined with this file

    @model_validator(mode="after")
    def _snapshot_format(self) -> SourceSpec:
        if self.sql is not None and self.format != "parquet":
            raise KeyProblem("format", f"is {self.format!r}; a sql source's snapshot is written as parquet")
        return self


class CleanRule(Strict):
    """A regex replacement applied to a string column before validation."""

    pattern: str
    replace: str = ""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise KeyProblem("", f"is not a regular expression: {exc}") from None
        return pattern

    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


class TargetSpec(Strict):
    column: str
    positive: int | str  # the target value that means "defaulted"


class Profile(Strict):
    """Everything the pipeline needs to know about one dataset."""

    name: str
    title: str = ""
    source: SourceSpec
    rename: dict[str, str]
    id_column: str | None = None
    target: TargetSpec
    drop: tuple[str, ...] = ()
    clean: dict[str, CleanRule] = Field(default_factory=dict)
    target_encode: tuple[str, ...] = ()
    features: dict[str, FeatureSpec]  # the model's inputs: asked for by the form, the API and batch scoring
    # Prohibited bases (sex, marital status, age, ...): validated and kept in the data to measure
    # fairness by group; never a model input (unless fairness.use_protected), never asked for.
    # Required (``{}`` when the file has none), so every profile states its policy.
    protected: dict[str, ProtectedSpec]
    # Ordinal-encoded categoricals LightGBM splits natively (on sets of values, not on their order).
    # Required, like lgbm (``[]``, ``{}``): what the model makes of a dataset is stated per profile.
    native_categorical: tuple[str, ...]
    # LightGBM parameters for this dataset, over train.lgbm (chosen on validation data).
    lgbm: dict[str, Any]
    # The refit's trees (train.cv_folds > 0), as a multiple of the folds' mean best iteration: the refit sees
    # all pooled rows, a fifth more than each fold. Required, like lgbm (chosen on validation data).
    refit_trees: float = Field(gt=0, le=4)

    @model_validator(mode="before")
    @classmethod
    def _names(cls, raw: Any) -> Any:
        """Each feature learns its name from its key; lists become tuples; the title defaults to the name."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        for key in ("features", "protected"):
            if isinstance(raw.get(key), dict):
                raw[key] = {k: {**v, "name": k} if isinstance(v, dict) else v for k, v in raw[key].items()}
        if "protected" in raw and raw["protected"] is None:
            raw["protected"] = {}
        for key in ("drop", "target_encode"):
            raw[key] = as_tuple(raw.get(key) or ())
        if isinstance(raw.get("native_categorical"), list):
            raw["native_categorical"] = as_tuple(raw["native_categorical"])
        raw["clean"] = raw.get("clean") or {}
        if isinstance(raw.get("rename"), dict):
            raw["rename"] = {str(k): v for k, v in raw["rename"].items()}
        if not raw.get("title"):
            raw["title"] = raw.get("name", "")
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        known = set(self.rename.values())
        for col in [*self.features, *self.protected, self.target.column]:
            if col not in known:
                raise KeyProblem("", f"has column '{col}', which 'profiles.{self.name}.rename' does not produce")
        for col in self.protected:
            if col in self.features:
                raise KeyProblem(f"features.{col}", "is a protected attribute: list it under 'protected' only "
                                                    "(fairness.use_protected makes it an input for research)")
            if col == self.target.column or col in self.drop or col == self.id_column:
                raise KeyProblem(f"protected.{col}", "is the target, the id or a dropped column")
        for col in self.target_encode:
            if col not in self.features or not self.features[col].is_categorical:
                raise KeyProblem("target_encode", f"names '{col}', which is not a categorical feature")
        for col, spec in self.features.items():
            if spec.is_categorical and spec.values is None and col not in self.target_encode:
                raise KeyProblem(f"features.{col}", "is an open category set; list its values or target-encode it")
            if spec.reason_code is None or spec.reason is None:
                raise KeyProblem(f"features.{col}", "needs reason_code and reason: the stable code and plain "
                                                    "statement given when it is a principal reason for a decline")
            if spec.monotone is not None and col in self.target_encode:
                raise KeyProblem(f"features.{col}.monotone", "cannot apply to a target-encoded column (its "
                                                             "codes have no order); give it for numeric or "
                                                             "ordinal columns")
        for col in self.native_categorical:
            spec = self.features.get(col)
            if spec is None or not spec.is_categorical or col in self.target_encode:
                raise KeyProblem("native_categorical", f"names '{col}', which is not a categorical feature outside "
                                                       "target_encode")
            if spec.monotone is not None:
                raise KeyProblem("native_categorical", f"names '{col}', which has a risk direction (monotone): "
                                                       "LightGBM constrains only ordered splits")
        for key in PER_INPUT_LGBM_KEYS:
            if key in self.lgbm:
                raise KeyProblem(f"lgbm.{key}", "is set per input in the profile (features.<column>.monotone, "
                                                "native_categorical)")
        codes = [f.reason_code for f in self.features.values()]
        repeated = sorted({c for c in codes if codes.count(c) > 1})
        if repeated:
            raise KeyProblem("features", f"give reason codes {repeated} to more than one input; "
                                         "each code is one reason")
        return self

    def with_inputs(self, names: list[str]) -> Profile:
        """This profile with exactly ``names`` as its model inputs, in that order.

        A trained model records its inputs; the service and batch scoring describe (ask for,
        validate, explain) exactly those. A protected attribute is among them only in a model
        trained with ``fairness.use_protected`` (research, never lending).
        """
        known: dict[str, FeatureSpec] = {**self.features, **{n: p.as_input() for n, p in self.protected.items()}}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"params.yaml: the model's inputs {unknown} are not columns of profile "
                              f"'{self.name}' (features or protected)")
        if list(names) == list(self.features):
            return self
        return self.model_copy(update={"features": {n: known[n] for n in names}})

    @property
    def protected_inputs(self) -> list[str]:
        """Protected attributes that are model inputs here (only ever under fairness.use_protected)."""
        return [n for n in self.features if n in self.protected]

    @property
    def monotone(self) -> dict[str, Direction]:
        """Declared risk directions of the model inputs."""
        return {n: f.monotone for n, f in self.features.items() if f.monotone is not None}

    @property
    def target_column(self) -> str:
        return self.target.column

    @property
    def positive(self) -> int | str:
        return self.target.positive

    @property
    def feature_names(self) -> list[str]:
        return list(self.features)

    @property
    def numeric_features(self) -> list[str]:
        return [n for n, f in self.features.items() if not f.is_categorical]

    @property
    def ordinal_features(self) -> list[str]:
        """Categorical columns not target-encoded: encoded by position in their value set."""
        return [n for n, f in self.features.items() if f.is_categorical and n not in self.target_encode]

    @property
    def measured_columns(self) -> dict[str, FeatureSpec]:
        """Every column validated and kept in the pipeline's tables: model inputs, then protected attributes."""
        return {**self.features, **{n: p for n, p in self.protected.items() if n not in self.features}}

    @property
    def expected_columns(self) -> list[str]:
        """The snake_case columns a raw file must provide, in first-seen order."""
        return list(dict.fromkeys(self.rename.values()))


def build_profile(name: str, raw: Any) -> Profile:
    """Check one profile (``profiles.<name>`` of params.yaml) and return it typed; errors name the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: 'profiles.{name}' must be a mapping")
    try:
        return Profile.model_validate({**raw, "name": name})
    except ValidationError as exc:
        raise config_error(exc, ("profiles", name), Profile) from None
