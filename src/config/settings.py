"""params.yaml -> typed, validated :class:`Settings`: the one reader every stage, CLI and the service use.

The whole file is checked when it loads (the active profile included), so a typo fails
once, early, in one line naming the key path, the value and what is allowed, rather
than as a ``KeyError`` or a silently ignored setting deep inside a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from src.config.base import Strict
from src.config.errors import ConfigError, config_error
from src.config.profile import Profile, build_profile
from src.config.sections import (
    BatchSettings,
    DeploySettings,
    EvaluateSettings,
    FairnessSettings,
    FlowsSettings,
    GateSettings,
    IngestSettings,
    MlflowSettings,
    MonitoringSettings,
    NotifySettings,
    PathsSection,
    RetrainSettings,
    ServeSettings,
    SplitSettings,
    ThresholdSettings,
    TrainSettings,
    ValidateSettings,
)
from src.config.yaml12 import read_params

PARAMS_FILE = "params.yaml"


class ParamsFile(Strict):
    """params.yaml as a whole: every section; profiles are checked one at a time (build_profile)."""

    dataset: str
    paths: PathsSection
    ingest: IngestSettings
    validate_: ValidateSettings = Field(alias="validate")
    split: SplitSettings
    train: TrainSettings
    threshold: ThresholdSettings
    evaluate: EvaluateSettings
    mlflow: MlflowSettings
    gate: GateSettings
    fairness: FairnessSettings = Field(default_factory=FairnessSettings)
    serve: ServeSettings
    deploy: DeploySettings = Field(default_factory=DeploySettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    flows: FlowsSettings = Field(default_factory=FlowsSettings)
    profiles: dict[str, Any]


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
    fairness: FairnessSettings = field(default_factory=FairnessSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    flows: FlowsSettings = field(default_factory=FlowsSettings)

    @property
    def registered_model_name(self) -> str:
        return f"{self.mlflow.model_name_prefix}-{self.dataset}"

    def profile_named(self, name: str) -> Profile:
        """Another profile of the same params file (a model trained for it, say), checked like the active one."""
        if name == self.dataset:
            return self.profile
        profiles = self.raw.get("profiles") or {}
        if name not in profiles:
            raise ConfigError(f"params.yaml: no profile '{name}'; known profiles: {', '.join(sorted(profiles))}")
        return _with_policy(build_profile(name, profiles[name]), self.fairness)

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
    def fairness_file(self) -> Path:
        """The fairness stage's report (figures by group, proxy screen, the floors' verdict)."""
        return self.paths.metrics / "fairness.json"

    @property
    def stability_file(self) -> Path:
        """The stability stage's report (the training's folds' held-out ROC-AUC; retrains on other split seeds)."""
        return self.paths.metrics / "stability.json"

    @property
    def registration_file(self) -> Path:
        """The register stage's receipt: the model bytes (sha256) now in the registry."""
        return self.paths.models / "registration.json"


def _with_policy(profile: Profile, fairness: FairnessSettings) -> Profile:
    """The profile as the pipeline trains on it: protected attributes become inputs only for research."""
    if not fairness.use_protected or not profile.protected:
        return profile
    return profile.with_inputs([*profile.features, *profile.protected])


def settings_from_dict(params: Any, root: Path) -> Settings:
    """Check an already-parsed params mapping and build settings whose relative paths are under ``root``."""
    if not isinstance(params, dict):
        raise ConfigError("params.yaml: the file must be a mapping of sections (dataset:, paths:, ...)")
    try:
        parsed = ParamsFile.model_validate(params)
    except ValidationError as exc:
        raise config_error(exc, (), ParamsFile) from None
    if parsed.dataset not in parsed.profiles:
        raise ConfigError(f"params.yaml: 'dataset' is {parsed.dataset!r}, which has no profile; "
                          f"known profiles: {', '.join(sorted(parsed.profiles))}")
    section = parsed.paths.model_dump()
    return Settings(
        dataset=parsed.dataset,
        profile=_with_policy(build_profile(parsed.dataset, parsed.profiles[parsed.dataset]), parsed.fairness),
        paths=Paths(root=root, **{name: root / value for name, value in section.items()}),
        ingest=parsed.ingest, validate=parsed.validate_, split=parsed.split, train=parsed.train,
        threshold=parsed.threshold, evaluate=parsed.evaluate, mlflow=parsed.mlflow, gate=parsed.gate,
        serve=parsed.serve, raw=params, deploy=parsed.deploy, retrain=parsed.retrain,
        monitoring=parsed.monitoring, batch=parsed.batch, fairness=parsed.fairness, notify=parsed.notify,
        flows=parsed.flows,
    )


def load_settings(params_file: str | Path = PARAMS_FILE, dataset: str | None = None) -> Settings:
    """Read params.yaml (paths in it are relative to its folder); ``dataset`` picks another profile."""
    path = Path(params_file).resolve()
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the project root, where params.yaml lives")
    params = read_params(path)
    if dataset is not None and isinstance(params, dict):
        params = {**params, "dataset": dataset}
    return settings_from_dict(params, path.parent)


def deploy_settings(raw: dict[str, Any] | None) -> DeploySettings:
    """A ``deploy:`` section (or the CLI's overrides merged into one), checked like params.yaml's."""
    try:
        return DeploySettings.model_validate(raw or {})
    except ValidationError as exc:
        raise config_error(exc, ("deploy",), DeploySettings) from None
