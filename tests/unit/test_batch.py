"""Batch scoring (src/batch/) on a small real model: the pure chunk function and the CLI.

Inputs are the trained project's real taiwan_credit rows; rows with impossible values
are planted into them (SYNTHETIC defects, named as such below).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from src.batch import chunk as chunk_module
from src.batch import engine_pandas
from src.batch import inputs as inputs_module
from src.batch.__main__ import main as batch_main
from src.batch.chunk import BatchJob, score_chunk
from src.batch.inputs import ID_INT, InputError
from src.batch.run import load_job, score_batch
from src.config import Profile
from src.data import schemas
from src.data.schemas import REASON_COLUMN, ROW_COLUMN
from src.data.validate import validate
from src.scoring.scorer import Scorer
from tests.conftest import ROOT, TrainedProject, make_settings, plain_rows

# SYNTHETIC defects planted into real rows: row -> cells to set (profile column names).
DEFECTS: dict[int, dict[str, object]] = {
    3: {"pay_0": 15},                      # outside [-2, 9]
    10: {"education": 9},                  # not one of the codes
    11: {"limit_bal": None},               # missing, not nullable
    25: {"pay_0": -7, "pay_amt2": -1},     # two reasons in one row
    40: {"education": 1.5},                # not a whole-number code
}


@pytest.fixture(scope="module")
def job(trained_project: TrainedProject) -> BatchJob:
    return load_job(trained_project.settings, str(trained_project.model_dir), top_reasons=4,
                            include_features=True, num_threads=1)


@pytest.fixture(scope="module")
def raw_rows(trained_project: TrainedProject) -> pd.DataFrame:
    """300 real rows of the ingested raw table (snake_case names, with id and target)."""
    return pd.read_parquet(trained_project.settings.raw_table).head(300).reset_index(drop=True)


def with_defects(raw: pd.DataFrame) -> pd.DataFrame:
    """SYNTHETIC: the real rows with the DEFECTS planted (object columns so any value fits)."""
    out = raw.astype(object)
    for row, cells in DEFECTS.items():
        for col, value in cells.items():
            out.loc[row, col] = value
    return out


def score(source: Path | str, job: BatchJob, out: Path, batch_settings, **kwargs) -> dict:
    return score_batch(str(source), str(out), job, batch_settings, **kwargs)


def read(path: Path | str) -> pd.DataFrame:
    return pd.read_parquet(path)


def without_time(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["scored_at"])


# --- scores, decisions and reasons equal the service's ------------------------------------------


def test_scores_decisions_reasons_match_the_pipeline_and_scorer(trained_project, job, tmp_path) -> None:
    test = pd.read_parquet(trained_project.settings.split_table("test"))
    src = tmp_path / "test.parquet"
    test.to_parquet(src)
    summary = score(src, job, tmp_path / "scored.parquet", trained_project.settings.batch)
    out = read(tmp_path / "scored.parquet")
    scorer: Scorer = job.scorer
    features = scorer.profile.feature_names
    # dictionary-encoded in memory and in the file, plain text to every reader
    assert pq.read_schema(tmp_path / "scored.parquet") == job.output_schema()
    assert out["decision"].dtype != "category" and out["model_name"].dtype != "category"
    # min/max statistics where a reader filters (ids, probabilities, contributions, numbers), none on the
    # few-valued columns (they cost writing time and say nothing)
    group = pq.ParquetFile(tmp_path / "scored.parquet").metadata.row_group(0)
    with_stats = {group.column(i).path_in_schema for i in range(group.num_columns) if group.column(i).is_stats_set}
    assert {"id", "probability", "reason_1_contribution", "limit_bal"} <= with_stats
    assert with_stats.isdisjoint({"decision", "model_name", "model_version", "scored_at", "reason_1_feature"})

    assert summary["rows_in"] == len(test) == summary["scored"] + summary["rejected"] and summary["rejected"] == 0
    assert out["id"].tolist() == test["id"].tolist()  # the profile's id column, in input order
    expected = scorer.pipeline.predict_proba(test[features])[:, 1]
    np.testing.assert_allclose(out["probability"].to_numpy(), expected, rtol=0, atol=1e-12)
    assert out["decision"].tolist() == [scorer.decision(p) for p in out["probability"]]
    assert summary["decisions"] == out["decision"].value_counts().to_dict()
    assert set(out["model_name"]) == {trained_project.model_name} and set(out["model_version"]) == {"1"}
    assert out["scored_at"].nunique() == 1 and str(out["scored_at"].dt.tz) == "UTC"

    # reasons: the service's ranking of LightGBM's pred_contrib, row by row
    rows = test[features].to_dict("records")
    contrib = scorer.contributions(scorer.encode(rows))
    for i in range(0, len(test), 37):
        reasons = scorer.reasons(rows[i], contrib[i], top=4)
        assert [out.at[i, f"reason_{k}_feature"] for k in range(1, 5)] == [r.feature for r in reasons]
        np.testing.assert_allclose([out.at[i, f"reason_{k}_contribution"] for k in range(1, 5)],
                                   [r.contribution for r in reasons], rtol=0, atol=1e-12)
    # --include-features: the validated inputs under the profile's names (what drift monitoring reads)
    pd.testing.assert_frame_equal(out[features].astype("float64"), test[features].astype("float64"))


def test_declined_and_referred_rows_carry_the_services_principal_reason_codes(trained_project, tmp_path) -> None:
    """Batch scoring without --reasons still gives each decline and referral its adverse-action codes, the
    very ones the service answers with; approvals get none."""
    job = load_job(trained_project.settings, str(trained_project.model_dir), num_threads=1)
    assert job.top_reasons == 0 and job.scorer.adverse_reasons == trained_project.settings.serve.top_reasons
    test = pd.read_parquet(trained_project.settings.split_table("test"))
    src = tmp_path / "test.parquet"
    test.to_parquet(src)
    score(src, job, tmp_path / "scored.parquet", trained_project.settings.batch)
    out = read(tmp_path / "scored.parquet")
    scorer: Scorer = job.scorer
    plain = plain_rows(test, scorer.profile)
    served = scorer.score(plain, with_reasons=False)
    given = [list(codes) for codes in out["adverse_action"]]
    assert given == [[r["code"] for r in s["adverse_action"]] for s in served]
    declined = out["decision"] != "approve"
    assert declined.any() and all(given[i] for i in np.flatnonzero(declined))
    assert not any(given[i] for i in np.flatnonzero(~declined))
    # --no-adverse-action (a backtest: nobody decided): the same scores, the column null
    backtest = load_job(trained_project.settings, str(trained_project.model_dir), num_threads=1, adverse_action=False)
    score(src, backtest, tmp_path / "backtest.parquet", trained_project.settings.batch)
    quiet = read(tmp_path / "backtest.parquet")
    assert quiet["adverse_action"].isna().all() and quiet["probability"].equals(out["probability"])


def test_with_reasons_the_probability_comes_from_the_same_treeshap_pass(trained_project, job, monkeypatch) -> None:
    """One pass over the trees: the sigmoid of the contributions' sum is the booster's probability."""
    scorer: Scorer = job.scorer
    test = pd.read_parquet(trained_project.settings.split_table("test")).head(300)
    rows = test[scorer.profile.feature_names].to_dict("records")
    matrix = scorer.encode(rows)
    plain = scorer.probabilities(matrix)
    calls: list[bool] = []
    real_predict = scorer.booster.predict

    def counted(data, *args, **kwargs):  # the real booster, counted
        calls.append(bool(kwargs.get("pred_contrib")))
        return real_predict(data, *args, **kwargs)

    monkeypatch.setattr(scorer.booster, "predict", counted)
    proba, contrib = scorer.probabilities_and_contributions(matrix)
    assert calls == [True]
    np.testing.assert_allclose(proba, plain, rtol=0, atol=1e-12)
    assert contrib.shape == (len(rows), len(scorer.columns) + 1)
    served = scorer.score(rows[:5], with_reasons=True)
    assert calls == [True, True]
    assert [r["decision"] for r in served] == [scorer.decision(p) for p in plain[:5]]


def test_encode_frame_equals_the_pipelines_preprocessing_and_the_row_encoder(trained_project, job) -> None:
    """Batch scoring's vectorised encoder: exactly the fitted Pipeline's matrix, and the service's row by row,
    with missing values and categories never seen in training planted (SYNTHETIC) into real rows."""
    scorer: Scorer = job.scorer
    test = pd.read_parquet(trained_project.settings.split_table("test"))
    typed = test[scorer.profile.feature_names].astype(object).head(400).copy()
    typed.loc[5, "education"] = None   # missing
    typed.loc[6, "education"] = 77     # a code the encoders never saw
    typed.loc[7, "pay_0"] = None
    typed.loc[8, "limit_bal"] = None
    typed = typed.astype({c: "float64" for c in typed.columns})
    expected = scorer.pipeline.named_steps["preprocess"].transform(typed)[scorer.columns].to_numpy(np.float64)
    matrix = scorer.encode_frame(typed)
    assert matrix.shape == (len(typed), len(scorer.columns))
    assert matrix.flags.f_contiguous  # one LightGBM thread: column by column as built
    np.testing.assert_array_equal(matrix, expected)
    threaded = Scorer(scorer.pipeline, scorer.meta, scorer.profile, num_threads=0)  # OpenMP: row-major
    assert threaded.encode_frame(typed).flags.c_contiguous
    np.testing.assert_array_equal(threaded.encode_frame(typed), expected)
    rows = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in typed.to_dict("records")]
    np.testing.assert_array_equal(matrix, scorer.encode(rows))


def test_one_row_through_the_single_row_c_api_equals_booster_predict(trained_project, job) -> None:
    """A served applicant goes through LightGBM's single-row API: bit for bit the booster's answer,
    from several threads at once (each has its own prepared configuration)."""
    scorer: Scorer = job.scorer
    test = pd.read_parquet(trained_project.settings.split_table("test"))
    rows = test[scorer.profile.feature_names].to_dict("records")
    matrix = scorer.encode(rows)
    k = scorer.num_iteration
    expected = scorer.booster.predict(matrix, num_iteration=k)
    expected_contrib = scorer.booster.predict(matrix, num_iteration=k, pred_contrib=True)
    calls: list[int] = []
    real_predict = scorer.booster.predict

    def counted(data, *args, **kwargs):
        calls.append(len(data))
        return real_predict(data, *args, **kwargs)

    def one_by_one(start: int) -> tuple[list[float], list[np.ndarray]]:
        proba, contrib = [], []
        for i in range(start, len(rows), 4):
            proba.append(float(scorer.probabilities(matrix[i:i + 1])[0]))
            contrib.append(scorer.contributions(matrix[i:i + 1])[0])
        return proba, contrib

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scorer.booster, "predict", counted)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            parts = list(pool.map(one_by_one, range(4)))
    assert calls == []  # not one row went through Booster.predict
    for start, (proba, contrib) in enumerate(parts):
        assert proba == expected[start::4].tolist()
        np.testing.assert_array_equal(np.array(contrib), expected_contrib[start::4])
    served = scorer.score(rows[:1], with_reasons=True)[0]
    assert served["probability_of_default"] == pytest.approx(expected[0], abs=1e-12)


def test_decisions_vectorised_equal_the_service_rule(job) -> None:
    scorer = job.scorer
    t, m = scorer.threshold, scorer.refer_margin
    p = np.array([0.0, t - m - 1e-12, t - m, t - 1e-12, t, 1.0, np.nextafter(t, 0), np.nextafter(t - m, 0)])
    assert scorer.decisions(p).tolist() == [scorer.decision(x) for x in p]


# --- rejects ------------------------------------------------------------------------------------


def typed_defects(raw: pd.DataFrame) -> pd.DataFrame:
    """SYNTHETIC: the DEFECTS planted into an all-float copy (what a Parquet file of them holds)."""
    typed = raw.astype("float64")
    for row, cells in DEFECTS.items():
        for col, value in cells.items():
            typed.loc[row, col] = np.nan if value is None else value
    return typed


def cli_params(tmp_path: Path) -> Path:
    """params.yaml copied into tmp_path, so the CLI's project root (and any MLflow store) is there."""
    dest = tmp_path / "params.yaml"
    dest.write_text((ROOT / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    return dest


def test_reproducible_runs_write_identical_bytes(trained_project, raw_rows, tmp_path) -> None:
    """--reproducible (the DVC stage `score`): no run facts in the files, so two runs give the same bytes."""
    src = tmp_path / "batch.parquet"
    typed_defects(raw_rows).drop(columns=["default"]).to_parquet(src)
    params = cli_params(tmp_path)
    runs = []
    out = tmp_path / "out"
    for _ in range(2):  # the same output paths, as the DVC stage reruns
        batch_main([str(src), "--output", str(out / "s.parquet"), "--summary", str(out / "summary.json"),
                    "--model-uri", str(trained_project.model_dir), "--params", str(params), "--reproducible"])
        runs.append({f: (out / f).read_bytes() for f in ("s.parquet", "s.rejects.parquet", "summary.json")})
    assert runs[0] == runs[1]
    scored = read(out / "s.parquet")
    assert {"scored_at", "model_version"}.isdisjoint(scored.columns) and "model_name" in scored.columns
    summary = json.loads(runs[0]["summary.json"])
    assert {"scored_at", "seconds", "rows_per_second"}.isdisjoint(summary) and "version" not in summary["model"]
    assert summary["rows_in"] == summary["scored"] + summary["rejected"] == len(raw_rows)


def test_rejects_are_the_validate_stage_rejects_with_reasons(trained_project, raw_rows, tmp_path, webhook) -> None:
    bad = typed_defects(raw_rows)
    src = tmp_path / "batch.parquet"
    bad.drop(columns=["default"]).to_parquet(src)
    summary_file = tmp_path / "summary.json"
    params = cli_params(tmp_path)
    text = params.read_text(encoding="utf-8")
    assert "batch_reject_share: 0.05" in text
    params.write_text(text.replace("batch_reject_share: 0.05", "batch_reject_share: 0.01"), encoding="utf-8")
    batch_main([str(src), "--output", str(tmp_path / "s.parquet"), "--model-uri", str(trained_project.model_dir),
                  "--summary", str(summary_file), "--params", str(params)])
    rejects = read(tmp_path / "s.rejects.parquet")
    scored = read(tmp_path / "s.parquet")
    summary = json.loads(summary_file.read_text())

    # the validate stage, on the same rows (with their target), rejects the same rows for the same reasons
    stage = validate(bad, trained_project.settings.profile)
    assert rejects[ROW_COLUMN].tolist() == stage.rejected[ROW_COLUMN].tolist() == sorted(DEFECTS)
    assert rejects[REASON_COLUMN].tolist() == stage.rejected[REASON_COLUMN].tolist()
    assert rejects.loc[rejects[ROW_COLUMN] == 25, "reject_columns"].item() == "pay_0, pay_amt2"  # reasons order
    assert "pay_0: outside [-2, 9] (value 15.0)" in rejects.loc[rejects[ROW_COLUMN] == 3, REASON_COLUMN].item()
    assert rejects.loc[rejects[ROW_COLUMN] == 11, "limit_bal"].isna().all()

    # counts reconcile, in the files and in the summary
    assert summary["rows_in"] == len(bad) == len(scored) + len(rejects)
    assert summary["scored"] == len(scored) and summary["rejected"] == len(rejects) == len(DEFECTS)
    assert summary["rejected_per_reason"] == stage.report["rejected_per_reason"]
    assert scored["id"].tolist() == raw_rows.drop(index=sorted(DEFECTS))["id"].tolist()

    # more than notify.batch_reject_share rejected: the webhook is told how many, why, and where they are
    assert summary["reject_share"] > 0.01  # 5 of 300
    [event] = webhook.events("batch_rejects")
    assert event["where"] == [str(tmp_path / "s.rejects.parquet"), str(tmp_path / "s.parquet")]
    assert event["details"]["rejected"] == len(DEFECTS) and event["details"]["rows_in"] == len(bad)
    top_reason = next(iter(summary["rejected_per_reason"]))
    assert top_reason in event["text"] and f"{summary['reject_share']:.1%}" in event["title"]


def test_csv_rejects_match_the_stage_reading_the_same_csv(trained_project, job, raw_rows, tmp_path) -> None:
    src = tmp_path / "batch.csv"
    with_defects(raw_rows).to_csv(src, index=False)
    summary = score(src, job, tmp_path / "out.parquet", trained_project.settings.batch)
    rejects = read(tmp_path / "out.rejects.parquet")
    stage = validate(pd.read_csv(src), trained_project.settings.profile)  # how the pipeline reads a raw CSV
    assert rejects[ROW_COLUMN].tolist() == stage.rejected[ROW_COLUMN].tolist() == sorted(DEFECTS)
    assert summary["rejected_per_reason"] == stage.report["rejected_per_reason"]
    assert rejects.loc[rejects[ROW_COLUMN] == 3, "pay_0"].item() == "15"  # the raw value, as text
    assert rejects.loc[rejects[ROW_COLUMN] == 40, REASON_COLUMN].item() == "education: not a valid code (value '1.5')"


def test_a_chunk_missing_a_required_column_is_an_input_error_naming_it(job, raw_rows) -> None:
    """score_chunk called directly (not through the engines' column plan) names the column, no TypeError."""
    with pytest.raises(InputError, match=r"from input row 500: missing required column\(s\).*: limit_bal, pay_0$"):
        score_chunk(raw_rows.drop(columns=["limit_bal", "pay_0"]), job, 500)


def test_a_local_parquet_input_is_memory_mapped(tmp_path) -> None:
    """Decoded from the page cache, not copied into fresh memory first (a sixth of the reading CPU)."""
    pd.DataFrame({"a": [1, 2]}).to_parquet(tmp_path / "in.parquet")
    pd.DataFrame({"a": [1, 2]}).to_csv(tmp_path / "in.csv", index=False)
    with inputs_module._open(str(tmp_path / "in.parquet")) as handle:
        assert isinstance(handle, pa.MemoryMappedFile)
    with inputs_module._open(str(tmp_path / "in.csv")) as handle:
        assert not isinstance(handle, pa.MemoryMappedFile) and handle.read(1) == b"a"


def test_ids_fall_back_to_input_row_numbers(job, raw_rows, tmp_path, trained_project) -> None:
    bad = with_defects(raw_rows).drop(columns=["id", "default"])
    bad.to_csv(tmp_path / "noid.csv", index=False)
    summary = score(tmp_path / "noid.csv", job, tmp_path / "out.parquet", trained_project.settings.batch)
    out = read(tmp_path / "out.parquet")
    assert summary["id"] == "input row number"
    assert out["id"].tolist() == [i for i in range(len(bad)) if i not in DEFECTS]
    assert out["id"].dtype == np.int64


def test_row_level_id_rules(job, raw_rows) -> None:
    """A missing or non-numeric id fails its row; a repeated id does not (a row's fate is its own)."""
    frame = raw_rows.drop(columns=["default"]).head(20).astype({"id": object})
    frame.loc[2, "id"] = None
    frame.loc[4, "id"] = "x7"
    frame.loc[6, "id"] = frame.loc[5, "id"]
    result = score_chunk(frame, replace(job, id_kind=ID_INT), first_row=100)
    rejects = result.rejects.to_pandas()
    assert rejects[ROW_COLUMN].tolist() == [102, 104]
    assert rejects[REASON_COLUMN].iloc[0].startswith("id: missing")
    assert rejects[REASON_COLUMN].iloc[1] == "id: not a whole-number id (value 'x7')"
    scored = result.scored.to_pandas()
    assert scored["id"].tolist().count(int(frame.loc[5, "id"])) == 2
    assert result.counts.rows_in == 20 == result.counts.scored + result.counts.rejected


# --- inputs: formats, spellings, folders, chunking --------------------------------------------


def test_csv_parquet_and_folder_inputs_give_the_same_rows(job, raw_rows, tmp_path, trained_project) -> None:
    profile: Profile = trained_project.settings.profile
    bad = with_defects(raw_rows)
    raw_names = {v: k for k, v in profile.rename.items() if k != "default payment next month"}
    # the raw file's spelling (LIMIT_BAL, PAY_0, ... with the target) as the UCI CSV has it
    bad.rename(columns=raw_names).to_csv(tmp_path / "raw_spelling.csv", index=False)
    typed_defects(raw_rows).to_parquet(tmp_path / "snake.parquet")
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(bad)), 3)):
        bad.iloc[part].to_csv(folder / f"part-{i}.csv", index=False)
    (folder / "notes.txt").write_text("ignored: not CSV or Parquet")

    outputs = {}
    for name in ("raw_spelling.csv", "snake.parquet", "folder"):
        summary = score(tmp_path / name, job, tmp_path / f"{name}.out.parquet", trained_project.settings.batch)
        assert summary["files"] == (3 if name == "folder" else 1)
        outputs[name] = (without_time(read(tmp_path / f"{name}.out.parquet")),
                         read(tmp_path / f"{name}.out.rejects.parquet"))
    reference, ref_rejects = outputs["raw_spelling.csv"]
    for name, (out, rejects) in outputs.items():
        pd.testing.assert_frame_equal(out, reference, obj=name)
        assert rejects[ROW_COLUMN].tolist() == ref_rejects[ROW_COLUMN].tolist(), name
        assert rejects["reject_columns"].tolist() == ref_rejects["reject_columns"].tolist(), name


def test_chunk_boundaries_do_not_change_the_output(job, raw_rows, tmp_path, trained_project) -> None:
    src = tmp_path / "batch.csv"
    with_defects(raw_rows).to_csv(src, index=False)
    one = score(src, job, tmp_path / "one.parquet", trained_project.settings.batch)
    many = score(src, job, tmp_path / "many.parquet", trained_project.settings.batch, chunk_rows=7)
    assert pq.ParquetFile(tmp_path / "many.parquet").num_row_groups > 30
    pd.testing.assert_frame_equal(without_time(read(tmp_path / "one.parquet")),
                                  without_time(read(tmp_path / "many.parquet")))
    pd.testing.assert_frame_equal(read(tmp_path / "one.rejects.parquet"), read(tmp_path / "many.rejects.parquet"))
    assert {k: one[k] for k in ("rows_in", "scored", "rejected", "decisions", "rejected_per_reason")} == \
           {k: many[k] for k in ("rows_in", "scored", "rejected", "decisions", "rejected_per_reason")}


# --- a run that does not finish leaves no result ------------------------------------------------


def fail_from_row(monkeypatch: pytest.MonkeyPatch, row: int, error: BaseException) -> None:
    """SYNTHETIC failure: every chunk from input row ``row`` on raises ``error`` (a store, a disk, Ctrl-C)."""
    real = engine_pandas.score_chunk

    def failing(raw: pd.DataFrame, job: BatchJob, offset: int):
        if offset >= row:
            raise error
        return real(raw, job, offset)

    monkeypatch.setattr(engine_pandas, "score_chunk", failing)


def test_a_run_that_fails_half_way_leaves_no_rows_and_keeps_the_earlier_result(trained_project, job, raw_rows,
                                                                                tmp_path, monkeypatch) -> None:
    src = tmp_path / "batch.parquet"
    raw_rows.drop(columns=["default"]).to_parquet(src)
    batch = trained_project.settings.batch
    earlier = score(src, job, tmp_path / "earlier.parquet", batch, chunk_rows=50)
    before = {name: (tmp_path / name).read_bytes() for name in ("earlier.parquet", "earlier.rejects.parquet")}
    fail_from_row(monkeypatch, 150, OSError("SYNTHETIC: the disk went away"))
    for out in ("earlier.parquet", "fresh.parquet"):
        with pytest.raises(OSError, match="SYNTHETIC"):
            score(src, job, tmp_path / out, batch, chunk_rows=50)
    # the earlier whole result is untouched; the fresh run left nothing, not even a partial file
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert earlier["rows_in"] == len(raw_rows) == len(read(tmp_path / "earlier.parquet"))
    assert not (tmp_path / "fresh.parquet").exists() and not (tmp_path / "fresh.rejects.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.parquet", *sorted(before)]


@pytest.mark.parametrize("earlier", ["none", "file", "folder"])
@pytest.mark.parametrize("result", ["file", "folder"])
def test_a_whole_result_replaces_whatever_was_there(tmp_path, earlier, result) -> None:
    """publish(): a file (pandas engine) or a part folder (Dask) takes the place of an earlier file or folder."""
    final = tmp_path / "scored.parquet"
    if earlier == "file":
        final.write_bytes(b"earlier")
    elif earlier == "folder":
        final.mkdir()
        (final / "part-00007.parquet").write_bytes(b"earlier")
    partial = Path(engine_pandas.partial_url(str(final)))
    if result == "file":
        partial.write_bytes(b"new")
    else:
        partial.mkdir()
        (partial / "part-00000.parquet").write_bytes(b"new")
    engine_pandas.publish(str(partial), str(final))
    assert not partial.exists()
    if result == "file":
        assert final.read_bytes() == b"new"
    else:
        assert sorted(p.name for p in final.iterdir()) == ["part-00000.parquet"]
        assert (final / "part-00000.parquet").read_bytes() == b"new"


def test_ctrl_c_is_one_line_exit_130_and_no_output(trained_project, raw_rows, tmp_path, monkeypatch, caplog) -> None:
    src = tmp_path / "batch.parquet"
    raw_rows.drop(columns=["default"]).to_parquet(src)
    fail_from_row(monkeypatch, 150, KeyboardInterrupt())
    out = tmp_path / "s.parquet"
    try:
        code, text = run_cli([str(src), "--output", str(out), "--params", str(cli_params(tmp_path)),
                              "--model-uri", str(trained_project.model_dir), "--chunk-rows", "50"], caplog)
    except KeyboardInterrupt:  # (not let through: it would stop the whole test session)
        pytest.fail("Ctrl-C left the CLI as a traceback")
    assert code == 130
    assert f"interrupted: {out} was not written" in text and "Traceback" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.parquet", "params.yaml"]


# --- CLI errors: one line, exit code 2 ---------------------------------------------------------


def run_cli(args: list[str], caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exc:
        batch_main(args)
    return exc.value.code, caplog.text


def test_missing_required_column_names_column_and_file(trained_project, raw_rows, tmp_path, caplog) -> None:
    src = tmp_path / "no_pay.csv"
    raw_rows.drop(columns=["limit_bal", "pay_0", "age"]).to_csv(src, index=False)  # age: protected, not asked for
    code, text = run_cli([str(src), "--output", str(tmp_path / "o.parquet"), "--params", str(cli_params(tmp_path)),
                          "--model-uri", str(trained_project.model_dir)], caplog)
    assert code == 2
    missing = "missing required column(s) for profile 'taiwan_credit': limit_bal (or LIMIT_BAL), pay_0 (or PAY_0)\n"
    assert missing in text
    assert "no_pay.csv" in text and "Traceback" not in text
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize("case", ["no file", "not a table", "wrong profile", "no model", "empty folder"])
def test_bad_inputs_exit_2(trained_project, raw_rows, tmp_path, caplog, case) -> None:
    src = tmp_path / "in.parquet"
    raw_rows.to_parquet(src)
    args = [str(src), "--output", str(tmp_path / "o.parquet"), "--model-uri", str(trained_project.model_dir),
            "--params", str(cli_params(tmp_path))]
    expect = {"no file": "no such file or folder", "not a table": "not a CSV or Parquet file",
              "wrong profile": "was trained for profile 'taiwan_credit', not 'credit_risk'",
              "no model": "cannot load model", "empty folder": "holds no CSV or Parquet file"}[case]
    if case == "no file":
        args[0] = str(tmp_path / "missing.csv")
    elif case == "not a table":
        (tmp_path / "in.txt").write_text("x")
        args[0] = str(tmp_path / "in.txt")
    elif case == "wrong profile":
        args += ["--profile", "credit_risk"]
    elif case == "no model":
        args[args.index("--model-uri") + 1] = str(tmp_path / "nowhere")
    else:
        (tmp_path / "empty").mkdir()
        args[0] = str(tmp_path / "empty")
    code, text = run_cli(args, caplog)
    assert code == 2, text
    assert expect in text and "Traceback" not in text


# --- the vectorised normalise equals the per-value rule it replaced --------------------------


def reference_codes(series: pd.Series, kind: type) -> tuple[list[object], list[int]]:
    """The per-value loop normalise used before it was vectorised (the oracle)."""
    codes, bad = [], []
    for i, value in series.items():
        if pd.isna(value) or (isinstance(value, str) and not value.strip()):
            codes.append(None)
            continue
        try:
            codes.append(schemas._code(value, kind))
        except (TypeError, ValueError):
            codes.append(None)
            bad.append(i)
    return codes, bad


CELLS = st.one_of(
    st.none(), st.just(np.nan), st.integers(-3, 12), st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from(["1", " 2 ", "2.0", "1e0", "abc", "", "  ", "nan", "NA", "inf", "+1", "-0", "1_0", ".5",
                     "0x1", "٣", "RENT", " OWN ", "1.5", "True"]),
    st.booleans(), st.text(max_size=4))


@settings(max_examples=150, deadline=None)
@given(st.lists(CELLS, min_size=1, max_size=12), st.sampled_from(["object", "string", "float"]))
def test_vectorised_codes_equal_the_per_value_rule(values: list[object], dtype: str) -> None:
    if dtype == "string":
        series = pd.Series([v if isinstance(v, str) or v is None else str(v) for v in values], dtype="string")
    elif dtype == "float":
        series = pd.Series([float(v) if isinstance(v, int | float) else np.nan for v in values], dtype="float64")
    else:
        series = pd.Series(values, dtype=object)
    for kind in (int, str):
        ref_codes, ref_bad = reference_codes(series, kind)
        try:
            expected = pd.Series(ref_codes, dtype="Int64" if kind is int else "string")
        except (OverflowError, TypeError):  # the old loop crashed on whole numbers beyond int64
            continue
        got, bad = schemas._to_codes(series, kind)
        pd.testing.assert_series_equal(got.reset_index(drop=True), expected, check_names=False)
        assert list(series.index[bad]) == ref_bad


DECIMALS = st.builds(
    lambda pad, sign, whole, point, frac, exp, pad2: f"{pad}{sign}{whole}{point}{frac}{exp}{pad2}",
    st.sampled_from(["", " ", "\t", "\xa0", "\v"]), st.sampled_from(["", "-", "+"]),
    st.text("0123456789", max_size=18), st.sampled_from(["", ".", "."]), st.text("0123456789", max_size=18),
    st.sampled_from(["", "", "", "e5", "E-3"]), st.sampled_from(["", " ", "\n"]))
TEXT_CELLS = st.one_of(DECIMALS, st.none(), st.sampled_from(["", " ", "-0", "-0.0", "+0", "inf", "abc", "1_0",
                                                             "٣", ".", "-", "0x1", "1.2.3"]))


# Cells Arrow reads, every one: a column of them takes the whole-column path, any other cell the per-cell one
ARROW_NUMBERS = st.one_of(st.builds(lambda sign, whole, frac, exp: f"{sign}{whole}{frac}{exp}",
                                    st.sampled_from(["", "-", "+"]), st.text("0123456789", min_size=1, max_size=18),
                                    st.sampled_from(["", ".", ".5", ".25", ".0001", ".123456789012"]),
                                    st.sampled_from(["", "", "", "e5", "E-3"])),
                          st.sampled_from(["-0", "-0.0", "0", "inf", "NaN", "-Infinity"]))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.lists(TEXT_CELLS, min_size=1, max_size=40), st.lists(ARROW_NUMBERS, min_size=1, max_size=40)))
@example(["+400000000000000032E-3"])  # pandas reads a whole number, Python's float() 400000000000000.0625
def test_text_read_by_arrow_equals_pandas_reading_it(values: list[str | None]) -> None:
    """Plain decimals in Arrow-backed text (what the CSV readers give) are read by Arrow, not a Python string
    per cell; every value and every "not a number" must be what pandas alone reads."""
    series = pd.Series(values, dtype="str")  # pandas' default text, on Arrow
    assert schemas.plain_decimals(series) is not None
    got, bad = schemas._to_float(series)
    want, want_bad = schemas._text_to_float(series)  # what pandas reads in the same column
    np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())  # NaN where NaN; -0.0 equals 0.0
    assert list(np.asarray(bad, dtype=bool)) == list(np.asarray(want_bad, dtype=bool))
    ref_codes, ref_bad = reference_codes(pd.Series(values, dtype=object), int)
    try:
        expected = pd.Series(ref_codes, dtype="Int64")
    except (OverflowError, TypeError):  # whole numbers beyond int64: as in the test above
        return
    codes, code_bad = schemas._to_codes(series, int)
    pd.testing.assert_series_equal(codes, expected, check_names=False)
    assert list(series.index[code_bad]) == ref_bad


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.lists(st.integers(-10**15, 10**15).map(str), min_size=1, max_size=30),
                 st.lists(st.one_of(ARROW_NUMBERS, TEXT_CELLS), min_size=1, max_size=30)))
def test_text_ids_read_by_arrow_equal_pandas_reading_them(values: list[str | None]) -> None:
    ids, failures = chunk_module._typed_ids(pd.Series(values, dtype="str", name="id"), ID_INT)
    want, want_failures = chunk_module._typed_ids(pd.Series(values, dtype=object, name="id"), ID_INT)
    pd.testing.assert_series_equal(ids, want, check_names=False)
    assert failures["index"].tolist() == want_failures["index"].tolist()


def test_normalise_keeps_validate_outputs_on_real_rows(raw_rows, tmp_path) -> None:
    profile = make_settings("taiwan_credit", tmp_path).profile
    result = validate(with_defects(raw_rows), profile)
    assert result.report["rejected"] == len(DEFECTS)
    assert result.clean["education"].dtype == "Int64"
