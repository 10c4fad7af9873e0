"""Fast scoring and reasons for served decisions.

``Pipeline.predict_proba`` on a one-row DataFrame is almost all pandas and
ColumnTransformer overhead. :class:`Scorer` reads the *fitted*
encoders out of the Pipeline once (TargetEncoder's learned encodings,
OrdinalEncoder's categories, the numeric passthrough order) and encodes plain
rows straight into a NumPy matrix for the LightGBM booster. Tests check it
against the Pipeline on whole test splits.

Reasons come from LightGBM's own TreeSHAP (``pred_contrib=True``). Because each
categorical is target- or ordinal-encoded into exactly one column, every
contribution belongs to exactly one raw applicant field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from src.config import FeatureSpec, Profile
from src.scoring.single_row import SingleRowPredictor

APPROVE, REFER, DECLINE = "approve", "refer", "decline"
DECISIONS = (APPROVE, REFER, DECLINE)  # in order of risk


@dataclass(frozen=True)
class Reason:
    feature: str
    label: str
    value: str
    contribution: float  # log-odds added to the default risk by this field
    direction: str  # "raises" or "lowers"

    @property
    def text(self) -> str:
        return f"{self.label} = {self.value} {self.direction} the risk of default"

    def as_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "label": self.label, "value": self.value,
                "contribution": round(self.contribution, 6), "direction": self.direction, "text": self.text}


@dataclass(frozen=True)
class AdverseReason:
    """A principal reason for a decline or referral (12 CFR 1002.9): a stable code, a plain statement, the value."""

    code: str
    reason: str
    feature: str
    value: str

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason, "feature": self.feature, "value": self.value}


def stated_reason(profile: Profile, feature: str, row: Mapping[str, Any]) -> AdverseReason:
    """The principal reason ``feature`` gives: its code, its statement and the applicant's value, as read."""
    spec = profile.features[feature]
    return AdverseReason(code=str(spec.reason_code), reason=str(spec.reason), feature=feature,
                         value=display_value(spec, row.get(feature)))


def reasons_from_codes(profile: Profile, row: Mapping[str, Any], codes: Sequence[str]) -> list[AdverseReason]:
    """The principal reasons a logged decision gave (the log keeps their codes), as the applicant read them.
    A code the profile no longer has keeps its code, with the statement unknown."""
    features = {spec.reason_code: name for name, spec in profile.features.items() if spec.reason_code}
    return [stated_reason(profile, features[code], row) if code in features
            else AdverseReason(code=code, reason="(a reason code this profile no longer has)", feature="", value="")
            for code in codes]


# Units not worth printing after a number.
UNITLESS = ("count", "ratio", "fraction")


def readable_number(value: float) -> str:
    """A number for reading: 10,000,000; 23,094 (not 2.309e+04); 0.1189; never exponent notation."""
    number = float(value)
    if not math.isfinite(number):
        return str(number)
    if number.is_integer() or abs(number) >= 100:
        return f"{number:,.0f}"
    return np.format_float_positional(number, precision=4, unique=False, fractional=False, trim="-")


def display_value(spec: FeatureSpec, value: Any) -> str:
    """How a field's value reads to a person: category labels, numbers with their unit."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not given"
    if spec.is_categorical:
        if spec.values and value in spec.values:
            return spec.values[value]
        return str(value)
    label = spec.value_label(value)
    if label is not None:
        return label
    text = readable_number(value)
    return f"{text} {spec.unit}" if spec.unit and spec.unit not in UNITLESS else text


class Scorer:
    """Encode plain applicant rows, score them with the booster, explain and decide."""

    def __init__(self, pipeline: Pipeline, meta: Mapping[str, Any], profile: Profile,
                 top_reasons: int = 4, refer_margin: float = 0.05, num_threads: int = 0,
                 adverse_reasons: int | None = None) -> None:
        self.pipeline = pipeline
        self.meta = dict(meta)
        self.profile = profile
        self.threshold = float(meta["threshold"])
        self.refer_margin = float(refer_margin)
        self.top_reasons = int(top_reasons)
        # Principal reasons owed to a declined or referred applicant (serve.top_reasons), whatever
        # number of full reasons a caller asks for.
        self.adverse_reasons = self.top_reasons if adverse_reasons is None else int(adverse_reasons)
        # 0 = LightGBM's default (all cores, OpenMP). A server sets 1: its worker processes already
        # use the cores, and OpenMP threads spinning against each other cost 10-100x on a busy box.
        self.predict_options: dict[str, Any] = {"num_threads": int(num_threads)} if num_threads else {}
        model = pipeline.named_steps["model"]
        self.booster = model.booster_
        self.num_iteration = int(meta.get("best_iteration") or model.best_iteration_ or -1)
        self.columns: list[str] = list(meta["model_columns"])
        # One row (a served applicant) goes through LightGBM's single-row C API (see that module).
        self._one_row = SingleRowPredictor(self.booster, self.num_iteration, len(self.columns), int(num_threads))
        # Binary log-loss: the probability is the sigmoid of the raw score, and the raw score is the
        # sum of the TreeSHAP contributions (bias included). With reasons, that saves a second pass
        # over the trees. Any other objective: None, and probabilities come from predict.
        params = self.booster.params or {}
        self._sigmoid = float(params.get("sigmoid", 1.0)) if params.get("objective", "binary") == "binary" else None
        encode = pipeline.named_steps["preprocess"].named_steps["encode"]
        self._encoders: dict[str, tuple[str, Any]] = {}
        for kind, transformer, cols in encode.transformers_:
            if kind == "target":
                for i, col in enumerate(cols):
                    table = dict(zip(_keys(transformer.categories_[i]), transformer.encodings_[i].tolist(),
                                     strict=True))
                    self._encoders[col] = ("lookup", (table, float(transformer.target_mean_)))
            elif kind == "ordinal":
                for i, col in enumerate(cols):
                    table = {k: float(j) for j, k in enumerate(_keys(transformer.categories_[i]))}
                    self._encoders[col] = ("lookup", (table, math.nan))
            elif kind == "numeric":
                for col in cols:
                    self._encoders[col] = ("number", None)
        missing = [c for c in self.columns if c not in self._encoders]
        if missing:
            raise ValueError(f"model columns without an encoder: {missing}")
        # (column, kind, spec) in the booster's column order
        self._plan: list[tuple[str, str, Any]] = [(col, *self._encoders[col]) for col in self.columns]
        # Columns that may be a principal reason: inputs with a reason code, never a protected attribute
        # (a research model trained on one still never gives it as a reason).
        features = profile.features
        self.reason_codes = [features[c].reason_code if c in features and c not in profile.protected else None
                             for c in self.columns]
        self._may_be_reason = np.array([code is not None for code in self.reason_codes])

    # -- encoding -----------------------------------------------------------------
    def encode(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Rows of validated raw values -> the booster's float matrix, column for column.

        Built row-major as Python lists and converted once: for the one-row requests a
        service mostly sees that is ~4x faster than filling the matrix column by column.
        """
        plan = self._plan
        nan = math.nan
        data = [[(nan if (v := row.get(col)) is None else v) if kind == "number"
                 else spec[0].get(_key(row.get(col)), spec[1])
                 for col, kind, spec in plan] for row in rows]
        return np.array(data, dtype=np.float64).reshape(len(rows), len(plan))

    def encode_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """A whole validated frame -> the booster's float matrix, as :meth:`encode` would give.

        Batch scoring's path: each categorical column is factorised once and its few distinct
        values are looked up in the same tables, so a 100,000-row chunk costs a few milliseconds
        instead of the Pipeline's pandas round trips. The matrix is built column by column; a
        single-threaded booster reads it as fast as row-major, bit for bit the same, while
        several OpenMP threads fight over cache lines in it, so for them it is transposed.
        """
        out = np.empty((len(self._plan), len(frame)), dtype=np.float64)  # filled column by column
        for j, (col, kind, spec) in enumerate(self._plan):
            series = frame[col]
            if kind == "number":
                if series.dtype != np.float64:
                    series = pd.to_numeric(series, errors="coerce")
                out[j] = series.to_numpy(dtype=np.float64, na_value=np.nan)
                continue
            table, default = spec
            codes, uniques = pd.factorize(series, use_na_sentinel=True)
            lookup = np.array([table.get(_key(v), default) for v in uniques.tolist()] + [table.get(None, default)],
                              dtype=np.float64)
            out[j] = lookup[codes]  # code -1 (missing) takes the last entry
        return self.arrange(out)

    @property
    def encoding_plan(self) -> list[tuple[str, str, Any]]:
        """(column, "number" or "lookup", (table, default) or None) in the booster's column order."""
        return list(self._plan)

    def arrange(self, by_column: np.ndarray) -> np.ndarray:
        """A (columns x rows) array filled column by column -> the matrix the booster is given."""
        return by_column.T if self.predict_options.get("num_threads") == 1 else np.ascontiguousarray(by_column.T)

    # -- scoring ------------------------------------------------------------------
    @property
    def engine(self) -> str:
        """What computes the probabilities (reported by /ready): LightGBM's booster."""
        return "lightgbm"

    def probabilities(self, matrix: np.ndarray) -> np.ndarray:
        if matrix.shape[0] == 1:
            return self._one_row.probability(matrix[0])
        return np.asarray(self.booster.predict(matrix, num_iteration=self.num_iteration, **self.predict_options),
                          dtype=np.float64)

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """TreeSHAP log-odds contributions: one column per model column, then the bias."""
        if matrix.shape[0] == 1:
            return self._one_row.contributions(matrix[0])
        return np.asarray(self.booster.predict(matrix, num_iteration=self.num_iteration, pred_contrib=True,
                                               **self.predict_options))

    def probabilities_and_contributions(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both from one TreeSHAP pass: the probability is the sigmoid of the contributions' sum."""
        contrib = self.contributions(matrix)
        if self._sigmoid is None:
            return self.probabilities(matrix), contrib
        return 1.0 / (1.0 + np.exp(-self._sigmoid * contrib.sum(axis=1))), contrib

    def decision(self, probability: float) -> str:
        if probability >= self.threshold:
            return DECLINE
        if probability >= self.threshold - self.refer_margin:
            return REFER
        return APPROVE

    def decision_codes(self, probabilities: np.ndarray) -> np.ndarray:
        """:meth:`decision` for a whole batch as indices into DECISIONS (0 approve, 1 refer, 2 decline)."""
        p = np.asarray(probabilities, dtype=np.float64)
        return (p >= self.threshold - self.refer_margin).astype(np.int8) + (p >= self.threshold)

    def decisions(self, probabilities: np.ndarray) -> np.ndarray:
        """:meth:`decision` for a whole batch at once (batch scoring): the same bands, same comparisons."""
        return np.asarray(DECISIONS, dtype=object)[self.decision_codes(probabilities)]

    def reasons(self, row: Mapping[str, Any], contrib: np.ndarray, top: int | None = None) -> list[Reason]:
        """The fields that moved this applicant's risk most, largest effect first."""
        top = self.top_reasons if top is None else top
        order = top_contributions(contrib, len(self.columns), top)
        out = []
        for j in order:
            col = self.columns[j]
            spec = self.profile.features[col]
            value = float(contrib[j])
            out.append(Reason(feature=col, label=spec.label, value=display_value(spec, row.get(col)),
                              contribution=value, direction="raises" if value > 0 else "lowers"))
        return out

    def principal(self, contrib: np.ndarray) -> np.ndarray:
        """:func:`principal_reasons` with this model's eligible columns, ``adverse_reasons`` of them."""
        return principal_reasons(contrib, self._may_be_reason, self.adverse_reasons)

    def adverse_action(self, row: Mapping[str, Any], contrib: np.ndarray) -> list[AdverseReason]:
        """The principal reasons owed to a declined or referred applicant: the inputs that raised the risk most."""
        out = []
        for j in self.principal(contrib).tolist():
            if j < 0:
                break
            out.append(stated_reason(self.profile, self.columns[j], row))
        return out

    def score(self, rows: Sequence[Mapping[str, Any]], with_reasons: bool = True) -> list[dict[str, Any]]:
        """Probability, decision, principal reasons for a decline or referral, and (optionally) the full reasons.

        A declined or referred applicant always gets ``adverse_action`` (their TreeSHAP pass is owed);
        an approved one gets it empty, and the full explanation only when ``with_reasons``.
        """
        matrix = self.encode(rows)
        if with_reasons:
            proba, contrib = self.probabilities_and_contributions(matrix)
        else:
            proba, contrib = self.probabilities(matrix), None
        decisions = [self.decision(p) for p in proba.tolist()]
        adverse = [i for i, d in enumerate(decisions) if d != APPROVE]
        owed: dict[int, np.ndarray] = {}  # row -> contributions, for the declined and referred rows only
        if adverse:
            owed = dict(zip(adverse, contrib[adverse] if contrib is not None else self.contributions(matrix[adverse]),
                            strict=True))
        results = []
        for i, p in enumerate(proba.tolist()):
            item: dict[str, Any] = {"probability_of_default": p, "decision": decisions[i], "adverse_action": []}
            if i in owed:
                item["adverse_action"] = [r.as_dict() for r in self.adverse_action(rows[i], owed[i])]
            if contrib is not None:
                item["reasons"] = [r.as_dict() for r in self.reasons(rows[i], contrib[i])]
            results.append(item)
        return results


def top_contributions(contrib: np.ndarray, n_columns: int, top: int) -> np.ndarray:
    """Indices of the ``top`` largest |contributions| (bias excluded), largest first, ties in column order.

    Works on one row (1-D) or a batch (2-D, one row of indices per row): the service and
    batch scoring rank reasons with this one rule.
    """
    return np.argsort(-np.abs(contrib[..., :n_columns]), axis=-1, kind="stable")[..., :top]


def principal_reasons(contrib: np.ndarray, eligible: np.ndarray, top: int) -> np.ndarray:
    """Indices of the ``top`` columns that raised the risk most, largest first, -1 where fewer did.

    Only positive contributions (a factor that lowered the risk is never a reason for a decline)
    of ``eligible`` columns (never a protected attribute). One row (1-D) or a batch (2-D): the
    service and batch scoring give the same reasons by this one rule.
    """
    n = len(eligible)
    raised = np.where(eligible & (contrib[..., :n] > 0), contrib[..., :n], -np.inf)
    order = np.argsort(-raised, axis=-1, kind="stable")[..., :top]
    return np.where(np.take_along_axis(raised, order, axis=-1) > -np.inf, order, -1)


def _key(value: Any) -> Any:
    """Normalise a category value for lookup: 1.0 -> 1, numpy scalars -> Python."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return int(value)
    return value


def _keys(categories: np.ndarray) -> list[Any]:
    return [_key(c) for c in categories.tolist()]
