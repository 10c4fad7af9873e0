"""DVC remotes (.dvc/config): the default local one, offline, and the `s3` one against a real moto S3 server.

Each test runs the real pipeline (sampled rows) in a throw-away git copy of the
repo, pushes the DVC cache, throws the cache and every output away, pulls them
back and checks each file is byte-identical to what the pipeline wrote.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from configparser import ConfigParser
from pathlib import Path

import boto3
import pytest
import yaml

from tests.integration.conftest import SAMPLE_ROWS, dvc, link_data, sh

pytestmark = pytest.mark.integration

DATASET = "taiwan_credit"
RAW = Path("data/external") / DATASET / "UCI_Credit_Card.csv"


def remote_url(repo: Path, name: str) -> str:
    config = ConfigParser()
    config.read(repo / ".dvc" / "config", encoding="utf-8")
    return config[f"'remote \"{name}\"'"]["url"]


def sample_params(repo: Path) -> None:
    """ingest.sample_rows = SAMPLE_ROWS, editing the line so params.yaml keeps its comments."""
    path = repo / "params.yaml"
    text = path.read_text(encoding="utf-8")
    assert "\n  sample_rows: null\n" in text
    path.write_text(text.replace("\n  sample_rows: null\n", f"\n  sample_rows: {SAMPLE_ROWS}\n"), encoding="utf-8")


def cached_outs(repo: Path, stages: set[str] | None = None) -> dict[str, str]:
    """path -> md5 (from dvc.lock) of every output DVC caches, for ``stages`` (all when None)."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))

    def interpolate(path: str) -> str:  # DVC's ${a.b} templating, from params.yaml
        def value(match: re.Match[str]) -> str:
            node = params
            for key in match[1].split("."):
                node = node[key]
            return str(node)
        return re.sub(r"\$\{([\w.]+)\}", value, path)

    found = {}
    for stage, body in spec.items():
        if stages is not None and stage not in stages:
            continue
        for entry in [*body.get("outs", []), *body.get("metrics", []), *body.get("plots", [])]:
            path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            if opts.get("cache", True):
                path = interpolate(path)
                found[path] = next(o["md5"] for o in lock[stage]["outs"] if o["path"] == path)
    assert found
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def forget_everything(repo: Path, paths: list[str]) -> None:
    """Delete the local DVC cache and the outputs themselves: only a remote still has them."""
    shutil.rmtree(repo / ".dvc" / "cache")
    for rel in paths:
        (repo / rel).unlink()


def test_s3_remote_push_pull_roundtrip(repo: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dvc push -r s3` sends pipeline outputs and a `dvc add`-ed raw file to the bucket; `dvc pull` restores them."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # DVC must find moto through its remote config alone
    bucket, prefix = remote_url(repo, "s3").removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    # Talk to moto instead of AWS; in config.local, as a user would for a private endpoint (never committed).
    dvc(repo, "remote", "modify", "--local", "s3", "endpointurl", moto_server)
    assert "endpointurl" not in (repo / ".dvc" / "config").read_text(encoding="utf-8")

    # A raw file tracked with `dvc add`: the pointer is committable, the data is not.
    link_data(repo, DATASET)
    dvc(repo, "add", str(RAW))
    pointer = repo / RAW.with_name(RAW.name + ".dvc")
    raw_md5 = yaml.safe_load(pointer.read_text(encoding="utf-8"))["outs"][0]["md5"]
    # git ignores the data but not its pointer, and DVC sees the pointer (dvc push would skip it otherwise).
    ignored = sh(repo, "git", "check-ignore", str(RAW), str(pointer.relative_to(repo)), check=False).stdout.split()
    assert ignored == [str(RAW)]
    assert RAW.name in dvc(repo, "ls", "--dvc-only", ".", str(RAW.parent)).stdout.split()

    sample_params(repo)
    dvc(repo, "repro")
    outs = {**cached_outs(repo), str(RAW): raw_md5}
    digests = {path: sha256(repo / path) for path in outs}

    pushed = dvc(repo, "push", "-r", "s3")
    keys = {obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for obj in page.get("Contents", [])}
    expected = {f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}" for md5 in outs.values()}
    assert expected <= keys, sorted(expected - keys)
    assert all(key.startswith(f"{prefix}/") for key in keys)
    assert f"{len(outs)} files pushed" in pushed.stdout, pushed.stdout
    assert "in sync" in dvc(repo, "status", "--cloud", "-r", "s3").stdout

    forget_everything(repo, list(outs))
    assert not (repo / RAW).exists()
    pulled = dvc(repo, "pull", "-r", "s3")
    assert f"{len(outs)} files" in pulled.stdout, pulled.stdout
    assert {path: sha256(repo / path) for path in outs} == digests
    assert "up to date" in dvc(repo, "status").stdout


def test_default_local_remote_works_offline(repo: Path) -> None:
    """`dvc push` / `dvc pull` with no -r use the committed default remote, a folder in the clone: no network."""
    assert remote_url(repo, "localstore") == "../.dvc-storage"
    link_data(repo, DATASET)
    sample_params(repo)
    dvc(repo, "repro", "split")
    outs = cached_outs(repo, {"ingest", "validate", "split"})
    digests = {path: sha256(repo / path) for path in outs}

    # No credentials, and any AWS call would go to a closed port: the default remote needs neither.
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    pushed = dvc(repo, "push", "--with-deps", "split", env=env)
    assert f"{len(outs)} files pushed" in pushed.stdout, pushed.stdout
    storage = repo / ".dvc-storage"
    for md5 in outs.values():
        assert (storage / "files" / "md5" / md5[:2] / md5[2:]).is_file()
    # The store is invisible to git (and .dvcignore keeps it out of DVC's workspace walk).
    assert sh(repo, "git", "status", "--porcelain", "--ignored", ".dvc-storage").stdout.startswith("!!")

    forget_everything(repo, list(outs))
    dvc(repo, "pull", "--with-deps", "split", env=env)
    assert {path: sha256(repo / path) for path in outs} == digests
