"""Typed settings built from ``params.yaml``, the project's single source of configuration.

Every stage, CLI and the service read it through :func:`load_settings`: strict pydantic
models (sections), the dataset profiles (profile), one-line errors (errors), YAML 1.2
reading as DVC does (yaml12), and the environment's overrides in one place (env).
"""

from src.config.errors import ConfigError
from src.config.profile import (
    CleanRule,
    DownloadSpec,
    FeatureSpec,
    FeatureType,
    Profile,
    ProtectedSpec,
    SourceSpec,
    TargetSpec,
    build_profile,
)
from src.config.sections import (
    AuthSettings,
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
    RetrainSettings,
    ServeSettings,
    SplitSettings,
    ThresholdSettings,
    TrainSettings,
    UploadSettings,
    ValidateSettings,
)
from src.config.settings import PARAMS_FILE, Paths, Settings, deploy_settings, load_settings, settings_from_dict
from src.config.yaml12 import read_params

__all__ = [
    "PARAMS_FILE",
    "AuthSettings",
    "BatchSettings",
    "CleanRule",
    "ConfigError",
    "DeploySettings",
    "DownloadSpec",
    "EvaluateSettings",
    "FairnessSettings",
    "FeatureSpec",
    "FeatureType",
    "FlowsSettings",
    "GateSettings",
    "IngestSettings",
    "MlflowSettings",
    "MonitoringSettings",
    "NotifySettings",
    "Paths",
    "Profile",
    "ProtectedSpec",
    "RetrainSettings",
    "ServeSettings",
    "Settings",
    "SourceSpec",
    "SplitSettings",
    "TargetSpec",
    "ThresholdSettings",
    "TrainSettings",
    "UploadSettings",
    "ValidateSettings",
    "build_profile",
    "deploy_settings",
    "load_settings",
    "read_params",
    "settings_from_dict",
]
