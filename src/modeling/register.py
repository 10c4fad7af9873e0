"""Stage 6, register: log the run to MLflow, register the model, run the quality gate.

One MLflow run per pipeline run holds the active params, the test and
data-quality metrics, the plots and model card, the datasets' digests and row
counts, and tags for the git commit, the dvc.lock hash and the profile. The
model is registered as a new version with alias ``challenger``; when it passes
the gate (floors on the test split, and no worse than the current ``champion``
by more than ``gate.max_regression`` when both score the *same* test rows), the
``champion`` alias moves to it. The version's tags (``gate.*``) and the log record
the decision and why.

``metrics/gate.json`` holds only what the stage's inputs determine: the model's
fingerprint, its test metrics, the gate's settings and the verdict of the floors. The
version number and the comparison with the champion depend on the registry's state,
not on the inputs, so they live in MLflow: a fresh clone's ``dvc repro`` reproduces
gate.json byte for byte, and ``dvc metrics diff`` compares it like any metric.
``models/registration.json`` (a cached output, so a fresh clone, whose registry is
empty, runs this stage) is the receipt: which model bytes are in the registry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
import warnings
from dataclasses import dataclass
from typing import Any

import joblib
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from src import notify
from src.common import PipelineError, read_json, read_table, run_main, write_json
from src.config import FairnessSettings, GateSettings, Profile, Settings, load_settings
from src.modeling.metrics import score_metrics
from src.modeling.pyfunc_model import CreditDefaultModel, code_dir, example_rows, pip_requirements, signature_for
from src.modeling.registry import CHALLENGER, CHAMPION, _client, alias_version, set_alias
from src.modeling.tracking import connect, ensure_experiment

log = logging.getLogger(__name__)

GATE_METRICS = ("roc_auc", "brier", "pr_auc", "ks", "log_loss")
# Float slack so a regression of exactly gate.max_regression counts as allowed (0.80 - 0.79 > 0.01 in binary).
EPSILON = 1e-12


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]
    warnings: tuple[str, ...] = ()  # fairness floors set to warn that failed: promoted anyway, on record


def gate_decision(challenger: dict[str, float], champion: dict[str, float] | None, gate: GateSettings,
                  fairness: dict[str, Any] | None = None) -> GateDecision:
    """Pass/fail with every reason, from metrics of both models on the same test rows and the fairness verdict.

    ``fairness`` is the fairness stage's verdict (metrics/fairness.json ``gate``): a failed floor set
    to ``block`` fails the gate; one set to ``warn`` passes it with the warning kept.
    """
    fairness = fairness or {"verdict": "not measured", "blocking": [], "warnings": []}
    warnings_ = tuple(fairness["warnings"])
    reasons: list[str] = list(fairness["blocking"])
    if challenger["roc_auc"] < gate.min_roc_auc:
        reasons.append(f"roc_auc {challenger['roc_auc']:.4f} is below the floor gate.min_roc_auc = {gate.min_roc_auc}")
    if gate.max_brier is not None and challenger["brier"] > gate.max_brier:
        reasons.append(f"brier {challenger['brier']:.4f} is above the ceiling gate.max_brier = {gate.max_brier}")
    if champion is not None:
        drop = champion["roc_auc"] - challenger["roc_auc"]
        if drop > gate.max_regression + EPSILON:
            reasons.append(f"roc_auc {challenger['roc_auc']:.4f} trails the champion's {champion['roc_auc']:.4f} "
                           f"by {drop:.4f}, more than gate.max_regression = {gate.max_regression}")
    if reasons:
        return GateDecision(False, reasons, warnings_)
    if champion is None:
        return GateDecision(True, ["no champion yet; the floors are met"], warnings_)
    return GateDecision(True, [f"roc_auc {challenger['roc_auc']:.4f} vs champion {champion['roc_auc']:.4f} "
                               f"(allowed regression {gate.max_regression}); floors met"], warnings_)


def prohibited_inputs(inputs: list[str], profile: Profile, fairness: FairnessSettings) -> list[str]:
    """A model's inputs that the policy forbids: protected attributes, unless fairness.use_protected (research)."""
    return [] if fairness.use_protected else [c for c in inputs if c in profile.protected]


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested params as dotted keys, the way `dvc params diff` names them."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(tree) if isinstance(tree, list) else str(tree)}


def active_params(raw: dict[str, Any], dataset: str) -> dict[str, str]:
    """Every section of params.yaml plus the active profile (other profiles are not this run's)."""
    sections = {k: v for k, v in raw.items() if k != "profiles"}
    return {**flatten(sections), **flatten({"profile": raw["profiles"][dataset]})}


def file_sha256(path: Any) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_fingerprint(model_file: Any, meta: dict[str, Any]) -> str:
    """What makes a model the same model: its bytes and its metadata."""
    digest = hashlib.sha256(model_file.read_bytes())
    digest.update(json.dumps(meta, sort_keys=True).encode())
    return digest.hexdigest()


def gate_settings(gate: GateSettings) -> dict[str, Any]:
    return {"min_roc_auc": gate.min_roc_auc, "max_brier": gate.max_brier, "max_regression": gate.max_regression,
            "fairness": gate.fairness.model_dump()}


def gate_report(name: str, model_sha: str, challenger: dict[str, float], test_rows: int,
                gate: GateSettings, fairness: dict[str, Any] | None = None) -> dict[str, Any]:
    """metrics/gate.json: the floors' verdict on this model, from the stage's inputs alone."""
    floors = gate_decision(challenger, None, gate, fairness)
    return {
        "registered_model": name,
        "model_sha256": model_sha,
        "floors": "passed" if floors.passed else "failed",
        "reasons": [r for r in floors.reasons if not r.startswith("no champion")],
        "fairness": (fairness or {}).get("verdict", "not measured"),
        "warnings": list(floors.warnings),
        "challenger": {k: round(challenger[k], 6) for k in GATE_METRICS},
        "test_rows": test_rows,
        "gate": gate_settings(gate),
    }


def registration(client: Any, name: str, model_sha: str) -> dict[str, Any] | None:
    """The registry's record of the version holding these model bytes: version, gate decision, champion compared."""
    version = _find_version_by_hash(client, name, model_sha)
    if version is None:
        return None
    report = json.loads((version.tags or {}).get("gate.report", "{}") or "{}")
    return {"version": int(version.version), **report}


def git_commit(root: Any) -> str:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True)
        return proc.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _find_version_by_hash(client: Any, name: str, sha: str) -> Any | None:
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return next((v for v in versions if (v.tags or {}).get("model_sha256") == sha), None)


def _score_champion(name: str, version: str, test: pd.DataFrame, target: str,
                    threshold: float) -> tuple[dict[str, float], list[str]]:
    """The champion's metrics on the same test rows (with its own inputs), and those inputs."""
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    inputs = list(model.unwrap_python_model().meta["features"])
    proba = model.predict(test[inputs]).iloc[:, 0].to_numpy()
    return score_metrics(test[target].to_numpy(), proba, threshold), inputs


def run(settings: Settings) -> dict[str, Any]:
    with warnings.catch_warnings():
        # MLflow's hints about dataset-source guessing and integer columns concern
        # schema *inference*; the model's signature is declared from the profile.
        warnings.filterwarnings("ignore", message=".*dataset source can be interpreted.*")
        warnings.filterwarnings("ignore", message=".*Integer columns in Python cannot represent missing.*")
        warnings.filterwarnings("ignore", message=".*Passing a Python object as `python_model`.*")
        return _run(settings)


def _quiet_cloudpickle_notice(record: logging.LogRecord) -> bool:
    return "CloudPickle" not in record.getMessage()


def _log_and_register(settings: Settings, store: Any, name: str, model_sha: str, meta: dict[str, Any],
                      test_metrics: dict[str, Any], quality: dict[str, Any],
                      splits: dict[str, pd.DataFrame]) -> str:
    """One MLflow run with the params, metrics, datasets, plots and card; the model as a new version."""
    profile = settings.profile
    root = settings.paths.root
    target = profile.target_column
    test = splits["test"]
    experiment_id = ensure_experiment(settings, store)
    commit = git_commit(root)
    dvc_lock = root / "dvc.lock"
    tags = {
        "dataset": profile.name,
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "dvc_lock_sha256": file_sha256(dvc_lock) if dvc_lock.exists() else "none",
        "model_sha256": model_sha,
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{profile.name}-{commit[:8]}", tags=tags) as run:
        mlflow.log_params(active_params(settings.raw, settings.dataset))
        mlflow.log_metrics({f"test.{k}": float(v) for k, v in test_metrics.items() if isinstance(v, int | float)})
        mlflow.log_metrics({f"valid.{k}": float(v) for k, v in meta["valid_metrics"].items()})
        mlflow.log_metrics({f"data.{k}": float(quality[k]) for k in ("rows_in", "accepted", "rejected",
                                                                     "reject_share")})
        mlflow.log_metric("train.best_iteration", meta["best_iteration"])
        for split, frame in splits.items():
            dataset = mlflow.data.from_pandas(frame, source=str(settings.split_table(split).relative_to(root)),
                                              name=f"{profile.name}-{split}", targets=target)
            mlflow.log_input(dataset, context=split)
            mlflow.log_metric(f"rows.{split}", len(frame))
        for folder, artifact_path in ((settings.paths.plots, "plots"), (settings.paths.metrics, "metrics")):
            mlflow.log_artifacts(str(folder), artifact_path)
        mlflow.log_artifact(str(settings.paths.reports / "model_card.md"))
        mlflow.log_artifact(str(settings.model_meta_file))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=CreditDefaultModel(),
            artifacts={"pipeline": str(settings.model_file), "meta": str(settings.model_meta_file),
                       "fairness": str(settings.fairness_file)},
            code_paths=[str(code_dir())],
            signature=signature_for(profile),
            input_example=example_rows(test, profile),
            pip_requirements=pip_requirements(),
            registered_model_name=name,
        )
        version = str(info.registered_model_version)
        log.info("logged run %s; registered %s v%s", run.info.run_id, name, version)
    return version


def _run(settings: Settings) -> dict[str, Any]:
    logging.getLogger("mlflow.pyfunc").addFilter(_quiet_cloudpickle_notice)
    started = time.perf_counter()
    profile = settings.profile
    name = settings.registered_model_name
    store = connect(settings)
    client = _client()
    meta = read_json(settings.model_meta_file)
    test_metrics = read_json(settings.paths.metrics / "test.json")
    quality = read_json(settings.paths.metrics / "data_quality.json")
    fairness = read_json(settings.fairness_file)["gate"]
    model_sha = model_fingerprint(settings.model_file, meta)
    gate_file = settings.paths.metrics / "gate.json"

    splits = {s: read_table(settings.split_table(s)) for s in ("train", "valid", "test")}
    test = splits["test"]
    pipeline = joblib.load(settings.model_file)
    features, target = meta["features"], profile.target_column
    challenger = score_metrics(test[target].to_numpy(), pipeline.predict_proba(test[features])[:, 1],
                               meta["threshold"])
    write_json(gate_file, gate_report(name, model_sha, challenger, len(test), settings.gate, fairness))

    existing = registration(client, name, model_sha)
    if existing is not None and existing.get("decision"):
        log.info("this model (sha256 %s) is already %s v%s (gate: %s); nothing to register", model_sha[:12], name,
                 existing["version"], existing["decision"])
        write_json(settings.registration_file, {"registered_model": name, "model_sha256": model_sha})
        return {**existing, "already_registered": True}
    if existing is not None:  # registered, then stopped before the gate: judge that version now
        version = str(existing["version"])
        log.warning("%s v%s holds this model but no gate decision (a run stopped after registering it); "
                    "judging it now", name, version)
    else:
        version = _log_and_register(settings, store, name, model_sha, meta, test_metrics, quality, splits)


    for key in GATE_METRICS:
        client.set_model_version_tag(name, version, f"test.{key}", f"{challenger[key]:.6f}")
    client.set_model_version_tag(name, version, "model_sha256", model_sha)
    client.set_model_version_tag(name, version, "dataset", profile.name)
    set_alias(client, name, CHALLENGER, version, "new version from dvc repro", kind="register")

    champion_version = alias_version(client, name, CHAMPION)
    champion = None
    if champion_version is not None:
        champion, champion_inputs = _score_champion(name, champion_version, test, target, meta["threshold"])
        prohibited = prohibited_inputs(champion_inputs, profile, settings.fairness)
        if prohibited:  # no comparison owed to a model the policy forbids: the floors alone decide
            log.warning("champion v%s uses protected attributes (%s) as inputs, which fairness.use_protected "
                        "forbids: the challenger is judged on the floors alone", champion_version,
                        ", ".join(prohibited))
            champion = None
    decision = gate_decision(challenger, champion, settings.gate, fairness)
    if champion_version is not None and champion is None and decision.passed:
        decision = GateDecision(True, [f"champion v{champion_version} uses protected attributes as inputs; "
                                       "the floors are met"], decision.warnings)
    report = {
        "registered_model": name,
        "version": int(version),
        "decision": "passed" if decision.passed else "failed",
        "reasons": decision.reasons,
        "fairness": fairness["verdict"],
        "warnings": list(decision.warnings),
        "challenger": {k: round(challenger[k], 6) for k in GATE_METRICS},
        "champion_version": int(champion_version) if champion_version else None,
        "champion": {k: round(champion[k], 6) for k in GATE_METRICS} if champion else None,
        "test_rows": len(test),
        "gate": gate_settings(settings.gate),
    }
    client.set_model_version_tag(name, version, "gate.decision", report["decision"])
    client.set_model_version_tag(name, version, "gate.reasons", "; ".join(decision.reasons))
    client.set_model_version_tag(name, version, "gate.fairness", fairness["verdict"])
    client.set_model_version_tag(name, version, "gate.warnings", "; ".join(decision.warnings))
    client.set_model_version_tag(name, version, "gate.report", json.dumps(report))
    if decision.passed:
        set_alias(client, name, CHAMPION, version, "passed the quality gate: " + "; ".join(decision.reasons),
                  kind="gate")
    else:
        log.warning("v%s failed the quality gate; champion stays v%s: %s", version, champion_version,
                    "; ".join(decision.reasons))
        notify.send(notify.Event(
            "gate_blocked", "warning", f"Quality gate blocked {name} v{version}",
            f"{name} v{version} failed the quality gate, so the champion stays "
            f"{'v' + str(champion_version) if champion_version else 'unset'}: {'; '.join(decision.reasons)}.",
            where=[str(settings.paths.metrics / "gate.json"), f"MLflow: {name} v{version}, tags gate.*"],
            details={"version": int(version), "champion": champion_version, "reasons": decision.reasons},
            dataset=settings.dataset), settings.notify)
    log.info("gate: v%s %s: %s", version, report["decision"], "; ".join(decision.reasons))
    for warning in decision.warnings:
        log.warning("gate: v%s fairness warning: %s", version, warning)
    write_json(settings.registration_file, {"registered_model": name, "model_sha256": model_sha})
    log.info("register stage took %.1f s (store: %s)", time.perf_counter() - started, store.tracking_uri)
    if not decision.passed and settings.gate.fail_pipeline:
        raise PipelineError(f"{name} v{version} failed the quality gate (gate.fail_pipeline is true): "
                            + "; ".join(decision.reasons))
    return report


def main() -> None:
    run(load_settings())


if __name__ == "__main__":
    run_main(main)
