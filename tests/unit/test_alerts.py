"""The Prometheus alerting rules, evaluated by Prometheus's own engine (promtool) on synthetic series.

monitoring/prometheus/alerts.test.yml feeds each rule the series a healthy service, a database
outage, a full disk and a refused row produce, and states which alerts fire when, with their text.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed: apt-get install -y prometheus (.ci/run does)")
    return found


@pytest.mark.parametrize("args", [["check", "config", "prometheus.yml"], ["test", "rules", "alerts.test.yml"]])
def test_the_alerting_rules_fire_when_they_should(args: list[str]) -> None:
    proc = subprocess.run([promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr
