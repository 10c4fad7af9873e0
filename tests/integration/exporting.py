"""The monitoring exporter as the tests run it: its own process on a free port, fed with drift.json and
performance.json made by the real monitoring functions on SYNTHETIC rows (shared by the exporter and
Prometheus tests)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from src.common import write_json
from src.data import ingest, validate
from src.monitoring import performance as perf
from src.monitoring.drift import compare
from tests.conftest import ROOT, make_settings
from tests.integration.conftest import free_port, stop_process_group, tool_env, wait_http
from tests.synthetic_monitoring import synthetic_score, synthetic_scored, synthetic_taiwan_applicants


def synthetic_reports(folder: Path) -> tuple[Path, Path]:
    """drift.json and performance.json from the real functions on SYNTHETIC rows (with some drift)."""
    settings = make_settings("taiwan_credit", ROOT)
    raw = synthetic_taiwan_applicants(3000, seed=1)
    clean = validate.validate(ingest.ingest(raw, settings.profile), settings.profile).clean
    reference, batch = clean.iloc[:2000], clean.iloc[2000:].copy()
    batch["limit_bal"] = (batch["limit_bal"] * 2.0).round(-4)
    drift = compare(reference, synthetic_score(reference), batch, synthetic_score(batch), settings.profile,
                    settings.monitoring)
    drift_file = folder / "drift.json"
    write_json(drift_file, {"created_at": "2026-11-21T12:00:00+00:00", **drift})
    scored, labels = synthetic_scored(400)
    labels = labels.assign(sex=np.where(np.arange(len(labels)) % 2 == 0, "female", "male"))  # SYNTHETIC groups
    joined = perf.join_labels(scored, perf.read_labels(labels, "id", "default", 1, "labels", by=("sex",)), "scored")
    performance_file = folder / "performance.json"
    write_json(performance_file, {"created_at": "2026-11-21T12:00:00+00:00",
                                  **perf.summarise(joined, {"roc_auc": 0.9}, "week", settings.monitoring,
                                                   by=("sex",))})
    return drift_file, performance_file


@dataclass
class Exporter:
    url: str
    drift_file: Path
    performance_file: Path

    def scrape(self) -> dict[str, list]:
        """{sample name: [(labels, value), ...]} of one real scrape."""
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            text = resp.read().decode()
        samples: dict[str, list] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        return samples


@pytest.fixture(scope="module", name="exporter")
def exporter_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    folder = tmp_path_factory.mktemp("exporter")
    drift_file, performance_file = synthetic_reports(folder)
    port = free_port()
    log = (folder / "exporter.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "src.monitoring", "exporter", "--bind", f"127.0.0.1:{port}",
                             "--drift-file", str(drift_file), "--performance-file", str(performance_file)],
                            cwd=ROOT, env=tool_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_http(url, timeout=120, proc=proc)
        yield Exporter(url=url, drift_file=drift_file, performance_file=performance_file)
    finally:
        stop_process_group(proc)
        log.close()
