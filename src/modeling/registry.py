"""The model registry: aliases with an audit trail, and the ``registry`` CLI.

    python -m src.modeling.registry list
    python -m src.modeling.registry promote VERSION --reason "..."
    python -m src.modeling.registry rollback [--reason "..."]
    python -m src.modeling.registry export ALIAS DIR
    python -m src.modeling.registry export models:/<name>@<alias>|models:/<name>/<version> DIR

Every alias change writes an audit tag on the registered model
(``audit.<UTC time>`` = who, when, alias, from, to, reason, kind), which is also
the history ``rollback`` reads to find the previous champion.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from src.common import PipelineError, run_main, write_json
from src.config import Settings, env, load_settings
from src.modeling.model_uri import is_models_uri, parse_model_uri
from src.modeling.tracking import connect

log = logging.getLogger(__name__)

CHAMPION = "champion"
# An export's copy of the registering run's evaluation (plots/, metrics/, model_card.md): what the
# service's model page draws when it serves an exported folder, with no registry to ask.
EVALUATION_DIR = "evaluation"
EVALUATION_ARTIFACTS = ("plots", "metrics", "model_card.md")
CHALLENGER = "challenger"
AUDIT_PREFIX = "audit."
ACTOR_ENV = env.MLOPS_ACTOR
ROLLED_BACK_TAG = "rolled_back"


def _client() -> Any:
    return MlflowClient()


def actor() -> str:
    """Who is changing the registry: $MLOPS_ACTOR (e.g. the CI job), else the OS user."""
    try:
        return env.text(ACTOR_ENV) or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass(frozen=True)
class AuditEntry:
    when: str
    alias: str
    from_version: str | None
    to_version: str
    who: str
    reason: str
    kind: str

    @classmethod
    def from_tag(cls, value: str) -> AuditEntry:
        data = json.loads(value)
        return cls(when=data["when"], alias=data["alias"], from_version=data.get("from"), to_version=data["to"],
                   who=data["who"], reason=data["reason"], kind=data.get("kind", "promote"))


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


def require_model(client: Any, name: str) -> Any:
    """The registered model, or a one-line error listing the models that exist."""
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
        known = sorted(m.name for m in client.search_registered_models())
        raise PipelineError(f"no registered model '{name}'; registered models: {', '.join(known) or 'none yet'}"
                            " (run `dvc repro` to register one)") from exc


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the alias is not set."""
    model = require_model(client, name)
    return str(model.aliases[alias]) if alias in model.aliases else None


def require_alias(client: Any, name: str, alias: str) -> str:
    model = require_model(client, name)
    if alias not in model.aliases:
        known = ", ".join(f"{a} -> v{v}" for a, v in sorted(model.aliases.items())) or "none"
        raise PipelineError(f"model '{name}' has no alias '{alias}'; aliases: {known}")
    return str(model.aliases[alias])


def require_version(client: Any, name: str, version: str) -> Any:
    require_model(client, name)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    if not str(version).isdigit() or int(version) not in versions:
        raise PipelineError(f"model '{name}' has no version '{version}'; versions: "
                            f"{', '.join(map(str, versions)) or 'none'}")
    return client.get_model_version(name, str(version))


def set_alias(client: Any, name: str, alias: str, version: str, reason: str, kind: str = "promote") -> AuditEntry:
    """Point ``alias`` at ``version`` and record who, when, from, to and why."""
    previous = alias_version(client, name, alias)
    now = datetime.now(UTC)
    entry = AuditEntry(when=now.isoformat(timespec="microseconds"), alias=alias, from_version=previous,
                       to_version=str(version), who=actor(), reason=reason, kind=kind)
    client.set_registered_model_alias(name, alias, str(version))
    payload = {"when": entry.when, "who": entry.who, "alias": alias, "from": previous, "to": str(version),
               "reason": reason, "kind": kind}
    client.set_registered_model_tag(name, f"{AUDIT_PREFIX}{now.strftime('%Y%m%dT%H%M%S%fZ')}", json.dumps(payload))
    client.set_model_version_tag(name, str(version), f"{alias}.since", entry.when)
    client.set_model_version_tag(name, str(version), f"{alias}.reason", reason)
    client.set_model_version_tag(name, str(version), f"{alias}.by", entry.who)
    log.info("%s: alias '%s' %s -> v%s (%s, by %s)", name, alias, f"v{previous}" if previous else "(unset)",
             version, reason, entry.who)
    return entry


def audit_trail(client: Any, name: str) -> list[AuditEntry]:
    """Every recorded alias change of the model, oldest first."""
    model = require_model(client, name)
    tags = {k: v for k, v in model.tags.items() if k.startswith(AUDIT_PREFIX)}
    return [AuditEntry.from_tag(tags[k]) for k in sorted(tags)]


def promote(client: Any, name: str, version: str, reason: str) -> AuditEntry:
    """Make ``version`` the champion by hand (bypasses the gate; the reason is recorded)."""
    require_version(client, name, version)
    if not reason.strip():
        raise PipelineError("promote needs --reason: the audit trail records why the champion changed")
    return set_alias(client, name, CHAMPION, version, reason, kind="manual-promote")


def rollback(client: Any, name: str, reason: str) -> AuditEntry:
    """Move the champion back to the previous champion that was not itself rolled back."""
    current = require_alias(client, name, CHAMPION)
    history = [e for e in audit_trail(client, name) if e.alias == CHAMPION]
    rolled_back = {e.from_version for e in history if e.kind == "rollback"} | {current}
    existing = {str(v.version) for v in client.search_model_versions(f"name = '{name}'")}
    for entry in reversed(history):
        candidate = entry.to_version
        if candidate not in rolled_back and candidate in existing:
            client.set_model_version_tag(name, current, ROLLED_BACK_TAG, "true")
            return set_alias(client, name, CHAMPION, candidate, reason, kind="rollback")
    raise PipelineError(f"model '{name}': champion is v{current} and there is no earlier champion to roll back to")


def describe_versions(client: Any, name: str) -> list[dict[str, Any]]:
    """One row per version: aliases, gate decision and key test metrics (newest first)."""
    model = require_model(client, name)
    by_version: dict[str, list[str]] = {}
    for alias, ver in model.aliases.items():
        by_version.setdefault(str(ver), []).append(alias)
    rows = []
    for mv in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version)):
        tags = mv.tags or {}
        rows.append({
            "version": int(mv.version),
            "aliases": sorted(by_version.get(str(mv.version), [])),
            "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
            "gate": tags.get("gate.decision", "-"),
            "roc_auc": tags.get("test.roc_auc", "-"),
            "brier": tags.get("test.brier", "-"),
            "run_id": mv.run_id,
        })
    return rows


def champion_version(settings: Settings) -> str | None:
    """The registry's current champion version of this profile's model (None before the first one)."""
    connect(settings)
    try:
        return alias_version(_client(), settings.registered_model_name, CHAMPION)
    except PipelineError:  # nothing registered yet: the first pass registers the first champion
        return None


def champion_promoted(after: str | None, before: str | None) -> bool:
    """A run promoted a new champion when the alias now points at a version it did not point at before."""
    return after is not None and str(after) != str(before or "")


def export(client: Any, name: str, alias: str, dest: Path) -> Path:
    """Download the model an alias points at into ``dest``: a self-contained pyfunc directory."""
    return _export_version(client, name, require_alias(client, name, alias), alias, dest)


def export_uri(client: Any, uri: str, dest: Path) -> Path:
    """Download the model behind a ``models:/`` URI (alias or version) into ``dest``."""
    name, alias, version = parse_model_uri(uri)
    if alias is not None:
        return _export_version(client, name, require_alias(client, name, alias), alias, dest)
    return _export_version(client, name, str(require_version(client, name, str(version)).version), None, dest)


def _export_version(client: Any, name: str, version: str, alias: str | None, dest: Path) -> Path:
    if dest.exists() and any(dest.iterdir()):
        raise PipelineError(f"{dest} is not empty; export needs a new or empty directory")
    dest.mkdir(parents=True, exist_ok=True)
    mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dest))
    mv = client.get_model_version(name, version)
    download_evaluation(mv.run_id, dest / EVALUATION_DIR)
    write_json(dest / "registry.json", {
        "registered_model": name, "version": int(version), "alias": alias, "run_id": mv.run_id,
        "source": mv.source, "tags": dict(mv.tags or {}),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    log.info("exported %s v%s (%s) to %s", name, version, f"@{alias}" if alias else "by version", dest)
    return dest


def download_evaluation(run_id: str, dest: Path) -> list[str]:
    """The run's evaluation artifacts into ``dest``; returns those it has. An imported version's run holds
    only the model, whose folder then brings the evaluation of the export it came from."""
    found = []
    for artifact in EVALUATION_ARTIFACTS:
        try:
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(dest))
        except (MlflowException, OSError) as exc:
            log.debug("run %s has no %s: %s", run_id, artifact, exc)
            continue
        found.append(artifact)
    return found


def import_exported(client: Any, model_dir: Path, name: str, alias: str, reason: str) -> str:
    """Register an exported model directory (``export``'s output) as a new version of ``name`` with ``alias``.

    Copies a model between stores with no retraining, e.g. the embedded store's champion to
    the team's server, whose proxied artifacts a container build can download (the embedded
    store records local file paths). The alias change is audited like any other.
    """
    if not (model_dir / "MLmodel").is_file():
        raise PipelineError(f"{model_dir} is not an exported model directory (no MLmodel file)")
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    run = client.create_run(experiment_id, tags={"imported_from": str(model_dir)})
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
        client.create_registered_model(name)
    version = str(client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version)
    set_alias(client, name, alias, version, reason, kind="import")
    return version


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        sys.stdout.write("no versions\n")
        return
    cols = ["version", "aliases", "gate", "roc_auc", "brier", "created", "run_id"]
    cells = [[", ".join(r[c]) if isinstance(r[c], list) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + "\n")
    for row in cells:
        sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.modeling.registry",
                                     description="Inspect and change the model registry's aliases.")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--model", help="registered model name (default: the current profile's)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="versions, aliases and key metrics")
    pro = sub.add_parser("promote", help="make VERSION the champion")
    pro.add_argument("version")
    pro.add_argument("--reason", required=True)
    rb = sub.add_parser("rollback", help="move the champion back to the previous champion")
    rb.add_argument("--reason", default="rollback")
    ex = sub.add_parser("export", help="download the model behind ALIAS into DIR (self-contained)")
    ex.add_argument("alias", help="alias (e.g. champion), or a models:/<name>@<alias> or models:/<name>/<version> URI")
    ex.add_argument("dir", type=Path)
    sub.add_parser("audit", help="every alias change, oldest first")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings: Settings = load_settings(args.params)
    connect(settings)
    try:
        _dispatch(args, _client(), args.model or settings.registered_model_name)
    except MlflowException as exc:  # a registry-side refusal: one line, no traceback
        raise PipelineError(f"MLflow: {str(exc).splitlines()[0]}") from exc


def _dispatch(args: argparse.Namespace, client: Any, name: str) -> None:
    if args.command == "list":
        _print_table(describe_versions(client, name))
    elif args.command == "promote":
        promote(client, name, args.version, args.reason)
    elif args.command == "rollback":
        rollback(client, name, args.reason)
    elif args.command == "export" and is_models_uri(args.alias):
        export_uri(client, args.alias, args.dir)
    elif args.command == "export":
        export(client, name, args.alias, args.dir)
    elif args.command == "audit":
        for e in audit_trail(client, name):
            sys.stdout.write(f"{e.when}  {e.alias:<10} v{e.from_version or '-'} -> v{e.to_version}  "
                             f"{e.kind:<14} by {e.who}: {e.reason}\n")


if __name__ == "__main__":
    run_main(main)
