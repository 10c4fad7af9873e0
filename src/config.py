"""Typed settings built from ``params.yaml``, the project's single source of configuration.

Every stage calls :func:`load_settings` instead of reading YAML itself, so a typo in
params.yaml fails once, early, with a message naming the key, rather than as a
``KeyError`` deep inside training.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

PARAMS_FILE = "params.yaml"

FeatureType = Literal["numeric", "categorical"]
T = TypeVar("T")


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, never yes/no/on/off/y/n.

    DVC reads and rewrites params.yaml (``dvc exp run -S``) as YAML 1.2, which
    drops the quotes from values like "yes"; YAML 1.1 would then turn the
    category code ``yes`` into ``True``. Loading with 1.2 rules keeps both
    readers in agreement.
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def read_params(path: str | Path) -> dict[str, Any]:
    """Parse a params file the way DVC does (YAML 1.2 booleans)."""
    with Path(path).open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_Yaml12Loader)


class ConfigError(ValueError):
    """params.yaml is missing a key or holds a value the pipeline cannot use."""


def _require(mapping: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ConfigError(f"params.yaml: missing key '{f'{where}.' if where else ''}{key}'")
    return mapping[key]


@dataclass(frozen=True)
class FeatureSpec:
    """One model input column: its type and the values a valid row may hold."""

    name: str
    type: FeatureType
    label: str
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    # code -> human-readable label for categorical columns; None = open set
    # (any non-empty string, e.g. 300 city names).
    values: dict[Any, str] | None = None
    # Numeric columns only: values that are codes rather than amounts (Taiwan's repayment
    # status: -1 = "paid in full", not "-1 months late"), shown as their label.
    value_labels: dict[float, str] | None = None

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


@dataclass(frozen=True)
class DownloadSpec:
    """Where the original raw file can be fetched from, and how to trust it."""

    url: str
    sha256: str | None
    member: str | None
    file: str
    format: str
    read_options: dict[str, Any]


@dataclass(frozen=True)
class SourceSpec:
    file: str
    format: str
    read_options: dict[str, Any]
    sha256: str | None
    homepage: str
    instructions: str
    download: DownloadSpec | None = None


@dataclass(frozen=True)
class CleanRule:
    """A regex replacement applied to a string column before validation."""

    pattern: str
    replace: str

    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


@dataclass(frozen=True)
class Profile:
    """Everything the pipeline needs to know about one dataset."""

    name: str
    title: str
    source: SourceSpec
    rename: dict[str, str]
    id_column: str | None
    target_column: str
    positive: Any
    drop: tuple[str, ...]
    clean: dict[str, CleanRule]
    target_encode: tuple[str, ...]
    features: dict[str, FeatureSpec]

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
    def expected_columns(self) -> list[str]:
        """The snake_case columns a raw file must provide, in first-seen order."""
        return list(dict.fromkeys(self.rename.values()))


@dataclass(frozen=True)
class Paths:
    root: Path
    external: Path
    raw: Path
    interim: Path
    processed: Path
    models: Path
    metrics: Path
    plots: Path
    reports: Path


@dataclass(frozen=True)
class IngestSettings:
    sample_rows: int | None
    sample_seed: int
    download_timeout: float


@dataclass(frozen=True)
class ValidateSettings:
    max_reject_share: float
    log_examples: int


@dataclass(frozen=True)
class SplitSettings:
    valid_size: float
    test_size: float
    seed: int


@dataclass(frozen=True)
class TrainSettings:
    seed: int
    target_encoder: dict[str, Any]
    early_stopping_rounds: int
    log_every: int
    lgbm: dict[str, Any]


@dataclass(frozen=True)
class ThresholdSettings:
    cost_false_negative: float
    cost_false_positive: float


@dataclass(frozen=True)
class EvaluateSettings:
    calibration_bins: int
    top_features: int


@dataclass(frozen=True)
class MlflowSettings:
    database: str
    artifact_root: str
    experiment: str
    model_name_prefix: str
    connect_timeout: float


@dataclass(frozen=True)
class GateSettings:
    min_roc_auc: float
    max_brier: float | None
    max_regression: float
    fail_pipeline: bool


@dataclass(frozen=True)
class ServeSettings:
    model_uri: str | None
    max_batch: int
    max_body_bytes: int
    top_reasons: int
    refer_margin: float
    database_url: str
    bind: str
    log_max_pending: int = 10_000
    log_linger_seconds: float = 0.1
    num_threads: int = 1
    compile_trees: bool = True
    compiled_cache_dir: str | None = None


@dataclass(frozen=True)
class DeploySettings:
    """Where and how ``python -m src.deploy`` ships the service to AWS (ECR image, EC2 instances via SSM).

    The defaults let a params.yaml without a ``deploy:`` section still load: only the
    deploy CLI reads these, and every one of them can be overridden by a CLI flag.
    """

    region: str = "us-east-1"
    env: str = "production"                # instances tagged Env=<env>; SSM parameters under <prefix>/<env>/
    app: str = "credit-default"            # instances tagged App=<app>
    repository: str = "credit-default"     # ECR repository name
    container_name: str = "credit-default"
    port: int = 8000                       # host port the container is published on (and smoke-tested)
    container_port: int = 8000             # port gunicorn listens on inside the image
    parameter_prefix: str = "/credit-default"
    env_file: str = "/etc/credit-default/env"   # on the instance: passed to `docker run --env-file` when present
    state_dir: str = "/var/lib/credit-default"  # on the instance: current-tag / previous-tag files
    command_timeout: float = 600.0         # seconds for the SSM command on every instance
    poll_interval: float = 3.0             # seconds between SSM status polls
    smoke_url: str | None = None           # None: http://<instance public or private IP>:<port>
    smoke_timeout: float = 180.0           # seconds to wait for /ready after a restart (model load)
    http_timeout: float = 10.0             # seconds per smoke-test HTTP request
    smoke_applicant: dict[str, Any] | None = None  # None: built from the service's /api/v1/schema

    def parameter(self, name: str) -> str:
        """SSM parameter path, e.g. /credit-default/production/current-tag."""
        return f"{self.parameter_prefix.rstrip('/')}/{self.env}/{name}"


@dataclass(frozen=True)
class RetrainSettings:
    """The retraining loop (``make retrain``, ``python -m src.modeling.retrain``); see README "Retraining"."""

    pull: bool = True                 # `dvc pull --allow-missing` before the repro
    push: bool = True                 # `dvc push` after it
    remote: str | None = None         # DVC remote for pull/push (None: the default one in .dvc/config)
    reload_url: str | None = None     # running service to reload (None: http://<serve.bind>)
    reload_timeout: float = 60.0      # seconds for the reload and for /ready to report the new version


@dataclass(frozen=True)
class MonitoringSettings:
    """Drift and performance monitoring (``python -m src.monitoring``); see README "Monitoring"."""

    psi_bins: int = 10                 # quantile bins of the reference for numeric features and the score
    psi_epsilon: float = 0.0001        # a bin's share is floored at this, so an empty bin keeps PSI finite
    psi_moderate: float = 0.1          # PSI bands: below -> none; up to psi_significant -> moderate
    psi_significant: float = 0.25      # at or above -> significant
    drift_flag_band: str = "moderate"  # a feature / the score at or above this band counts as drifted
    drift_min_rows: int = 100          # fewer batch rows: PSI is mostly noise; logged as a warning
    report_sample_rows: int = 5000     # rows of reference and of batch in the Evidently HTML report
    sample_seed: int = 42
    calibration_bins: int = 10         # performance: quantile bins of the predicted probability
    max_auc_drop: float = 0.05         # decay: ROC-AUC below the model's test ROC-AUC minus this
    performance_min_rows: int = 100    # fewer labelled rows (overall or in a period): decay not judged
    exporter_bind: str = "127.0.0.1:9108"  # `python -m src.monitoring exporter` listens here


@dataclass(frozen=True)
class BatchSettings:
    """Batch scoring (``python -m src.batch``); see README "Batch scoring"."""

    chunk_rows: int = 100_000              # rows read, validated and scored at a time: bounds memory
    csv_block_bytes: int = 8_388_608       # CSV read block; a block never holds more than chunk_rows rows
    log_every_rows: int = 1_000_000        # a progress line (rows, rows/s) every this many input rows
    reasons_chunk_rows: int = 10_000       # with --reasons: rows per chunk / Dask partition (TreeSHAP is slow)
    num_threads: int = 0                   # pandas engine: chunks scored at once, 1 LightGBM thread each (0 = cores)
    compression: str = "snappy"            # Parquet codec of the scored and rejects files
    dask_workers: int = 2                  # --engine dask without --scheduler: LocalCluster worker processes
    dask_threads_per_worker: int = 1       # ...threads each (and LightGBM threads per partition)
    dask_partition_bytes: int = 8_388_608  # input bytes per Dask partition (read_parquet / read_csv blocksize)
    example_input: str = "data/processed/test.parquet"     # the DVC stage `score`: the held-out test split...
    example_output: str = "data/scored/test_scored.parquet"  # ...scored as a "new batch" into this file
    example_rejects: str = "data/scored/test_scored.rejects.parquet"  # ...its rejected rows here
    example_summary: str = "metrics/score_summary.json"     # ...and its counts here


@dataclass(frozen=True)
class Settings:
    dataset: str
    profile: Profile
    paths: Paths
    ingest: IngestSettings
    validate: ValidateSettings
    split: SplitSettings
    train: TrainSettings
    threshold: ThresholdSettings
    evaluate: EvaluateSettings
    mlflow: MlflowSettings
    gate: GateSettings
    serve: ServeSettings
    raw: dict[str, Any] = field(repr=False)
    deploy: DeploySettings = field(default_factory=DeploySettings)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)

    @property
    def registered_model_name(self) -> str:
        return f"{self.mlflow.model_name_prefix}-{self.dataset}"

    # Stage file locations, derived in one place so stages and tests agree.
    @property
    def external_dir(self) -> Path:
        return self.paths.external / self.dataset

    @property
    def raw_table(self) -> Path:
        return self.paths.raw / f"{self.dataset}.parquet"

    @property
    def clean_table(self) -> Path:
        return self.paths.interim / "clean.parquet"

    @property
    def rejected_table(self) -> Path:
        return self.paths.interim / "rejected.parquet"

    def split_table(self, name: str) -> Path:
        return self.paths.processed / f"{name}.parquet"

    @property
    def model_file(self) -> Path:
        return self.paths.models / "model.joblib"

    @property
    def model_meta_file(self) -> Path:
        return self.paths.models / "model_meta.json"

    @property
    def registration_file(self) -> Path:
        """The register stage's receipt: the model bytes (sha256) now in the registry."""
        return self.paths.models / "registration.json"


def _feature(name: str, raw: dict[str, Any], where: str) -> FeatureSpec:
    ftype = _require(raw, "type", where)
    if ftype not in ("numeric", "categorical"):
        raise ConfigError(f"params.yaml: '{where}.type' must be numeric or categorical, got {ftype!r}")
    values = raw.get("values")
    if ftype == "categorical" and values is not None:
        if not isinstance(values, dict) or not values:
            raise ConfigError(f"params.yaml: '{where}.values' must map each code to a label")
        values = {k: str(v) for k, v in values.items()}
    lo, hi = raw.get("min"), raw.get("max")
    if lo is not None and hi is not None and float(lo) > float(hi):
        raise ConfigError(f"params.yaml: '{where}' has min {lo} > max {hi}")
    value_labels = _value_labels(raw.get("value_labels"), ftype, lo, hi, f"{where}.value_labels")
    return FeatureSpec(
        name=name,
        type=ftype,
        label=str(raw.get("label", name)),
        unit=raw.get("unit"),
        min=None if lo is None else float(lo),
        max=None if hi is None else float(hi),
        nullable=bool(raw.get("nullable", False)),
        values=values if ftype == "categorical" else None,
        value_labels=value_labels,
    )


def _value_labels(raw: Any, ftype: str, lo: Any, hi: Any, where: str) -> dict[float, str] | None:
    """``value_labels:`` of a numeric feature: {number within min..max: non-empty label}."""
    if raw is None:
        return None
    if ftype != "numeric":
        raise ConfigError(f"params.yaml: '{where}' is for numeric features (categoricals have 'values')")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"params.yaml: '{where}' must map numbers to labels, e.g. {{-1: paid in full}}")
    labels: dict[float, str] = {}
    for key, label in raw.items():
        if isinstance(key, bool) or not isinstance(key, int | float):
            raise ConfigError(f"params.yaml: '{where}' key {key!r} is not a number")
        if (lo is not None and key < float(lo)) or (hi is not None and key > float(hi)):
            raise ConfigError(f"params.yaml: '{where}' key {key} is outside the feature's range {lo}..{hi}")
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"params.yaml: '{where}.{key}' needs a non-empty text label")
        labels[float(key)] = label.strip()
    return labels


def _source(raw: dict[str, Any], where: str) -> SourceSpec:
    download = raw.get("download")
    dl = None
    if download:
        dl = DownloadSpec(
            url=_require(download, "url", f"{where}.download"),
            sha256=download.get("sha256"),
            member=download.get("member"),
            file=_require(download, "file", f"{where}.download"),
            format=download.get("format", "csv"),
            read_options=dict(download.get("read_options") or {}),
        )
    return SourceSpec(
        file=_require(raw, "file", where),
        format=raw.get("format", "csv"),
        read_options=dict(raw.get("read_options") or {}),
        sha256=raw.get("sha256"),
        homepage=str(raw.get("homepage", "")),
        instructions=str(raw.get("instructions", "")),
        download=dl,
    )


def build_profile(name: str, raw: dict[str, Any]) -> Profile:
    """Check one profile for internal consistency and return it typed."""
    where = f"profiles.{name}"
    rename = {str(k): str(v) for k, v in _require(raw, "rename", where).items()}
    target = _require(raw, "target", where)
    target_column = _require(target, "column", f"{where}.target")
    features = {
        fname: _feature(fname, fraw, f"{where}.features.{fname}")
        for fname, fraw in _require(raw, "features", where).items()
    }
    known = set(rename.values())
    for col in [*features, target_column]:
        if col not in known:
            raise ConfigError(f"params.yaml: '{where}': column '{col}' is not produced by '{where}.rename'")
    target_encode = tuple(raw.get("target_encode") or ())
    for col in target_encode:
        if col not in features or not features[col].is_categorical:
            raise ConfigError(f"params.yaml: '{where}.target_encode' names '{col}', which is not a categorical feature")
    for col, spec in features.items():
        if spec.is_categorical and spec.values is None and col not in target_encode:
            raise ConfigError(
                f"params.yaml: '{where}.features.{col}' is an open category set; list its values or target-encode it"
            )
    clean = {
        col: CleanRule(pattern=str(_require(rule, "pattern", f"{where}.clean.{col}")),
                       replace=str(rule.get("replace", "")))
        for col, rule in (raw.get("clean") or {}).items()
    }
    return Profile(
        name=name,
        title=str(raw.get("title", name)),
        source=_source(_require(raw, "source", where), f"{where}.source"),
        rename=rename,
        id_column=raw.get("id_column"),
        target_column=target_column,
        positive=_require(target, "positive", f"{where}.target"),
        drop=tuple(raw.get("drop") or ()),
        clean=clean,
        target_encode=target_encode,
        features=features,
    )


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the type ``hint`` names (``int``, ``float | None``, ``dict[str, Any] | None``...)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in args:
        return None
    base = next(a for a in args if a is not type(None))
    base = typing.get_origin(base) or base
    try:
        if base is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if base in (int, float):
            if isinstance(value, bool):
                raise TypeError
            return base(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise TypeError
            return str(value)
        if base in (dict, list):
            if not isinstance(value, base):
                raise TypeError
            return value
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"params.yaml: '{where}' has an unusable value {value!r} (expected {base.__name__})")


def section_settings(cls: type[T], raw: Any, name: str) -> T:
    """A typed, defaulted params.yaml section: absent keys keep the dataclass defaults.

    Unknown keys and values of the wrong type fail naming the key, so a typo in an
    optional section is caught when the settings load, not when the command runs.
    """
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: '{name}' must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"params.yaml: unknown key(s) in '{name}': {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    values = {key: _coerce(raw[key], hints[key], f"{name}.{key}") for key in known if key in raw}
    return cls(**values)


def deploy_settings(raw: dict[str, Any] | None) -> DeploySettings:
    """Typed ``deploy:`` section; absent keys keep the defaults, bad values fail naming the key."""
    settings = section_settings(DeploySettings, raw, "deploy")
    for key in ("port", "container_port"):
        if not 0 < getattr(settings, key) < 65536:
            raise ConfigError(f"params.yaml: 'deploy.{key}' must be a TCP port, got {getattr(settings, key)}")
    for key in ("command_timeout", "poll_interval", "smoke_timeout", "http_timeout"):
        if getattr(settings, key) <= 0:
            raise ConfigError(f"params.yaml: 'deploy.{key}' must be a positive number of seconds")
    for key in ("region", "env", "app", "repository", "container_name"):
        if not getattr(settings, key).strip():
            raise ConfigError(f"params.yaml: 'deploy.{key}' must not be empty")
    if not settings.parameter_prefix.startswith("/"):
        raise ConfigError("params.yaml: 'deploy.parameter_prefix' must start with '/' (an SSM parameter path)")
    return settings


BATCH_COMPRESSIONS = ("snappy", "zstd", "gzip", "lz4", "brotli", "none")


def batch_settings(raw: dict[str, Any] | None) -> BatchSettings:
    """Typed ``batch:`` section; absent keys keep the defaults, unusable values fail naming the key."""
    settings = section_settings(BatchSettings, raw, "batch")
    for key in ("chunk_rows", "csv_block_bytes", "log_every_rows", "reasons_chunk_rows", "dask_workers",
                "dask_threads_per_worker", "dask_partition_bytes"):
        if getattr(settings, key) < 1:
            raise ConfigError(f"params.yaml: 'batch.{key}' must be a positive number, got {getattr(settings, key)}")
    if settings.num_threads < 0:
        raise ConfigError(f"params.yaml: 'batch.num_threads' must be 0 (one per core) or more, "
                          f"got {settings.num_threads}")
    if settings.compression not in BATCH_COMPRESSIONS:
        raise ConfigError(f"params.yaml: 'batch.compression' must be one of {', '.join(BATCH_COMPRESSIONS)}, "
                          f"got {settings.compression!r}")
    return settings


def monitoring_settings(raw: dict[str, Any] | None) -> MonitoringSettings:
    """Typed ``monitoring:`` section; absent keys keep the defaults, inconsistent values fail naming the key."""
    settings = section_settings(MonitoringSettings, raw, "monitoring")
    for key in ("psi_bins", "report_sample_rows", "calibration_bins"):
        if getattr(settings, key) < 2:
            raise ConfigError(f"params.yaml: 'monitoring.{key}' must be at least 2, got {getattr(settings, key)}")
    if not 0 < settings.psi_epsilon < 0.01:
        raise ConfigError(f"params.yaml: 'monitoring.psi_epsilon' must be in (0, 0.01), got {settings.psi_epsilon}")
    if not 0 < settings.psi_moderate < settings.psi_significant:
        raise ConfigError("params.yaml: 'monitoring.psi_moderate' must be positive and below "
                          f"'monitoring.psi_significant' (got {settings.psi_moderate} and {settings.psi_significant})")
    if settings.drift_flag_band not in ("moderate", "significant"):
        raise ConfigError("params.yaml: 'monitoring.drift_flag_band' must be moderate or significant, "
                          f"got {settings.drift_flag_band!r}")
    if not 0 <= settings.max_auc_drop < 1:
        raise ConfigError(f"params.yaml: 'monitoring.max_auc_drop' must be in [0, 1), got {settings.max_auc_drop}")
    for key in ("drift_min_rows", "performance_min_rows"):
        if getattr(settings, key) < 1:
            raise ConfigError(f"params.yaml: 'monitoring.{key}' must be a positive row count")
    host, _, port = settings.exporter_bind.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"params.yaml: 'monitoring.exporter_bind' must be host:port, got {settings.exporter_bind!r}")
    return settings


def settings_from_dict(params: dict[str, Any], root: Path) -> Settings:
    """Build settings from an already-parsed params mapping (used by tests)."""
    dataset = _require(params, "dataset", "")
    profiles = _require(params, "profiles", "")
    if dataset not in profiles:
        raise ConfigError(
            f"params.yaml: dataset '{dataset}' has no profile; known profiles: {', '.join(sorted(profiles))}"
        )
    paths_raw = _require(params, "paths", "")
    paths = Paths(root=root, **{k: root / str(_require(paths_raw, k, "paths")) for k in (
        "external", "raw", "interim", "processed", "models", "metrics", "plots", "reports")})
    ing = _require(params, "ingest", "")
    val = _require(params, "validate", "")
    spl = _require(params, "split", "")
    trn = _require(params, "train", "")
    thr = _require(params, "threshold", "")
    ev = _require(params, "evaluate", "")
    mlf = _require(params, "mlflow", "")
    gate = _require(params, "gate", "")
    srv = _require(params, "serve", "")
    split = SplitSettings(
        valid_size=float(_require(spl, "valid_size", "split")),
        test_size=float(_require(spl, "test_size", "split")),
        seed=int(_require(spl, "seed", "split")),
    )
    if not (0 < split.valid_size < 1 and 0 < split.test_size < 1 and split.valid_size + split.test_size < 1):
        raise ConfigError("params.yaml: split.valid_size and split.test_size must be in (0, 1) and sum below 1")
    sample_rows = ing.get("sample_rows")
    if sample_rows is not None and int(sample_rows) < 0:
        raise ConfigError(f"params.yaml: ingest.sample_rows must be null or a positive row count, got {sample_rows}")
    return Settings(
        dataset=dataset,
        profile=build_profile(dataset, profiles[dataset]),
        paths=paths,
        ingest=IngestSettings(
            sample_rows=None if sample_rows in (None, 0) else int(sample_rows),
            sample_seed=int(ing.get("sample_seed", 0)),
            download_timeout=float(ing.get("download_timeout", 60)),
        ),
        validate=ValidateSettings(
            max_reject_share=float(_require(val, "max_reject_share", "validate")),
            log_examples=int(val.get("log_examples", 3)),
        ),
        split=split,
        train=TrainSettings(
            seed=int(_require(trn, "seed", "train")),
            target_encoder=dict(_require(trn, "target_encoder", "train")),
            early_stopping_rounds=int(_require(trn, "early_stopping_rounds", "train")),
            log_every=int(trn.get("log_every", 100)),
            lgbm=dict(_require(trn, "lgbm", "train")),
        ),
        threshold=ThresholdSettings(
            cost_false_negative=float(_require(thr, "cost_false_negative", "threshold")),
            cost_false_positive=float(_require(thr, "cost_false_positive", "threshold")),
        ),
        evaluate=EvaluateSettings(
            calibration_bins=int(_require(ev, "calibration_bins", "evaluate")),
            top_features=int(_require(ev, "top_features", "evaluate")),
        ),
        mlflow=MlflowSettings(
            database=str(_require(mlf, "database", "mlflow")),
            artifact_root=str(_require(mlf, "artifact_root", "mlflow")),
            experiment=str(_require(mlf, "experiment", "mlflow")),
            model_name_prefix=str(_require(mlf, "model_name_prefix", "mlflow")),
            connect_timeout=float(mlf.get("connect_timeout", 5)),
        ),
        gate=GateSettings(
            min_roc_auc=float(_require(gate, "min_roc_auc", "gate")),
            max_brier=None if gate.get("max_brier") is None else float(gate["max_brier"]),
            max_regression=float(_require(gate, "max_regression", "gate")),
            fail_pipeline=bool(gate.get("fail_pipeline", False)),
        ),
        serve=ServeSettings(
            model_uri=srv.get("model_uri") or None,
            max_batch=int(_require(srv, "max_batch", "serve")),
            max_body_bytes=int(_require(srv, "max_body_bytes", "serve")),
            top_reasons=int(_require(srv, "top_reasons", "serve")),
            refer_margin=float(_require(srv, "refer_margin", "serve")),
            database_url=str(_require(srv, "database_url", "serve")),
            log_max_pending=int(srv.get("log_max_pending", 10_000)),
            log_linger_seconds=_bounded(srv.get("log_linger_seconds", 0.1), "serve.log_linger_seconds", 0.0, 10.0),
            num_threads=int(srv.get("num_threads", 1)),
            compile_trees=bool(srv.get("compile_trees", True)),
            compiled_cache_dir=str(srv["compiled_cache_dir"]) if srv.get("compiled_cache_dir") else None,
            bind=str(srv.get("bind", "127.0.0.1:8000")),
        ),
        raw=params,
        deploy=deploy_settings(params.get("deploy")),
        retrain=section_settings(RetrainSettings, params.get("retrain"), "retrain"),
        monitoring=monitoring_settings(params.get("monitoring")),
        batch=batch_settings(params.get("batch")),
    )


def _bounded(value: Any, key: str, low: float, high: float) -> float:
    """A number within [low, high], or a ConfigError naming the key."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"params.yaml: '{key}' must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"params.yaml: '{key}' must be between {low:g} and {high:g}, got {number:g}")
    return number


def load_settings(params_file: str | Path = PARAMS_FILE) -> Settings:
    """Read params.yaml; paths in it are relative to the file's own folder."""
    path = Path(params_file).resolve()
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the project root, where params.yaml lives")
    return settings_from_dict(read_params(path), path.parent)
