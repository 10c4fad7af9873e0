"""Where monitored rows come from: scored/raw files and folders, or the serving prediction log.

Both kinds end up as one DataFrame with the profile's feature columns (typed and
validated the way training rows were) plus, when known, ``probability``,
``decision``, ``id``, ``scored_at`` and ``model_version``. Everything the user
can get wrong (missing file, missing columns, unparseable times, an empty window)
raises :class:`InputError`, which the CLI turns into one line and exit code 2.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import fsspec
import pandas as pd
import sqlalchemy as sa
from mlflow.exceptions import MlflowException

from src.common import PipelineError
from src.config import Profile, Settings, env
from src.config.env import safe_url
from src.data.schemas import build_schema, normalise, schema_failures
from src.scoring.logdb import make_engine, predictions
from src.scoring.model_store import load_model as load_served

log = logging.getLogger(__name__)

SCORE_COLUMN = "probability"
LOG_ID_SEPARATOR = ":"
READERS = {".parquet": pd.read_parquet, ".pq": pd.read_parquet, ".csv": pd.read_csv}
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class InputError(PipelineError):
    """The batch, labels or time window cannot be used as given (exit code 2)."""


@dataclass(frozen=True)
class Batch:
    """Monitored rows and how they were obtained (counts reconcile: rows_in = len(frame) + rejected)."""

    frame: pd.DataFrame
    source: str
    rows_in: int
    rejected: int
    rejected_reasons: dict[str, int]


# -- files -------------------------------------------------------------------------
def read_frame(path: str) -> pd.DataFrame:
    """A CSV/Parquet file, or every such file under a folder (local or any fsspec URL, e.g. s3://)."""
    try:
        fs, root = fsspec.core.url_to_fs(path)
        if not fs.exists(root):
            raise InputError(f"{path}: no such file or folder")
        files = sorted(f for f in fs.find(root) if _suffix(f) in READERS) if fs.isdir(root) else [root]
    except InputError:
        raise
    except Exception as exc:  # fsspec / botocore errors: unreachable store, no credentials...
        raise InputError(f"{path}: cannot be listed ({type(exc).__name__}: {exc})") from exc
    if not files:
        raise InputError(f"{path}: folder holds no .csv or .parquet file")
    frames = []
    for name in files:
        reader = READERS.get(_suffix(name))
        if reader is None:
            raise InputError(f"{name}: unsupported file type (use .csv or .parquet)")
        try:
            with fs.open(name, "rb") as fh:
                frames.append(reader(fh))
        except Exception as exc:
            raise InputError(f"{name}: cannot be read ({type(exc).__name__}: {exc})") from exc
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    frame.columns = [str(c).strip() for c in frame.columns]
    log.info("read %d row(s) from %d file(s) under %s", len(frame), len(files), path)
    return frame


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot >= 0 else ""


# -- prediction log ----------------------------------------------------------------
def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO date/time (naive = UTC) or a span back from now: 30m, 24h, 7d, 2w."""
    now = now or datetime.now(UTC)
    value = text.strip()
    match = _RELATIVE.match(value)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"cannot read time {text!r}: use ISO (2026-11-21 or 2026-11-21T08:00) "
                         "or a span back from now (30m, 24h, 7d, 2w)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def read_log(url: str, since: datetime | None, until: datetime | None) -> pd.DataFrame:
    """Prediction-log rows with since <= created_at < until: features plus id/scored_at/probability/decision."""
    if since is not None and until is not None and since >= until:
        raise InputError(f"empty time window: --since {since.isoformat()} is not before --until {until.isoformat()}")
    query = sa.select(predictions).order_by(predictions.c.id)
    if since is not None:
        query = query.where(predictions.c.created_at >= since)
    if until is not None:
        query = query.where(predictions.c.created_at < until)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(predictions.name):
                raise InputError(f"prediction log {safe_url(url)} has no '{predictions.name}' table "
                                 "(has the service scored anything yet?)")
            rows = conn.execute(query).mappings().all()
    except sa.exc.SQLAlchemyError as exc:
        raise InputError(f"prediction log {safe_url(url)} cannot be read: {str(exc).splitlines()[0]}") from exc
    finally:
        engine.dispose()
    window = f"[{since.isoformat() if since else 'start'}, {until.isoformat() if until else 'now'})"
    if not rows:
        raise InputError(f"prediction log {safe_url(url)} holds no rows in the window {window}")
    features = pd.DataFrame.from_records([dict(r["features"]) for r in rows])
    meta = pd.DataFrame({
        "id": [f"{r['request_id']}{LOG_ID_SEPARATOR}{r['row_index']}" for r in rows],
        "scored_at": pd.to_datetime([r["created_at"] for r in rows], utc=True),
        "model_name": [r["model_name"] for r in rows],
        "model_version": [str(r["model_version"]) for r in rows],
        SCORE_COLUMN: [float(r["probability"]) for r in rows],
        "decision": [r["decision"] for r in rows],
    })
    log.info("read %d prediction(s) from the log %s in %s", len(meta), safe_url(url), window)
    return pd.concat([meta, features.drop(columns=[c for c in meta.columns if c in features.columns])], axis=1)


# -- rows the model can read -------------------------------------------------------
def require_columns(frame: pd.DataFrame, columns: list[str], source: str, hint: str = "") -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{source}: missing column(s) {', '.join(missing)}{hint}")


def applicant_rows(frame: pd.DataFrame, profile: Profile, source: str) -> Batch:
    """Type and validate the profile's feature columns; rows that fail are dropped and counted by reason.

    Raw column spellings of the profile (e.g. LIMIT_BAL) are accepted. Other columns
    (id, probability, decision...) ride along untouched.
    """
    renamed = frame.rename(columns={k: v for k, v in profile.rename.items()
                                    if k in frame.columns and v not in frame.columns})
    require_columns(renamed, profile.feature_names, source,
                    " (a scored file needs the feature columns: score it with --include-features)")
    renamed = renamed.reset_index(drop=True)
    features = renamed[profile.feature_names]
    typed, type_failures = normalise(features, profile, with_target=False)
    failures = pd.concat([type_failures, schema_failures(typed, build_schema(profile, with_target=False))],
                         ignore_index=True).drop_duplicates(["index", "column"], keep="first")
    bad = pd.Index(sorted(failures["index"].astype("int64").unique())) if len(failures) else pd.Index([])
    reasons = (failures["column"].astype(str) + ": " + failures["check"].astype(str))
    per_reason = failures.assign(reason=reasons).groupby("reason")["index"].nunique() if len(failures) else {}
    out = renamed.drop(columns=profile.feature_names).join(typed).drop(index=bad).reset_index(drop=True)
    if len(bad):
        log.warning("%s: %d of %d row(s) fail validation and are left out: %s", source, len(bad), len(frame),
                    "; ".join(f"{k} ({v})" for k, v in sorted(dict(per_reason).items(), key=lambda kv: -kv[1])[:5]))
    batch = Batch(frame=out, source=source, rows_in=len(frame), rejected=len(bad),
                  rejected_reasons={str(k): int(v) for k, v in dict(per_reason).items()})
    if batch.rows_in != len(batch.frame) + batch.rejected:
        raise AssertionError(f"row counts do not reconcile: {batch.rows_in} != {len(batch.frame)} + {batch.rejected}")
    return batch


def check_scores(frame: pd.DataFrame, source: str) -> pd.Series:
    """The batch's probability column as floats in [0, 1]; bad cells named by row."""
    scores = pd.to_numeric(frame[SCORE_COLUMN], errors="coerce")
    bad = scores.isna() | (scores < 0) | (scores > 1)
    if bad.any():
        rows = ", ".join(str(i) for i in frame.index[bad][:5])
        raise InputError(f"{source}: column '{SCORE_COLUMN}' holds {int(bad.sum())} value(s) that are not "
                         f"probabilities in [0, 1] (rows {rows}{'...' if bad.sum() > 5 else ''})")
    return scores.astype("float64")


# -- the model -----------------------------------------------------------------------
@dataclass(frozen=True)
class Model:
    """The model whose training reference a batch is compared with."""

    pipeline: Any
    meta: dict[str, Any]
    name: str
    version: str
    uri: str

    def predict(self, frame: pd.DataFrame) -> pd.Series:
        """Probability of default for whole frames of typed applicant rows (the fitted Pipeline)."""
        proba = self.pipeline.predict_proba(frame[self.meta["features"]])[:, 1]
        return pd.Series(proba, index=frame.index, dtype="float64")

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "uri": self.uri}


def load_model(settings: Settings, uri: str | None) -> Model:
    """Resolve and load the model like the service does: ``uri`` or $MODEL_URI / serve.model_uri / champion."""
    target = uri or env.model_uri(settings)
    try:
        loaded = load_served(target, settings)
    except (MlflowException, OSError) as exc:
        raise InputError(f"cannot load model {target}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    if loaded.meta["dataset"] != settings.dataset:
        raise InputError(f"model {target} was trained on '{loaded.meta['dataset']}' but the current profile is "
                         f"'{settings.dataset}' (set dataset in params.yaml or pick another --model-uri)")
    return Model(pipeline=loaded.scorer.pipeline, meta=loaded.meta, name=loaded.name, version=loaded.version,
                 uri=target)


def database_url(settings: Settings, override: str | None) -> str:
    """--database-url, else $DATABASE_URL / serve.database_url exactly as the service resolves it."""
    if override:
        return override
    return env.database_url(settings)
