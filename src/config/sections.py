"""The sections of params.yaml besides the profiles, each a strict model with its defaults and bounds.

A default is written once, here; params.yaml holds the project's chosen values. Cross-key
rules (split sizes, PSI bands, ports) are model validators that name the keys involved.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from src.config.base import PER_INPUT_LGBM_KEYS, Strict, as_tuple, empty_as_none
from src.config.errors import KeyProblem

Seconds = float


class PathsSection(Strict):
    external: str   # raw public files: <external>/<dataset>/<file>
    raw: str
    interim: str
    processed: str
    models: str
    metrics: str
    plots: str
    reports: str


class IngestSettings(Strict):
    sample_rows: int | None = Field(None, ge=0)  # null or 0: every row
    sample_seed: int = 0
    download_timeout: Seconds = Field(60.0, gt=0)

    _all_rows = field_validator("sample_rows")(empty_as_none)


class ValidateSettings(Strict):
    max_reject_share: float = Field(ge=0, le=1)
    log_examples: int = Field(3, ge=0)


class SplitSettings(Strict):
    valid_size: float
    test_size: float
    seed: int

    @model_validator(mode="after")
    def _sizes(self) -> SplitSettings:
        v, t = self.valid_size, self.test_size
        if not (0 < v < 1 and 0 < t < 1 and v + t < 1):
            raise KeyProblem("", f"valid_size {v} and test_size {t}: 'split.valid_size' and 'split.test_size' "
                                 "must each be in (0, 1) and sum below 1")
        return self


class TargetEncoderSettings(Strict):
    """sklearn's TargetEncoder: folds of the cross-fitting, and the smoothing ("auto" or a number)."""

    cv: int = Field(5, ge=2)
    smooth: Literal["auto"] | float = "auto"

    @field_validator("smooth")
    @classmethod
    def _smooth(cls, value: Any) -> Any:
        if isinstance(value, float) and value < 0:
            raise KeyProblem("", f"is {value}; it must be auto or a number at least 0")
        return value


class TrainSettings(Strict):
    seed: int
    target_encoder: TargetEncoderSettings
    # k-fold cross-validation on train+valid: early stopping per fold, the threshold on the
    # out-of-fold predictions, the served model refit on all of train+valid. 0: off (early stopping
    # and the threshold on the validation split alone).
    cv_folds: int = Field(ge=0)
    early_stopping_rounds: int = Field(ge=1)
    log_every: int = Field(100, ge=0)  # 0: no per-iteration log lines
    lgbm: dict[str, Any]  # LightGBM's own parameters, passed to LGBMClassifier as they are

    @field_validator("cv_folds")
    @classmethod
    def _folds(cls, value: int) -> int:
        if value == 1:
            raise KeyProblem("", "is 1; it must be 0 (off) or at least 2 folds")
        return value

    @field_validator("lgbm")
    @classmethod
    def _directions_in_profile(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in PER_INPUT_LGBM_KEYS:
            if key in value:
                raise KeyProblem(key, "is set per input in the profile: profiles.<dataset>.features.<column>."
                                      "monotone: increasing | decreasing, or profiles.<dataset>.native_categorical")
        return value


class ThresholdSettings(Strict):
    cost_false_negative: float = Field(gt=0)
    cost_false_positive: float = Field(gt=0)


class EvaluateSettings(Strict):
    calibration_bins: int = Field(ge=2)
    top_features: int = Field(ge=1)
    # The stage `stability` retrains on each of these split seeds (empty: none) for the model card.
    stability_seeds: tuple[int, ...]

    _listed = field_validator("stability_seeds", mode="before")(as_tuple)


class MlflowSettings(Strict):
    database: str
    artifact_root: str
    experiment: str
    model_name_prefix: str
    connect_timeout: Seconds = Field(5.0, gt=0)


class FairnessFloors(Strict):
    """The gate's fairness floors, judged per protected attribute on the groups large enough to judge."""

    min_adverse_impact_ratio: float = Field(0.8, ge=0, le=1)  # four-fifths rule: approval rate vs the most approved
    max_equal_opportunity_gap: float = Field(0.1, ge=0, le=1)  # decline rates among those who repaid, max - min
    # block: a model that fails a floor is registered but not promoted; warn: promoted, the verdict recorded.
    # A profile may set its own per attribute (profiles.<dataset>.protected.<column>.gate).
    action: Literal["block", "warn"] = "block"
    # A gap beyond a floor counts only when chance alone is unlikely to explain it (one-sided
    # two-proportion z-test at this level): a group of 60 applicants swings by 0.1 by chance.
    significance: float = Field(0.05, gt=0, lt=0.5)


class GateSettings(Strict):
    min_roc_auc: float = Field(ge=0, le=1)
    max_brier: float | None = Field(None, ge=0, le=1)
    max_regression: float = Field(ge=0, le=1)
    fail_pipeline: bool = False
    fairness: FairnessFloors = Field(default_factory=FairnessFloors)


class FairnessSettings(Strict):
    """Fair lending: the policy on protected attributes (each profile's ``protected:`` columns)."""

    # Research only: true makes the protected attributes model inputs again. Such a model is not
    # fit for lending decisions (ECOA / Regulation B) and its model card says so in its first line.
    use_protected: bool = False
    min_group_rows: int = Field(50, ge=1)  # smaller groups are reported but not judged (too few for a stable rate)
    # An input that predicts a protected attribute better than this (ROC-AUC, 0.5 = not at all) is flagged.
    proxy_max_auc: float = Field(0.7, gt=0.5, le=1)


RATE = r"^\s*\d+\s*(?:/|per)\s*(?:\d+\s*)?(?:second|minute|hour|day)s?\s*$"


class AuthSettings(Strict):
    """Who may use the service (src/auth): API keys and web users from one hashed credentials file."""

    # Keys and users (hashed; python -m src.auth). Env AUTH_FILE overrides; relative to the project root.
    credentials_file: str = Field("auth/credentials.json", min_length=1)
    # With no credentials the service runs open only on a loopback address (and says so). Anywhere
    # else it refuses to start unless this is true (env AUTH_ALLOW_OPEN=true).
    allow_open: bool = False
    rate_limit: str = "30000/minute"  # per API key, unless the key has its own
    failed_limit: str = "20/minute"   # wrong keys or passwords per client address
    # memory:// counts per worker process; redis://host:6379 counts across workers and hosts.
    rate_limit_storage: str = Field("memory://", min_length=1)
    session_minutes: int = Field(30, ge=1, le=24 * 60)     # a web session ends after this long idle
    secure_cookies: bool = False                           # true behind HTTPS (the load balancer)
    # A header an authenticating proxy sets to the signed-in user's name (e.g. X-Forwarded-User):
    # trusted for the web form when set. Only safe when nothing but the proxy can reach the service.
    user_header: str | None = None
    # Proxies in front that append to X-Forwarded-For (1 behind the load balancer): the client
    # address the failed-attempt limit counts comes from there.
    trusted_proxies: int = Field(0, ge=0, le=5)

    _no_header = field_validator("user_header")(empty_as_none)

    @field_validator("rate_limit", "failed_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        if not re.match(RATE, value):
            raise KeyProblem("", f"is {value!r}; it must be a rate such as '600/minute' or '10 per second'")
        return value


class UploadSettings(Strict):
    """The batch upload page (flask_api/uploads.py): files scored in the background by the service itself."""

    max_bytes: int = Field(100_000_000, ge=1)  # a larger file is refused with the limit named
    folder: str = Field("uploads", min_length=1)  # job folders (input, outputs, status); relative: project root
    keep_minutes: float = Field(60.0, gt=0)  # a finished job's files are deleted this long after it ends
    jobs: int = Field(1, ge=1, le=8)  # files scored at once per worker process (one LightGBM thread each)


class ServeSettings(Strict):
    model_uri: str | None = None  # null: the profile's champion
    max_batch: int = Field(ge=1)
    max_body_bytes: int = Field(ge=1)
    top_reasons: int = Field(ge=0)
    refer_margin: float = Field(ge=0, lt=0.5)
    database_url: str = Field(min_length=1)
    bind: str = "127.0.0.1:8000"
    log_spool_dir: str | None = None  # null: beside a SQLite log, else <root>/spool/<digest of the URL>
    log_fsync_seconds: Seconds = Field(1.0, ge=0, le=60)
    log_ship_seconds: Seconds = Field(0.1, gt=0, le=60)
    num_threads: int = Field(1, ge=1)
    # A second address that serves only /metrics (and /health), e.g. 127.0.0.1:9100, kept off the
    # public port; env METRICS_BIND overrides. null: /metrics on the service port, where an API key
    # with the metrics (or admin) scope is needed once credentials exist.
    metrics_bind: str | None = None
    auth: AuthSettings = Field(default_factory=AuthSettings)
    uploads: UploadSettings = Field(default_factory=UploadSettings)

    _no_uri = field_validator("model_uri", "log_spool_dir", "metrics_bind")(empty_as_none)


class DeploySettings(Strict):
    """Where and how ``python -m src.deploy`` ships the service to AWS (ECR image, EC2 instances via SSM).

    Only the deploy CLI reads these, and every one of them can be overridden by a CLI flag.
    """

    region: str = Field("us-east-1", min_length=1)
    env: str = Field("production", min_length=1)  # instances tagged Env=<env>; SSM parameters under <prefix>/<env>/
    app: str = Field("credit-default", min_length=1)  # instances tagged App=<app>
    repository: str = Field("credit-default", min_length=1)  # ECR repository name
    container_name: str = Field("credit-default", min_length=1)
    port: int = 8000  # host port the container is published on (and smoke-tested)
    container_port: int = 8000  # port gunicorn listens on inside the image
    parameter_prefix: str = "/credit-default"
    env_file: str = "/etc/credit-default/env"  # on the instance: passed to `docker run --env-file` when present
    state_dir: str = "/var/lib/credit-default"  # on the instance: current-tag / previous-tag files
    command_timeout: Seconds = Field(600.0, gt=0)  # seconds for the SSM command on every instance
    poll_interval: Seconds = Field(3.0, gt=0)  # seconds between SSM status polls
    smoke_url: str | None = None  # None: http://<instance public or private IP>:<port>
    smoke_timeout: Seconds = Field(180.0, gt=0)  # seconds to wait for /ready after a restart (model load)
    http_timeout: Seconds = Field(10.0, gt=0)  # seconds per smoke-test HTTP request
    smoke_applicant: dict[str, Any] | None = None  # None: built from the service's /api/v1/schema
    # The load balancer's target group (infra/terraform output target_group_arn): a release takes each host
    # out of it, replaces the container, and waits until the group's health check passes before the next
    # host. null: no balancer (hosts are still released one at a time).
    target_group_arn: str | None = None
    drain_timeout: Seconds = Field(120.0, gt=0)  # seconds for a deregistered host to drain (the group's delay)

    @field_validator("port", "container_port")
    @classmethod
    def _tcp_port(cls, value: int) -> int:
        if not 0 < value < 65536:
            raise KeyProblem("", f"is {value}; it must be a TCP port (1-65535)")
        return value

    @field_validator("parameter_prefix")
    @classmethod
    def _ssm_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise KeyProblem("", f"is {value!r}; it must start with '/' (an SSM parameter path)")
        return value

    def parameter(self, name: str) -> str:
        """SSM parameter path, e.g. /credit-default/production/current-tag."""
        return f"{self.parameter_prefix.rstrip('/')}/{self.env}/{name}"


class RetrainSettings(Strict):
    """The retraining loop (``make retrain``, ``python -m src.modeling.retrain``)."""

    pull: bool = True  # `dvc pull --allow-missing` before the repro
    push: bool = True  # `dvc push` after it
    remote: str | None = None  # DVC remote for pull/push (None: the default one in .dvc/config)
    reload_url: str | None = None  # running service to reload (None: http://<serve.bind>)
    reload_timeout: Seconds = Field(60.0, gt=0)  # seconds for the reload and for /ready to report the new version


class MonitoringSettings(Strict):
    """Drift and performance monitoring (``python -m src.monitoring``)."""

    psi_bins: int = Field(10, ge=2)  # quantile bins of the reference for numeric features and the score
    psi_epsilon: float = Field(0.0001, gt=0, lt=0.01)  # a bin's share is floored at this, so PSI stays finite
    psi_moderate: float = Field(0.1, gt=0)  # PSI bands: below -> none; up to psi_significant -> moderate
    psi_significant: float = 0.25  # at or above -> significant
    drift_flag_band: Literal["moderate", "significant"] = "moderate"  # at or above this band counts as drifted
    drift_min_rows: int = Field(100, ge=1)  # fewer batch rows: PSI is mostly noise; logged as a warning
    # The second test per feature (KS for numbers, chi-square for codes; src/monitoring/stats.py) fires when its
    # p-value is below drift_alpha shared by all of a run's tests (Bonferroni) and its effect reaches the floor.
    drift_alpha: float = Field(0.01, gt=0, lt=1)
    ks_min_statistic: float = Field(0.05, ge=0, le=1)  # KS D: the largest gap between the two CDFs
    js_min_distance: float = Field(0.05, ge=0, le=1)  # Jensen-Shannon distance (base 2) of the category shares
    # With outcomes in the batch: a category's default rate differs from the reference's by at least this
    # (and significantly, at drift_alpha over all categories tested); categories with fewer rows are skipped.
    default_rate_min_difference: float = Field(0.03, gt=0, lt=1)
    default_rate_min_rows: int = Field(30, ge=1)
    calibration_bins: int = Field(10, ge=2)  # performance: quantile bins of the predicted probability
    max_auc_drop: float = Field(0.05, ge=0, lt=1)  # decay: ROC-AUC below the model's test ROC-AUC minus this
    performance_min_rows: int = Field(100, ge=1)  # fewer labelled rows (overall or in a period): decay not judged
    exporter_bind: str = "127.0.0.1:9108"  # `python -m src.monitoring exporter` listens here

    @model_validator(mode="after")
    def _bands_and_bind(self) -> MonitoringSettings:
        if not self.psi_moderate < self.psi_significant:
            raise KeyProblem("", f"psi_moderate {self.psi_moderate} and psi_significant {self.psi_significant}: "
                                 "'monitoring.psi_moderate' must be below 'monitoring.psi_significant'")
        host, _, port = self.exporter_bind.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise KeyProblem("exporter_bind", f"is {self.exporter_bind!r}; it must be host:port")
        return self


class BatchSettings(Strict):
    """Batch scoring (``python -m src.batch``)."""

    chunk_rows: int = Field(100_000, ge=1)  # rows read, validated and scored at a time: bounds memory
    csv_block_bytes: int = Field(8_388_608, ge=1)  # CSV read block; a block never holds more than chunk_rows rows
    log_every_rows: int = Field(1_000_000, ge=1)  # a progress line (rows, rows/s) every this many input rows
    reasons_chunk_rows: int = Field(10_000, ge=1)  # with --reasons: rows per chunk / Dask partition (TreeSHAP)
    num_threads: int = Field(0, ge=0)  # pandas engine: chunks scored at once, 1 LightGBM thread each (0 = cores)
    compression: Literal["snappy", "zstd", "gzip", "lz4", "brotli", "none"] = "snappy"  # Parquet codec
    dask_workers: int = Field(2, ge=1)  # --engine dask without --scheduler: LocalCluster worker processes
    dask_threads_per_worker: int = Field(1, ge=1)  # ...threads each (and LightGBM threads per partition)
    dask_partition_bytes: int = Field(8_388_608, ge=1)  # input bytes per Dask partition
    example_input: str = "data/processed/test.parquet"  # the DVC stage `score`: the held-out test split...
    example_output: str = "data/scored/test_scored.parquet"  # ...scored as a "new batch" into this file
    example_rejects: str = "data/scored/test_scored.rejects.parquet"  # ...its rejected rows here
    example_summary: str = "metrics/score_summary.json"  # ...and its counts here


class NotifySettings(Strict):
    """Notifications to a webhook (src/notify.py) when something needs a person: drift flagged, decay, a gate
    blocking a challenger, a batch rejecting too many rows, a flow failing. The URL is a secret (a Slack
    webhook embeds its token), so it comes from $NOTIFY_WEBHOOK_URL only; unset, notifications are off."""

    format: Literal["json", "slack"] = "json"  # json: event, severity, title, text, where, details; slack: text
    timeout_seconds: float = Field(5.0, gt=0, le=60)  # per delivery attempt
    attempts: int = Field(3, ge=1, le=10)  # a failed POST (network, 5xx) is retried, with backoff
    batch_reject_share: float = Field(0.05, ge=0, le=1)  # a batch run rejecting more than this share notifies


class FlowsSettings(Strict):
    """The scheduled flows (``python -m src.flows``, Prefect): where new applicants land, where each day's scores
    go, where matured outcomes arrive, and when each flow runs."""

    inbox: str = "data/inbox"  # new applicant files (CSV/Parquet) land here: a folder or an s3:// prefix
    outbox: str = "data/daily"  # <outbox>/<run date>/...: each day's scores, rejects and drift; <outbox>/_ledger
    outcomes: str | None = None  # matured outcomes (id + the profile's target) for the monitor flow; None: none yet
    log_window_hours: float = Field(24.0, gt=0)  # the monitor flow's prediction-log window, ending at the run
    batch_cron: str = "0 2 * * *"  # daily batch (the monitor flow runs right after each)
    retrain_cron: str = "0 3 * * 1"  # weekly retrain
    timezone: str = "UTC"
    task_retries: int = Field(2, ge=0, le=10)  # tasks that touch a store or the network: retried this often
    task_retry_seconds: float = Field(10.0, ge=0)
    task_timeout_seconds: float = Field(3600.0, gt=0)

    @field_validator("batch_cron", "retrain_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a cron expression (five fields: minute hour day month weekday)")
        return value
