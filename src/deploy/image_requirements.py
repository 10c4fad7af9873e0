"""Hash-pinned requirements for the service image, computed from Pipfile.lock at build time.

    python image_requirements.py Pipfile.lock --out requirements.txt [--all]

The Dockerfile's build stage runs this file on its own (standard library only: the
base image has no pipenv, no PyYAML, and installing them first would be an
unpinned install). The lock pins every package with its hashes but does not
record who depends on whom, so the image's package set is found in two steps:

1. pip resolves the packages the service imports (``SERVE_PACKAGES``) with every
   version constrained to the lock's (``pip install --dry-run --report``: metadata
   only, nothing is installed), which yields their dependency closure for the
   image's platform and Python;
2. that closure is written back as ``name==version --hash=...`` lines taken from the
   lock, for ``pip install --require-hashes --no-deps``.

A closure member missing from the lock, or resolved at another version, stops the
build with its name: the image then installs exactly the lock's bytes, only fewer
of them (no dvc, dask, evidently, boto3: pipeline-only; no MLflow server
stack). ``--all`` writes the whole default section instead.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# What the scoring service imports at run time (flask_api/, gunicorn.conf.py, the pyfunc model it loads, and
# `src.modeling.registry export` in the image's model stage). Their lock-pinned dependency closure is the image.
# mlflow-skinny, not mlflow: the same `mlflow` package (client, pyfunc, registry over HTTP) without the tracking
# server's dependencies (matplotlib, graphene, alembic, docker, aiohttp...); the service only talks to a server.
# tests/unit/test_image_requirements.py runs the real app with nothing else importable, down to module files.
# The batch upload page scores files with src/batch, one implementation with the CLI: that brings pyarrow
# (Parquet in and out, the streaming CSV reader; ~156 MB installed), fsspec and pandera (the validate stage's
# row rules, ~6 MB).
SERVE_PACKAGES = (
    "flask", "flask-login", "flask-wtf", "fsspec", "gunicorn", "joblib", "limits", "lightgbm", "mlflow-skinny",
    "orjson", "pandas", "pandera", "prometheus-client", "psycopg", "psycopg-binary", "pyarrow", "pydantic", "pyyaml",
    "requests", "scikit-learn", "sqlalchemy",
)
USAGE_ERROR = 2


class LockError(Exception):
    """Pipfile.lock or pip's resolution cannot give a hash-pinned install; the message names the package."""


def canonical(name: str) -> str:
    """PEP 503 normalised name: the lock, pip's report and the metadata spell names differently."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path, section: str = "default") -> dict[str, dict[str, Any]]:
    """The lock's ``section`` keyed by canonical name; a missing, unreadable or odd file is a LockError."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LockError(f"{path}: cannot read the lock ({exc})") from exc
    entries = doc.get(section) if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise LockError(f"{path}: no '{section}' packages in the lock")
    return {canonical(name): entry for name, entry in entries.items()}


def requirement_line(name: str, entry: Mapping[str, Any]) -> str:
    """``name==version --hash=sha256:... ; markers``; a package without version or hashes is a LockError."""
    version = str(entry.get("version", ""))
    hashes = entry.get("hashes") or []
    if not version.startswith("==") or not hashes:
        raise LockError(f"Pipfile.lock: package '{name}' is not pinned with hashes (version {version or 'none'}, "
                        f"{len(hashes)} hashes); the image installs only hash-pinned packages")
    line = f"{name}{version} " + " ".join(f"--hash={h}" for h in sorted(hashes))
    markers = entry.get("markers")
    return f"{line} ; {markers}" if markers else line


def lock_requirements(lock: Mapping[str, Mapping[str, Any]], only: Iterable[str] | None = None) -> list[str]:
    """Hash-pinned requirement lines for ``only`` (canonical names; None = the whole section), sorted."""
    names = sorted(lock) if only is None else sorted({canonical(n) for n in only})
    missing = [n for n in names if n not in lock]
    if missing:
        raise LockError(f"Pipfile.lock has no package {', '.join(missing)}; run `pipenv lock` after adding it")
    return [requirement_line(name, lock[name]) for name in names]


def constraints(lock: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``name==version ; markers`` for every locked package: what pip may resolve to (hashes come later)."""
    lines = []
    for name in sorted(lock):
        version = str(lock[name].get("version", ""))
        if version.startswith("=="):
            markers = lock[name].get("markers")
            lines.append(f"{name}{version} ; {markers}" if markers else f"{name}{version}")
    return lines


def closure_from_report(report: Mapping[str, Any], lock: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Canonical names pip's ``--report`` would install, each checked against the lock's version."""
    names = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name, version = canonical(str(meta.get("name", ""))), str(meta.get("version", ""))
        if name not in lock:
            raise LockError(f"pip resolved '{name}' {version}, which Pipfile.lock does not pin; run `pipenv lock`")
        locked = str(lock[name].get("version", "")).removeprefix("==")
        if locked != version:
            raise LockError(f"pip resolved '{name}' {version} but Pipfile.lock pins {locked}")
        names.append(name)
    if not names:
        raise LockError("pip's resolution report lists no packages")
    return sorted(set(names))


def resolve_closure(lock: Mapping[str, Mapping[str, Any]], roots: Iterable[str], python: str) -> list[str]:
    """Ask pip (metadata only, nothing installed) for the lock-constrained dependency closure of ``roots``."""
    with tempfile.TemporaryDirectory(prefix="image-reqs-") as tmp:
        constraint_file, report_file = Path(tmp) / "constraints.txt", Path(tmp) / "report.json"
        constraint_file.write_text("\n".join(constraints(lock)) + "\n", encoding="utf-8")
        cmd = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--report", str(report_file), "-c", str(constraint_file), *roots]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise LockError("pip could not resolve the serving packages within the lock:\n"
                            + (proc.stderr.strip() or proc.stdout.strip()))
        return closure_from_report(json.loads(report_file.read_text(encoding="utf-8")), lock)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Hash-pinned requirements for the service image from Pipfile.lock.")
    parser.add_argument("lock", type=Path, help="Pipfile.lock")
    parser.add_argument("--out", type=Path, required=True, help="requirements file to write")
    parser.add_argument("--all", action="store_true", help="the whole default section, not the serving closure")
    parser.add_argument("--python", default=sys.executable, help="interpreter whose pip resolves (default: this)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        lock = read_lock(args.lock)
        names = None if args.all else resolve_closure(lock, SERVE_PACKAGES, args.python)
        lines = lock_requirements(lock, names)
    except LockError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return USAGE_ERROR
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sys.stdout.write(f"{args.out}: {len(lines)} of {len(lock)} locked packages, hash-pinned\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
