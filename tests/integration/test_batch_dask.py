"""Batch scoring on Dask equals the pandas engine; --scheduler on a real TCP scheduler; s3:// in and out.

Real components only: a 2-worker distributed LocalCluster, a TCP scheduler with worker
processes, and a moto S3 server. The input is the trained project's real rows resampled
(with new ids) plus a few SYNTHETIC defects, written as Parquet with small row groups so
Dask makes several partitions.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster

from src.batch import engine_dask
from src.batch.chunk import BatchJob
from src.batch.engine_pandas import default_rejects
from src.batch.run import load_job, score_batch
from src.data.schemas import ROW_COLUMN
from tests.conftest import ROOT, TrainedProject
from tests.integration.conftest import free_port, stop_process_group, tool_env

# Each test scores 4,000 rows in well under a minute; a wedged cluster fails in 5 minutes, not the suite's 15.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROWS = 6000


@pytest.fixture(scope="module")
def batch_input(trained_project: TrainedProject, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real rows resampled to ROWS with new ids; SYNTHETIC defects in every 500th row; 8 row groups.

    The file keeps columns the model does not read (the protected attributes): Dask must not fuse
    its partitions for that (row numbers would shift).
    """
    raw = pd.read_parquet(trained_project.settings.raw_table).drop(columns=["default"])
    rng = np.random.default_rng(3)
    frame = raw.iloc[rng.integers(0, len(raw), ROWS)].reset_index(drop=True).astype({"pay_0": "float64"})
    frame["id"] = np.arange(10_000, 10_000 + ROWS)
    frame.loc[::500, "pay_0"] = 15.0  # SYNTHETIC: outside [-2, 9]
    path = tmp_path_factory.mktemp("batch") / "batch.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=ROWS // 8)
    return path


@pytest.fixture(scope="module")
def job(trained_project: TrainedProject) -> BatchJob:
    return load_job(trained_project.settings, str(trained_project.model_dir), top_reasons=3,
                            include_features=True, num_threads=1)


@pytest.fixture(scope="module")
def pandas_result(trained_project, job, batch_input, tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    out = tmp_path_factory.mktemp("pandas") / "scored.parquet"
    summary = score_batch(str(batch_input), str(out), job, trained_project.settings.batch, chunk_rows=1000)
    return pd.read_parquet(out), pd.read_parquet(default_rejects(str(out))), summary


@pytest.fixture(scope="module")
def threads_client() -> Iterator[Client]:
    """2 workers (threads in this process: starts fast, still the distributed scheduler and its tasks)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


def same_rows(dask_out: pd.DataFrame, dask_rejects: pd.DataFrame, reference) -> None:
    out, rejects, _ = reference
    assert dask_out["scored_at"].nunique() == 1
    pd.testing.assert_frame_equal(dask_out.drop(columns="scored_at").reset_index(drop=True),
                                  out.drop(columns="scored_at"), check_exact=False, rtol=0, atol=1e-12)
    assert dask_out["decision"].tolist() == out["decision"].tolist()
    pd.testing.assert_frame_equal(dask_rejects.reset_index(drop=True), rejects)


def test_dask_engine_equals_pandas_engine(trained_project, job, batch_input, pandas_result, threads_client,
                                          tmp_path) -> None:
    out = tmp_path / "scored.parquet"
    batch = trained_project.settings.batch
    small_partitions = batch.model_copy(update={"dask_partition_bytes": 1})  # one partition per row group
    summary = score_batch(str(batch_input), str(out), job, small_partitions, engine="dask",
                                  client=threads_client)
    parts = sorted(p.name for p in out.iterdir())
    assert len(parts) == 8 and parts[0] == "part-00000.parquet"
    same_rows(pd.read_parquet(out), pd.read_parquet(default_rejects(str(out))), pandas_result)
    reference = pandas_result[2]
    for key in ("rows_in", "scored", "rejected", "decisions", "rejected_per_reason"):
        assert summary[key] == reference[key], key
    assert summary["rows_in"] == ROWS == summary["scored"] + summary["rejected"]
    assert summary["rejected"] == ROWS // 500
    assert pd.read_parquet(default_rejects(str(out)))[ROW_COLUMN].tolist() == list(range(0, ROWS, 500))


def test_dask_splits_a_small_file_for_reasons(trained_project, job, batch_input, pandas_result, threads_client,
                                              tmp_path) -> None:
    """With reasons (slow TreeSHAP), one default-sized partition is split so both workers get work."""
    out = tmp_path / "scored.parquet"
    batch = trained_project.settings.batch.model_copy(update={"reasons_chunk_rows": 1000})
    score_batch(str(batch_input), str(out), job, batch, engine="dask", client=threads_client)
    assert len(list(out.iterdir())) == ROWS // 1000
    same_rows(pd.read_parquet(out), pd.read_parquet(default_rejects(str(out))), pandas_result)


def test_a_failed_dask_run_leaves_nothing_at_the_output(trained_project, job, batch_input, threads_client,
                                                        tmp_path, monkeypatch) -> None:
    """A partition fails half-way (SYNTHETIC): no part folder where the result belongs, the error raised."""
    real = engine_dask.score_chunk

    def failing(raw: pd.DataFrame, job: BatchJob, offset: int):
        if offset >= ROWS // 2:
            raise OSError("SYNTHETIC: the store went away")
        return real(raw, job, offset)

    monkeypatch.setattr(engine_dask, "score_chunk", failing)
    out = tmp_path / "scored.parquet"
    batch = trained_project.settings.batch.model_copy(update={"dask_partition_bytes": 1})  # 8 partitions
    with pytest.raises(OSError, match="SYNTHETIC"):
        score_batch(str(batch_input), str(out), job, batch, engine="dask", client=threads_client)
    assert not out.exists() and not Path(default_rejects(str(out))).exists()


def test_cli_on_a_real_tcp_scheduler(trained_project, batch_input, pandas_result, tmp_path) -> None:
    """--scheduler tcp://...: an existing cluster (`dask scheduler` + `dask worker` processes) does the work.

    The cluster and the CLI are separate processes, as on a real cluster: nothing is shared
    with this test process (its imports, threads, OpenMP state) but the network.
    """
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text(encoding="utf-8").replace(
        "dask_partition_bytes: 8388608", "dask_partition_bytes: 1"), encoding="utf-8")
    out = tmp_path / "scored.parquet"
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**tool_env(), "PYTHONPATH": str(ROOT)}  # the workers need this project's code, like an image would
    dask = str(Path(sys.executable).parent / "dask")
    logs = [(tmp_path / f"{name}.log").open("w") for name in ("scheduler", "workers")]
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", "127.0.0.1:0"], env=env, cwd=tmp_path,
                              stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True)]
    try:
        procs.append(subprocess.Popen([dask, "worker", address, "--nworkers", "2", "--nthreads", "1",
                                       "--host", "127.0.0.1", "--no-dashboard"], env=env, cwd=tmp_path,
                                      stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True))
        proc = subprocess.run([sys.executable, "-m", "src.batch", str(batch_input), "--output", str(out),
                               "--params", str(params), "--top-reasons", "3", "--include-features",
                               "--model-uri", str(trained_project.model_dir), "--scheduler", address],
                              cwd=ROOT, env=tool_env(), capture_output=True, text=True, timeout=240, check=False)
    finally:
        for running in reversed(procs):
            stop_process_group(running)
        for log in logs:
            log.close()
    assert proc.returncode == 0, proc.stderr[-3000:] + (tmp_path / "workers.log").read_text()[-3000:]
    assert f"rows in {ROWS:,}: scored {ROWS - ROWS // 500:,}, rejected {ROWS // 500}" in proc.stdout
    assert len(list(out.iterdir())) == 8
    same_rows(pd.read_parquet(out), pd.read_parquet(default_rejects(str(out))), pandas_result)


def test_cli_local_cluster_with_an_older_model_bundle(trained_project, batch_input, pandas_result, tmp_path) -> None:
    """--engine dask starts its own LocalCluster; its workers import this checkout's code, not the model's copy.

    A registered model carries the `src` of the day it was registered (mlflow code_paths), and
    loading it puts that copy first on sys.path. Here the copy predates batch scoring.
    """
    model = tmp_path / "model"
    shutil.copytree(trained_project.model_dir, model)
    bundled = [p for p in model.rglob("code/src/batch") if p.is_dir()]
    assert bundled
    for path in bundled:
        shutil.rmtree(path)
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text(encoding="utf-8").replace(
        "dask_partition_bytes: 8388608", "dask_partition_bytes: 1"), encoding="utf-8")
    out = tmp_path / "scored.parquet"
    proc = subprocess.run([sys.executable, "-m", "src.batch", str(batch_input), "--output", str(out),
                           "--engine", "dask", "--params", str(params), "--top-reasons", "3", "--include-features",
                           "--model-uri", str(model)], cwd=ROOT, env=tool_env(), capture_output=True, text=True,
                          timeout=280, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"rows in {ROWS:,}: scored {ROWS - ROWS // 500:,}, rejected {ROWS // 500}" in proc.stdout
    assert len(list(out.iterdir())) == 8
    same_rows(pd.read_parquet(out), pd.read_parquet(default_rejects(str(out))), pandas_result)


def test_s3_input_and_output_both_engines(trained_project, job, batch_input, pandas_result, threads_client,
                                          moto_server, tmp_path) -> None:
    pytest.importorskip("s3fs")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="batch")
    s3.upload_file(str(batch_input), "batch", "in/part-0.parquet")
    frame = pd.read_parquet(batch_input)
    frame.to_csv(tmp_path / "batch.csv", index=False)
    s3.upload_file(str(tmp_path / "batch.csv"), "batch", "csv/batch.csv")

    batch = trained_project.settings.batch
    summary = score_batch("s3://batch/in/", "s3://batch/out/scored.parquet", job, batch, chunk_rows=1000)
    assert summary["files"] == 1 and summary["rejects"] == "s3://batch/out/scored.rejects.parquet"
    got = pd.read_parquet("s3://batch/out/scored.parquet")
    same_rows(got, pd.read_parquet("s3://batch/out/scored.rejects.parquet"), pandas_result)

    score_batch("s3://batch/csv/batch.csv", "s3://batch/dask/scored.parquet", job, batch, engine="dask",
                        client=threads_client)
    same_rows(pd.read_parquet("s3://batch/dask/scored.parquet"),
              pd.read_parquet("s3://batch/dask/scored.rejects.parquet"), pandas_result)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="batch", Prefix="dask/")["Contents"]]
    assert any(k.startswith("dask/scored.parquet/part-") for k in keys)
