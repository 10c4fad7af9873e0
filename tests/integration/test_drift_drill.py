"""Drift drill: a realistic population shift is flagged on exactly the shifted features.

On the REAL taiwan_credit file when it is present (full file through ingest ->
validate -> split, so the reference is the 21k-row train split and the batch the
4.5k-row test split), else on SYNTHETIC applicants (``synthetic_taiwan_applicants``).
The shift: credit limits +30 % (richer applicants), September payments cut to
30 %, and half of the graduates now university-educated (model inputs only:
protected attributes are not scored, so not monitored for drift). Nothing else
changes, so no other feature may be flagged, and the untouched test split must
show no drift at all, by any test. Two more shifts that PSI alone barely notices: a
heavy-tailed amount scaled by 1.6, and two common education codes swapped (caught by
the distribution test, and by the default rates per code when outcomes are known).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from src.config import Settings, load_settings
from src.data import ingest, split, validate
from src.monitoring.__main__ import main
from src.monitoring.drift import compare, outcomes_of
from src.monitoring.sources import Model, load_model
from src.scoring.predlog import PredictionLog
from tests.conftest import load_params, shared_data_dir
from tests.synthetic_monitoring import synthetic_score, synthetic_taiwan_applicants
from tests.webhook import Receiver

SHIFTED = {"limit_bal", "pay_amt1", "education"}
GRADUATE, UNIVERSITY = 1, 2  # education codes for "graduate school" and "university"
SCALED = "bill_amt3"  # a heavy-tailed amount


def population_shift(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Limits +30 %, September payments down to 30 %, and half of the graduates now university-educated."""
    out = frame.copy()
    out["limit_bal"] = (out["limit_bal"] * 1.3).round(-4)
    out["pay_amt1"] = (out["pay_amt1"] * 0.3).round()
    graduates = out.index[out["education"] == 1]
    flip = np.random.default_rng(seed).choice(graduates, size=len(graduates) // 2, replace=False)
    out.loc[flip, "education"] = UNIVERSITY
    return out


def scaled_amount(frame: pd.DataFrame, factor: float = 1.6) -> pd.DataFrame:
    """One heavy-tailed amount scaled (a currency or reporting change): PSI on ten quantile bins ~0.1."""
    return frame.assign(**{SCALED: (frame[SCALED] * factor).round()})


def swapped_codes(frame: pd.DataFrame) -> pd.DataFrame:
    """Graduate school and university swap codes (a mapping bug upstream): PSI ~0.07."""
    return frame.assign(education=frame["education"].replace({GRADUATE: UNIVERSITY, UNIVERSITY: GRADUATE}))


@dataclass(frozen=True)
class Drill:
    settings: Settings
    params_file: Path
    train: pd.DataFrame
    test: pd.DataFrame
    real: bool


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Drill:
    """A project folder with params.yaml and the split of the full file (real, else SYNTHETIC)."""
    root = tmp_path_factory.mktemp("drill")
    params = load_params()
    params["dataset"] = "taiwan_credit"
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    settings = load_settings(params_file)
    external = settings.external_dir
    external.mkdir(parents=True)
    real = shared_data_dir() / "taiwan_credit" / settings.profile.source.file
    if real.exists():
        (external / real.name).symlink_to(real)
    else:
        synthetic_taiwan_applicants(30000).to_csv(external / settings.profile.source.file, index=False)
    for stage in (ingest, validate, split):
        stage.run(settings)
    return Drill(settings=settings, params_file=params_file, train=pd.read_parquet(settings.split_table("train")),
                 test=pd.read_parquet(settings.split_table("test")), real=real.exists())


@pytest.fixture(scope="module")
def scorer(drill: Drill, request: pytest.FixtureRequest) -> Model | None:
    """The trained project's exported champion (real data only; None on SYNTHETIC data)."""
    if not drill.real:
        return None
    return load_model(drill.settings, str(request.getfixturevalue("trained_project").model_dir))


def _scores(scorer: Model | None, frame: pd.DataFrame) -> pd.Series:
    return scorer.predict(frame) if scorer is not None else synthetic_score(frame)


def _compare(drill: Drill, scorer: Model | None, batch: pd.DataFrame, outcomes: bool = False) -> dict:
    target = drill.settings.profile.target_column
    return compare(drill.train, _scores(scorer, drill.train), batch, _scores(scorer, batch),
                   drill.settings.profile, drill.settings.monitoring,
                   outcomes_of(drill.train, target, 1) if outcomes else None,
                   outcomes_of(batch, target, 1) if outcomes else None)


@pytest.mark.parametrize("outcomes", [False, True])
def test_untouched_test_split_shows_no_drift(drill: Drill, scorer: Model | None, outcomes: bool) -> None:
    result = _compare(drill, scorer, drill.test, outcomes)
    worst = max(f["psi"] for f in result["features"].values())
    assert worst < drill.settings.monitoring.psi_moderate, result["features"]
    assert result["drifted_features"] == [] and result["flag"] is False
    assert result["score"]["band"] == "none" and result["score"]["fired_by"] == []
    fired = {n: f["fired_by"] for n, f in result["features"].items() if f["fired_by"] or f["test"]["fired"]}
    assert fired == {}
    assert result["n_batch"] == len(drill.test) and result["n_reference"] == len(drill.train)
    if outcomes:  # every code with enough rows was compared, and none differs
        assert result["outcomes"]["rows"] == len(drill.test) and result["outcomes"]["categories_compared"] >= 3
        assert not any(f["default_rate"]["fired"] for f in result["features"].values() if "default_rate" in f)
    else:
        assert result["outcomes"] is None


@pytest.mark.parametrize(("shift", "feature", "test"), [(scaled_amount, SCALED, "ks"),
                                                        (swapped_codes, "education", "chi-square")])
def test_shifts_psi_barely_sees_are_caught_by_the_second_test(drill: Drill, scorer: Model | None, shift: Any,
                                                               feature: str, test: str) -> None:
    result = _compare(drill, scorer, shift(drill.test), outcomes=True)
    assert result["drifted_features"] == [feature] and result["flag"] is True
    entry = result["features"][feature]
    assert entry["psi"] < drill.settings.monitoring.psi_significant  # PSI alone: at most "moderate"
    assert test in entry["fired_by"] and entry["test"]["name"] == test and entry["test"]["fired"] is True
    untouched = {n: f["fired_by"] for n, f in result["features"].items() if n != feature and f["fired_by"]}
    assert untouched == {}
    if feature == "education" and drill.real:  # SYNTHETIC outcomes do not depend on education
        assert "default-rate" in entry["fired_by"]
        moved = {c["category"] for c in entry["default_rate"]["categories"] if c["fired"]}
        assert moved == {str(GRADUATE), str(UNIVERSITY)}


def test_a_small_unshifted_sample_stays_quiet_and_a_small_shifted_one_is_judged_by_its_size(
        drill: Drill, scorer: Model | None) -> None:
    """200 rows: the tests' p-values account for the sample size, so noise does not fire them."""
    small = drill.test.sample(200, random_state=7)
    quiet = _compare(drill, scorer, small, outcomes=True)
    assert not any(f["test"]["fired"] for f in quiet["features"].values())
    loud = _compare(drill, scorer, scaled_amount(small, 3.0), outcomes=True)
    assert loud["features"][SCALED]["test"]["fired"] is True


def test_population_shift_flags_exactly_the_shifted_features(drill: Drill, scorer: Model | None) -> None:
    result = _compare(drill, scorer, population_shift(drill.test))
    assert set(result["drifted_features"]) == SHIFTED
    untouched = {n: f["psi"] for n, f in result["features"].items() if n not in SHIFTED}
    assert max(untouched.values()) < drill.settings.monitoring.psi_moderate, untouched
    assert result["flag"] is True
    assert result["features"]["pay_amt1"]["band"] == "significant"


def test_cli_drift_on_a_shifted_file_writes_json_and_html(drill: Drill, scorer: Model | None,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          webhook: Receiver) -> None:
    if scorer is None:
        pytest.skip("needs the real taiwan_credit file (the trained project's model)")
    batch = tmp_path / "batch"
    batch.mkdir()
    shifted = population_shift(drill.test)
    half = len(shifted) // 2
    shifted.iloc[:half].to_parquet(batch / "part-0.parquet")
    shifted.iloc[half:].drop(columns="default").to_csv(batch / "part-1.csv", index=False)
    out, html = tmp_path / "drift.json", tmp_path / "drift.html"
    code = main(["--params", str(drill.params_file), "drift", str(batch), "--model-uri", scorer.uri,
                 "--output", str(out), "--html", str(html), "--fail-on-drift"])
    assert code == 1
    summary = json.loads(out.read_text())
    assert set(summary["drifted_features"]) == SHIFTED and summary["flag"] is True
    assert summary["batch"]["rows_in"] == len(shifted) == summary["n_batch"] + summary["batch"]["rejected"]
    assert summary["batch"]["scores_from"] == "model" and summary["model"]["uri"] == scorer.uri
    assert summary["report"] == str(html)
    report = html.read_text(encoding="utf-8")
    assert "Drift" in report and all(name in report for name in SHIFTED)
    # the page and drift.json agree: the rows marked drifted are exactly drift.json's, with its PSI
    marked = set(re.findall(r"<tr><td>([\w ()]+)</td><td>\w+</td><td class=\"num\">[\d.]+</td><td>.*?</td>"
                            r"<td>drifted</td></tr>", report))
    assert marked == set(summary["drifted_features"]) | ({"score (probability of default)"}
                                                           if summary["score_drifted"] else set())
    for name in SHIFTED:
        assert f"{summary['features'][name]['psi']:.4f}" in report
    assert "FLAGGED" in capsys.readouterr().out
    [event] = webhook.events("drift_flagged")  # the webhook names what drifted, by which test, and the report
    assert event["where"] == [str(out), str(html)] and set(event["details"]["drifted_features"]) == SHIFTED
    assert event["details"]["fired_by"] == {n: summary["features"][n]["fired_by"] for n in SHIFTED}
    assert all(name in event["title"] for name in SHIFTED) and "(psi, ks)" in event["text"]
    # without --fail-on-drift the same drift is reported but the exit code stays 0
    assert main(["--params", str(drill.params_file), "drift", str(batch), "--model-uri", scorer.uri,
                 "--output", str(out), "--no-html"]) == 0


def test_cli_drift_from_the_prediction_log(drill: Drill, scorer: Model | None, tmp_path: Path) -> None:
    if scorer is None:
        pytest.skip("needs the real taiwan_credit file (the trained project's model)")
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    plog = PredictionLog(url)
    test = drill.test
    rows = json.loads(test[drill.settings.profile.feature_names].to_json(orient="records"))
    proba = scorer.predict(test).tolist()
    results = [{"probability_of_default": p, "decision": "approve"} for p in proba]
    for start in range(0, len(rows), 1000):  # one logged request per 1,000 applicants, as the API caps batches
        plog.submit(f"req-{start}", "api", scorer.name, scorer.version, rows[start:start + 1000],
                   results[start:start + 1000])
    plog.close()
    out = tmp_path / "drift.json"
    args = ["--params", str(drill.params_file), "drift", "--database-url", url, "--model-uri", scorer.uri,
            "--output", str(out), "--no-html", "--fail-on-drift"]
    assert main([*args, "--since", "1h"]) == 0
    summary = json.loads(out.read_text())
    assert summary["n_batch"] == len(test) and summary["batch"]["scores_from"] == "batch"
    assert summary["drifted_features"] == [] and summary["score"]["band"] == "none"
    empty = (datetime.now(UTC) - timedelta(days=30)).date().isoformat()
    assert main([*args, "--since", empty, "--until", (datetime.now(UTC) - timedelta(days=29)).date().isoformat()]) == 2
    # outcomes for logged decisions are keyed <request_id>:<row index>, what the API returned to the client
    labels = pd.DataFrame({"id": [f"req-{i // 1000 * 1000}:{i % 1000}" for i in range(len(test))],
                           "default": test["default"].to_numpy()})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "performance.json"
    assert main(["--params", str(drill.params_file), "performance", "--log", "--database-url", url,
                 "--labels", str(tmp_path / "labels.csv"), "--label-column", "default", "--reference-auc", "0.78",
                 "--period", "day", "--output", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["counts"]["matched"] == len(test) and summary["counts"]["scored_without_label"] == 0
    assert summary["overall"]["bands"]["approve"]["rows"] == len(test) and len(summary["periods"]) >= 1
    assert summary["reference"]["source"] == "--reference-auc"


def test_cli_drift_bad_input_exits_2(drill: Drill, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scored = tmp_path / "scored.parquet"
    pd.DataFrame({"id": [1, 2], "probability": [0.1, 0.2]}).to_parquet(scored)
    assert main(["--params", str(drill.params_file), "drift", str(scored), "--no-html"]) == 2
    assert "missing column(s) limit_bal" in caplog.text
    assert main(["--params", str(drill.params_file), "drift", str(tmp_path / "nope.csv")]) == 2
    assert "no such file or folder" in caplog.text
    assert main(["--params", str(drill.params_file), "drift"]) == 2
    assert "nothing to read" in caplog.text


def test_shift_helper_keeps_rows_valid(drill: Drill) -> None:
    shifted = population_shift(drill.test)
    assert len(shifted) == len(drill.test) and shifted["pay_amt1"].min() >= 0
    assert (shifted["education"] == UNIVERSITY).mean() > (drill.test["education"] == UNIVERSITY).mean()


def _scored_file(drill: Drill, scorer: Model, path: Path) -> pd.DataFrame:
    """What the batch scorer writes for the test split: id, probability, decision, model, scored_at."""
    test = drill.test
    proba = scorer.predict(test)
    threshold, margin = float(scorer.meta["threshold"]), drill.settings.serve.refer_margin
    decision = np.where(proba >= threshold, "decline", np.where(proba >= threshold - margin, "refer", "approve"))
    scored = pd.DataFrame({"id": test["id"], "probability": proba, "decision": decision,
                           "model_name": scorer.name, "model_version": scorer.version,
                           "scored_at": pd.Timestamp("2026-10-01", tz="UTC") + pd.to_timedelta(
                               np.arange(len(test)) % 60, unit="D")})
    scored.to_parquet(path)
    return scored


def test_cli_performance_joins_outcomes_and_flags_decay(drill: Drill, scorer: Model | None, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        request: pytest.FixtureRequest, webhook: Receiver) -> None:
    if scorer is None:
        pytest.skip("needs the real taiwan_credit file (the trained project's model)")
    project = request.getfixturevalue("trained_project")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.tracking_uri)  # the model's logged test metrics
    scored = _scored_file(drill, scorer, tmp_path / "scored.parquet")
    outcomes = drill.test[["id", "default"]].iloc[300:]  # the first 300 outcomes are not known yet
    extra = pd.DataFrame({"id": [10**9, 10**9 + 1], "default": [0, 1]})  # outcomes of applicants never scored
    pd.concat([outcomes, extra]).to_csv(tmp_path / "labels.csv", index=False)
    out, md = tmp_path / "performance.json", tmp_path / "performance.md"
    args = ["--params", str(drill.params_file), "performance", str(tmp_path / "scored.parquet"),
            "--labels", str(tmp_path / "labels.csv"), "--label-column", "default", "--output", str(out)]
    assert main([*args, "--period", "month", "--markdown", str(md), "--fail-on-decay"]) == 0
    summary = json.loads(out.read_text())
    assert summary["counts"] == {"scored": len(scored), "labels": len(outcomes) + 2, "matched": len(outcomes),
                                 "scored_without_label": 300, "labels_without_score": 2}
    assert summary["reference"]["source"].startswith(f"models:/{scorer.name}/{scorer.version}")
    assert summary["reference"]["roc_auc"] > 0.7 and summary["overall"]["roc_auc"] > 0.7
    assert summary["decay"] is False and summary["overall"]["decay_judged"] is True
    assert [p["period"] for p in summary["periods"]] == ["2026-10", "2026-11"]
    assert sum(b["rows"] for b in summary["overall"]["bands"].values()) == len(outcomes)
    assert "no decay" in md.read_text()
    assert webhook.received == []  # no decay, no notification
    # outcomes that no longer follow the scores: ROC-AUC ~0.5, far below the model's test ROC-AUC
    shuffled = outcomes.assign(default=outcomes["default"].sample(frac=1, random_state=1).to_numpy())
    shuffled.to_csv(tmp_path / "labels.csv", index=False)
    assert main([*args, "--fail-on-decay"]) == 1
    decayed = json.loads(out.read_text())
    assert decayed["decay"] is True
    [event] = webhook.events("performance_decay")  # the webhook is told, naming the figures and the report
    assert event["severity"] == "critical" and event["where"] == [str(out)]
    assert event["details"]["roc_auc"] == decayed["overall"]["roc_auc"] and event["dataset"] == "taiwan_credit"
    assert f"ROC-AUC is {decayed['overall']['roc_auc']}" in event["text"]
    assert main(args) == 0  # decay is reported, but only --fail-on-decay makes it an exit code
