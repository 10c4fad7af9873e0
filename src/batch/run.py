"""One batch run: plan the inputs, load the model as a job, run an engine, reconcile the counts.

The model is resolved and loaded as the service loads it (src.scoring.model_store), and
the decision bands and TreeSHAP reasons are the service's (src.scoring.scorer.Scorer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow.exceptions import MlflowException

from src import notify
from src.batch.chunk import BatchJob
from src.batch.engine_pandas import default_rejects, partial_url, publish, remove_result, run_pandas
from src.batch.inputs import InputError, plan_inputs
from src.common import PipelineError
from src.config import BatchSettings, Settings, env
from src.scoring.model_store import LoadedModel, load_model

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


def score_batch(source: str, output: str, job: BatchJob, batch: BatchSettings, *, rejects: str | None = None,
                engine: str = "pandas", client: Client | None = None, chunk_rows: int | None = None,
                report: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Score every row of ``source`` into ``output`` and ``rejects``; return the run's summary.

    ``job.id_kind`` is taken from the input. The dask engine needs ``client``. ``report`` hears
    the rows read so far after every chunk (pandas engine).
    """
    started = time.perf_counter()
    rejects = rejects or default_rejects(output)
    files, id_kind = plan_inputs(source, job.profile, batch.csv_block_bytes)
    job = replace(job, id_kind=id_kind)
    # Written under partial names and put in place only once whole: a run that fails or is stopped
    # half-way never leaves a readable file of some of the rows where the result belongs.
    scored_to, rejects_to = partial_url(output), partial_url(rejects)
    try:
        if engine == "dask":
            from src.batch.engine_dask import run_dask  # noqa: PLC0415  (Dask only when asked for)

            counts = run_dask(files, job, scored_to, rejects_to, batch, client)
        else:
            chunk_rows = chunk_rows or batch.chunk_rows
            if job.top_reasons:  # TreeSHAP dominates: small chunks keep every thread busy
                chunk_rows = min(chunk_rows, batch.reasons_chunk_rows)
            counts = run_pandas(files, job, scored_to, rejects_to, batch, chunk_rows, report)
        if counts.rows_in != counts.scored + counts.rejected:  # guarded invariant
            raise PipelineError(f"row counts do not reconcile: {counts.rows_in} != {counts.scored} + "
                                f"{counts.rejected}")
    except BaseException:
        discard(scored_to, rejects_to)
        raise
    publish(scored_to, output)
    publish(rejects_to, rejects)
    seconds = time.perf_counter() - started
    return {
        "input": source, "files": len(files), "engine": engine, "profile": job.profile.name,
        "model": {"name": job.model_name, "version": job.model_version, "uri": job.model_uri},
        "scored_at": job.scored_at.isoformat(), "output": output, "rejects": rejects,
        "id": f"column {job.profile.id_column}" if id_kind else "input row number",
        **counts.as_dict(),
        "reject_share": round(counts.rejected / counts.rows_in, 6) if counts.rows_in else 0.0,
        "reasons": job.top_reasons, "seconds": round(seconds, 3),
        "rows_per_second": round(counts.rows_in / seconds) if seconds > 0 else None,
    }


def discard(*urls: str) -> None:
    """Remove a failed run's partial results (best effort: the failure being raised is what matters)."""
    for url in urls:
        try:
            remove_result(url)
        except Exception as exc:  # e.g. the store that just failed the run
            log.warning("could not remove the partial result %s: %s", url, exc)


RUN_FACTS = ("scored_at", "seconds", "rows_per_second")


def stable_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary minus what differs between runs of one model on one input (times, rates, version number)."""
    stable = {k: v for k, v in summary.items() if k not in RUN_FACTS}
    stable["model"] = {k: v for k, v in summary["model"].items() if k != "version"}
    return stable


def load_job(settings: Settings, model_uri: str | None, *, top_reasons: int = 0, include_features: bool = False,
             num_threads: int = 1, reproducible: bool = False, adverse_action: bool = True) -> BatchJob:
    """The model the service would serve (or ``model_uri``) as a batch job; ``scored_at`` is now."""
    uri = model_uri or env.model_uri(settings)
    try:
        loaded = load_model(uri, settings, top_reasons=max(top_reasons, 1), num_threads=num_threads)
    except (MlflowException, OSError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot load model {uri}: {first} (register one with `dvc repro`, "
                         f"or pass --model-uri)") from exc
    dataset = loaded.meta["dataset"]
    if dataset != settings.dataset:
        raise InputError(f"model {uri} was trained for profile '{dataset}', not '{settings.dataset}' "
                         f"(use --profile {dataset})")
    return job_for(loaded, top_reasons=top_reasons, include_features=include_features, reproducible=reproducible,
                   adverse_action=adverse_action)


def job_for(loaded: LoadedModel, *, top_reasons: int = 0, include_features: bool = False, reproducible: bool = False,
            adverse_action: bool = True) -> BatchJob:
    """A loaded model (the CLI's, or the one the service serves) as a batch job; ``scored_at`` is now."""
    scorer = loaded.scorer
    return BatchJob(scorer=scorer, model_name=loaded.name, model_version=loaded.version, model_uri=loaded.uri,
                    scored_at=pd.Timestamp.now(tz="UTC").floor("us"), id_kind=None,
                    top_reasons=min(top_reasons, len(scorer.columns)), include_features=include_features,
                    reproducible=reproducible, adverse_action=adverse_action)


def rejects_event(summary: dict[str, Any], settings: Settings) -> notify.Event:
    """A batch that rejected more than notify.batch_reject_share of its rows: how many, why, and where they are."""
    reasons = "; ".join(f"{reason} ({count:,})" for reason, count in list(summary["rejected_per_reason"].items())[:5])
    return notify.Event(
        "batch_rejects", "warning",
        f"Batch rejected {summary['reject_share']:.1%} of {summary['input']}",
        f"{summary['rejected']:,} of {summary['rows_in']:,} rows failed validation (more than "
        f"notify.batch_reject_share = {settings.notify.batch_reject_share:g}) and were not scored: {reasons}.",
        where=[summary["rejects"], summary["output"]],
        details={key: summary[key] for key in ("rows_in", "scored", "rejected", "reject_share",
                                               "rejected_per_reason")}, dataset=settings.dataset)
