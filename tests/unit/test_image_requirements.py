"""The image's package set: hash-pinned lines from Pipfile.lock, and a closure that covers what serving imports.

The Dockerfile's pip resolution needs PyPI (tests/integration/test_container.py runs it
for real); here the same closure is computed from the installed venv's metadata (which
the lock produced), and a fresh serving process, the real app scoring a real model, must
import nothing outside it.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from importlib.metadata import distribution
from pathlib import Path

import pytest
import sqlalchemy as sa
from packaging.requirements import Requirement

from src.deploy import image_requirements as ir
from src.scoring.model_store import load_model
from tests.conftest import ROOT, TrainedProject, default_applicant

LOCK = ROOT / "Pipfile.lock"
# Pipeline-only packages the image should not carry (dozens of MB each with their dependencies).
PIPELINE_ONLY = {"dvc", "dvc-s3", "dask", "distributed", "boto3", "botocore", "python-calamine", "evidently"}
# The MLflow tracking server's stack: the service is a client (mlflow-skinny).
SERVER_ONLY = {"mlflow", "matplotlib", "alembic", "graphene", "docker", "aiohttp", "huey"}

SYNTHETIC_LOCK = {  # a SYNTHETIC lock section (names and hashes made up)
    "alpha": {"version": "==1.0", "hashes": ["sha256:bb", "sha256:aa"]},
    "beta-pkg": {"version": "==2.1", "hashes": ["sha256:cc"], "markers": "python_version >= '3.10'"},
    "gamma": {"git": "https://example.invalid/gamma.git", "ref": "abc"},
}


def installed_closure(roots: Iterable[str]) -> dict[str, str]:
    """Canonical name -> installed version of ``roots`` and everything they require here (markers evaluated)."""
    found: dict[str, str] = {}
    todo = [(ir.canonical(r), frozenset[str]()) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        dist = distribution(name)
        found[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append((ir.canonical(req.name), frozenset(req.extras)))
    return found


def test_requirement_lines_carry_every_hash_and_the_markers() -> None:
    lines = ir.lock_requirements({k: v for k, v in SYNTHETIC_LOCK.items() if k != "gamma"})
    assert lines == ["alpha==1.0 --hash=sha256:aa --hash=sha256:bb",
                     "beta-pkg==2.1 --hash=sha256:cc ; python_version >= '3.10'"]
    assert ir.lock_requirements(SYNTHETIC_LOCK, only=["Beta_Pkg"]) == [lines[1]]


def test_unpinned_or_unknown_packages_are_named() -> None:
    with pytest.raises(ir.LockError, match="'gamma' is not pinned with hashes"):
        ir.lock_requirements(SYNTHETIC_LOCK)
    with pytest.raises(ir.LockError, match="no package delta"):
        ir.lock_requirements(SYNTHETIC_LOCK, only=["alpha", "delta"])


def test_closure_from_pips_report_is_checked_against_the_lock() -> None:
    def report(*items: tuple[str, str]) -> dict:
        return {"install": [{"metadata": {"name": n, "version": v}} for n, v in items]}

    assert ir.closure_from_report(report(("Beta.Pkg", "2.1"), ("alpha", "1.0")), SYNTHETIC_LOCK) == ["alpha",
                                                                                                      "beta-pkg"]
    with pytest.raises(ir.LockError, match=re.escape("'alpha' 1.1 but Pipfile.lock pins 1.0")):
        ir.closure_from_report(report(("alpha", "1.1")), SYNTHETIC_LOCK)
    with pytest.raises(ir.LockError, match=re.escape("'delta' 3.0, which Pipfile.lock does not pin")):
        ir.closure_from_report(report(("delta", "3.0")), SYNTHETIC_LOCK)
    with pytest.raises(ir.LockError, match="lists no packages"):
        ir.closure_from_report({"install": []}, SYNTHETIC_LOCK)


def test_constraints_pin_every_locked_version_without_hashes() -> None:
    assert ir.constraints(SYNTHETIC_LOCK) == ["alpha==1.0", "beta-pkg==2.1 ; python_version >= '3.10'"]


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    broken = tmp_path / "Pipfile.lock"
    broken.write_text("{not json", encoding="utf-8")
    for lock in (broken, tmp_path / "missing.lock"):
        proc = subprocess.run([sys.executable, str(ROOT / "src/deploy/image_requirements.py"), str(lock), "--out",
                               str(tmp_path / "r.txt")], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2
        assert proc.stderr.startswith(f"error: {lock}: cannot read the lock") and "Traceback" not in proc.stderr


def test_whole_lock_exports_hash_pinned(tmp_path: Path) -> None:
    out = tmp_path / "requirements.txt"
    assert ir.main([str(LOCK), "--all", "--out", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(json.loads(LOCK.read_text(encoding="utf-8"))["default"])
    assert all("==" in line and "--hash=sha256:" in line for line in lines)


def test_serving_closure_is_locked_and_leaves_the_pipeline_out() -> None:
    lock = ir.read_lock(LOCK)
    closure = installed_closure(ir.SERVE_PACKAGES)
    assert set(closure) <= set(lock), f"not in the lock: {set(closure) - set(lock)}"
    assert {n: v for n, v in closure.items() if lock[n]["version"] != f"=={v}"} == {}
    assert not PIPELINE_ONLY & set(closure), "pipeline-only packages would be in the image"
    assert not SERVER_ONLY & set(closure), "the MLflow server's packages would be in the image"
    assert len(ir.lock_requirements(lock, closure)) < len(lock)


SERVE_WITH_ONLY = """
import importlib.abc, json, re, sys
at_start = set(sys.modules)  # the interpreter's own start-up (site, .pth hooks of the venv's pip/setuptools)
from importlib.metadata import packages_distributions
allowed = set(json.loads(sys.argv[2]))
owners = packages_distributions()
blocked = {m for m, dists in owners.items() if not {re.sub(r"[-_.]+", "-", d).lower() for d in dists} & allowed}

class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the image)", name=name)
        return None

sys.meta_path.insert(0, NotInTheImage())
from flask_api import create_app
app = create_app({"MODEL_URI": sys.argv[1], "MODEL_LOADING": "sync", "TESTING": True, "WTF_CSRF_ENABLED": False})
client = app.test_client()
meta = app.extensions["credit_service"].models.current.meta
row = {name: entry["default"] for name, entry in meta["feature_summary"].items()}
api = client.post("/api/v1/predict", json={"applicants": [row], "reasons": True})
assert api.status_code == 200, api.get_data(as_text=True)
form = client.post("/", data={k: str(v) for k, v in row.items()})
assert form.status_code == 200 and 'id="decision"' in form.get_data(as_text=True), form.status_code
import io, time
from pathlib import Path
uploads = app.extensions["credit_uploads"]
uploads.root = Path(sys.argv[3])  # the batch page: src/batch scoring a file in the background
csv = ",".join(row) + "\\n" + ",".join(str(v) for v in row.values()) + "\\n"
sent = client.post("/batch", data={"file": (io.BytesIO(csv.encode()), "one.csv")}, content_type="multipart/form-data")
assert sent.status_code == 303, sent.get_data(as_text=True)
job_id = sent.headers["Location"].rsplit("/", 1)[1]
for _ in range(600):
    if uploads.get(job_id).state in ("done", "failed"):
        break
    time.sleep(0.1)
assert uploads.get(job_id).state == "done", uploads.get(job_id).error
batch_csv = client.get(f"/batch/{job_id}/scored.csv").get_data(as_text=True)
model_page = client.get("/model")  # the model page: the export's evaluation, drawn by the vendored charts
assert model_page.status_code == 200 and 'data-chart="roc"' in model_page.get_data(as_text=True), model_page.status_code
assert client.get("/monitoring").status_code == 200  # the monitoring page: the monitor's reports, or how to make them
app.extensions["credit_service"].predlog.close()
site = [p for p in sys.path if p.endswith("site-packages")][0] + "/"
files = sorted({f[len(site):] for name, m in list(sys.modules.items())
                if name not in at_start and isinstance(f := getattr(m, "__file__", None), str) and f.startswith(site)})
print(json.dumps({"result": api.get_json()["results"][0], "files": files, "batch_csv": batch_csv,
                  "imported": sorted({d for m in list(sys.modules) for d in owners.get(m.partition(".")[0], [])})}))
"""


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_serving_works_with_only_the_image_closure(trained_project: TrainedProject, tmp_path: Path, database: str,
                                                   request: pytest.FixtureRequest) -> None:
    """The real app (exported model, API and form) in a fresh interpreter that cannot import anything else.

    The batch page scores a one-row file too (src/batch, pyarrow, pandera).
    The dev venv holds more than the image (pytest, dvc, optional extras that libraries try
    to import, e.g. psutil or rich); an import hook makes every package outside the closure
    unimportable, as in the image, and the app must still load the model and score a row
    exactly as in process, logging to SQLite (the default) or to a real PostgreSQL server
    (its driver must be in the image).
    """
    closure = installed_closure(ir.SERVE_PACKAGES)
    url = (f"sqlite:///{tmp_path / 'predictions.db'}" if database == "sqlite"
           else request.getfixturevalue("postgres_url"))
    env = {"PATH": str(Path(sys.executable).parent), "PARAMS_FILE": str(ROOT / "params.yaml"),
           "DATABASE_URL": url, "PREDLOG_SPOOL_DIR": str(tmp_path / "spool"),  # not the repo's spool/
           "MLFLOW_DISABLE_TELEMETRY": "true", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", SERVE_WITH_ONLY, str(trained_project.model_dir),
                           json.dumps(sorted(closure)), str(tmp_path / "uploads")],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    loaded = load_model(str(trained_project.model_dir), trained_project.settings)
    expected = loaded.scorer.score([default_applicant(loaded.meta)])[0]
    assert out["result"]["probability_of_default"] == pytest.approx(expected["probability_of_default"], abs=1e-12)
    assert out["result"]["decision"] == expected["decision"]
    [batch_row] = list(csv.DictReader(io.StringIO(out["batch_csv"])))  # the upload page, scored by src/batch
    assert float(batch_row["probability"]) == pytest.approx(expected["probability_of_default"], abs=1e-12)
    assert batch_row["decision"] == expected["decision"]
    imported = {ir.canonical(d) for d in out["imported"]}
    assert {"mlflow", "lightgbm", "flask", "flask-wtf", "sqlalchemy", "prometheus-client", "pyarrow",
            "pandera"} <= imported
    assert not PIPELINE_ONLY & imported
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:  # the prediction log wrote both rows (API and form) too
            assert conn.execute(sa.text("SELECT COUNT(*) FROM predictions")).scalar_one() == 2
    finally:
        engine.dispose()
    # Several wheels may fill one package directory (mlflow, mlflow-skinny and mlflow-tracing all install
    # mlflow/): every module file the process loaded must come from a wheel of the closure.
    shipped = {str(f) for name in closure for f in distribution(name).files or []}
    assert sorted(set(out["files"]) - shipped) == []

