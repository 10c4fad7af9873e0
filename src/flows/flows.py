"""The three flows (Prefect 3), built from the project's own functions: retrain, daily batch, monitor.

* **retrain** is :func:`src.modeling.retrain.retrain` (what ``make retrain`` does: pull, repro
  through the gates, push, reload the service) as one flow.
* **daily-batch** scores every file that landed in ``flows.inbox`` exactly once
  (src/flows/daily.py), one retried task per file, then runs **monitor** for the same date.
* **monitor** checks that day's applicants and the last ``flows.log_window_hours`` of the
  prediction log for drift against the training reference, and the model's performance on
  matured outcomes (``flows.outcomes``); results go to ``metrics/`` (which the exporter serves)
  and the day's folder; drift, decay and a failed flow are notified (src/notify.py).

Tasks that touch a store or the network retry (``flows.task_retries``) and time out
(``flows.task_timeout_seconds``). Any flow that fails tells the webhook which run and why.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from src import notify
from src.batch.chunk import BatchJob
from src.batch.run import load_job, rejects_event
from src.common import write_json
from src.config import BatchSettings, ConfigError, Settings, env, load_settings
from src.flows import daily
from src.modeling.fairness import groups_of
from src.modeling.retrain import KEY_ENV, retrain
from src.monitoring.drift import drift_event, run_drift
from src.monitoring.performance import decay_event, run_performance
from src.monitoring.sources import InputError, applicant_rows, database_url, load_model, read_frame, read_log

log = logging.getLogger(__name__)


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def day_of(value: str | None) -> str:
    """The run date as YYYY-MM-DD (default: today, UTC); anything else is an error naming it."""
    if value is None:
        return today()
    try:
        return date.fromisoformat(value).isoformat()
    except (TypeError, ValueError):
        raise ConfigError(f"run_date must be YYYY-MM-DD, got {value!r}") from None


def located(settings: Settings) -> Settings:
    """The settings with flows.inbox / outbox / outcomes anchored at the project root when they are relative
    local paths (as every other path of params.yaml is), so a flow reads the same files from any directory."""
    f = settings.flows

    def anchor(value: str | None) -> str | None:
        if value is None or "://" in value or Path(value).is_absolute():
            return value
        return str(settings.paths.root / value)

    flows = f.model_copy(update={"inbox": anchor(f.inbox), "outbox": anchor(f.outbox), "outcomes": anchor(f.outcomes)})
    return replace(settings, flows=flows)


def settings_for(params: str) -> Settings:
    return located(load_settings(params))


def notify_failure(flow_: Any, flow_run: Any, state: Any) -> None:
    """on_failure hook: tell the webhook which flow run failed and why."""
    params = (flow_run.parameters or {}).get("params", "params.yaml")
    try:
        settings = load_settings(params).notify
    except Exception:  # the params file may be what failed: notify with the defaults
        from src.config import NotifySettings  # noqa: PLC0415

        settings = NotifySettings()
    notify.send(notify.Event(
        "flow_failed", "critical", f"Flow {flow_.name} failed",
        f"Flow run {flow_run.name} ({flow_run.id}) of {flow_.name} ended {state.name}: {state.message}",
        where=[f"Prefect flow run {flow_run.id}", "the log of the host that ran it"],
        details={"flow": flow_.name, "flow_run_id": str(flow_run.id), "state": state.name,
                 "parameters": {k: str(v) for k, v in (flow_run.parameters or {}).items()}}), settings)


# --- tasks ----------------------------------------------------------------------------------------------------


@task(name="find-new-files", cache_policy=NO_CACHE)
def find_pending(inbox: str, outbox: str) -> tuple[list[str], dict[str, dict[str, Any]]]:
    return daily.pending(inbox, outbox)


@task(name="score-file", cache_policy=NO_CACHE)
def score_one(url: str, run_date: str, inbox: str, outbox: str, job: BatchJob, batch: BatchSettings,
              ledger: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return daily.score_file(url, run_date, inbox, outbox, job, batch, ledger)


@task(name="drift", cache_policy=NO_CACHE)
def drift_check(settings: Settings, frame: pd.DataFrame, source: str, output: Path, html: Path | None,
                copy_to: str | None) -> dict[str, Any]:
    batch = applicant_rows(frame, settings.profile, source)
    result = run_drift(settings, batch, load_model(settings, None), output, html)
    if copy_to:
        with fsspec.open(copy_to, "wb") as out, output.open("rb") as src:
            shutil.copyfileobj(src, out)
    if result.flag:
        notify.send(drift_event(result, settings.dataset, source, output, html), settings.notify)
    return {"source": source, "rows": len(batch.frame), "flag": result.flag,
            "drifted_features": result.drifted_features, "score_drifted": result.summary["score_drifted"]}


def _with_retries(task_: Any, settings: Settings) -> Any:
    f = settings.flows
    return task_.with_options(retries=f.task_retries, retry_delay_seconds=f.task_retry_seconds,
                              timeout_seconds=f.task_timeout_seconds)


# --- flows ----------------------------------------------------------------------------------------------------


@flow(name="daily-batch", on_failure=[notify_failure])
def daily_batch(run_date: str | None = None, params: str = "params.yaml", monitor_after: bool = True,
                ) -> dict[str, Any]:
    """Score every new file of the inbox once, under ``run_date`` (default: today, UTC); then monitor."""
    settings = settings_for(params)
    f = settings.flows
    day = day_of(run_date)
    todo, ledger = _with_retries(find_pending, settings)(f.inbox, f.outbox)
    result = daily.DayResult(run_date=day, already_scored=sorted(
        u for u, r in ledger.items() if r.get("status") == daily.DONE and r["run_date"] == day))
    if todo:
        job = load_job(settings, None)
        for url in todo:
            record = _with_retries(score_one, settings)(url, day, f.inbox, f.outbox, job, settings.batch, ledger)
            daily.add(result, record)
            if record["reject_share"] > settings.notify.batch_reject_share:
                notify.send(rejects_event({**record, "input": url}, settings), settings.notify)
    summary = result.as_dict()
    log.info("daily batch %s: %d file(s) scored (%d rows in, %d scored, %d rejected); %d already scored",
             day, summary["files_scored"], result.rows_in, result.rows_scored, result.rows_rejected,
             len(result.already_scored))
    if monitor_after:
        summary["monitor"] = monitor(run_date=day, params=params)
    return summary


@flow(name="monitor", on_failure=[notify_failure])
def monitor(run_date: str | None = None, params: str = "params.yaml") -> dict[str, Any]:
    """Drift of the day's applicants and of the prediction-log window; performance on matured outcomes."""
    settings = settings_for(params)
    f = settings.flows
    day = day_of(run_date)
    metrics, reports = settings.paths.metrics, settings.paths.reports
    out: dict[str, Any] = {"run_date": day, "batch_drift": None, "log_drift": None, "performance": None}
    records = daily.day_records(f.outbox, day)
    if records:
        frame = pd.concat([read_frame(r["input"]) for r in records], ignore_index=True)
        out["batch_drift"] = drift_check(settings, frame, f"the {day} batch ({len(records)} file(s))",
                                         metrics / "drift.json", reports / "drift_report.html",
                                         f"{f.outbox.rstrip('/')}/{day}/drift.json")
    else:
        log.info("monitor %s: no batch was scored that day", day)
    since = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1) - timedelta(hours=f.log_window_hours)
    try:
        logged = read_log(database_url(settings, None), since, since + timedelta(hours=f.log_window_hours))
    except InputError as exc:  # an empty window, or no log yet: nothing served, nothing to compare
        log.info("monitor %s: prediction log skipped: %s", day, exc)
    else:
        out["log_drift"] = drift_check(settings, logged, f"the prediction log ({f.log_window_hours:g} h to {day})",
                                       metrics / "drift_log.json", None, None)
    if f.outcomes:
        out["performance"] = performance_check(settings, f.outcomes)
    return out


def performance_check(settings: Settings, outcomes: str) -> dict[str, Any]:
    """Every scored day's rows joined with the matured outcomes: ROC-AUC against the model's and approval rates by
    protected group against the four-fifths floor; decay and a breached floor are notified."""
    records = [r for r in daily.read_ledger(settings.flows.outbox).values() if r["status"] == daily.DONE]
    if not records:
        return {"skipped": "nothing scored yet"}
    scored = pd.concat([read_frame(r["output"]) for r in records], ignore_index=True)
    labels = read_frame(outcomes)
    # Protected attributes the outcomes file holds (as lenders keep them, apart from the application): the
    # approval rate of each group (numeric ones in the profile's bands) against the most approved group's.
    by = [name for name in settings.profile.protected if name in labels.columns]
    for name in by:
        labels[name] = groups_of(labels[name], settings.profile.protected[name])
    summary = run_performance(settings, scored, settings.flows.outbox, labels, outcomes, "id",
                              settings.profile.target_column, None, None, tuple(by))
    output = settings.paths.metrics / "performance.json"
    write_json(output, summary)
    floor = settings.gate.fairness.min_adverse_impact_ratio
    breaches = [{"column": column, "group": g["group"], "approval_ratio": g["approval_ratio"]}
                for column, groups in (summary.get("by") or {}).items() for g in groups
                if g.get("approval_ratio") is not None and g["approval_ratio"] < floor]
    if breaches:
        named = "; ".join(f"{b['column']} = {b['group']}: {b['approval_ratio']:.2f}" for b in breaches)
        notify.send(notify.Event(
            "fairness_floor", "critical", f"Approval rates below four fifths on {settings.dataset}",
            f"On matured outcomes, these groups are approved at less than {floor:g} of the most approved group's "
            f"rate (gate.fairness.min_adverse_impact_ratio): {named}.", where=[str(output), "docs/fairness.md"],
            details={"floor": floor, "breaches": breaches}, dataset=settings.dataset), settings.notify)
    if summary["decay"]:
        notify.send(decay_event(summary, settings, settings.flows.outbox, [str(output)]), settings.notify)
    return {"decay": summary["decay"], "roc_auc": summary["overall"]["roc_auc"],
            "matched": summary["counts"]["matched"], "fairness_breaches": breaches}


@flow(name="retrain", on_failure=[notify_failure])
def retrain_flow(params: str = "params.yaml", pull: bool | None = None, push: bool | None = None,
                 reload_url: str | None = None, remote: str | None = None) -> dict[str, Any]:
    """What ``make retrain`` does (src/modeling/retrain.py), as one flow: a failed step fails the flow."""
    settings = load_settings(params)
    if remote:
        settings = replace(settings, retrain=settings.retrain.model_copy(update={"remote": remote}))
    result = retrain(settings, pull=settings.retrain.pull if pull is None else pull,
                     push=settings.retrain.push if push is None else push, reload_url=reload_url,
                     token=env.text(KEY_ENV))
    return asdict(result)


FLOWS = {"daily-batch": daily_batch, "monitor": monitor, "retrain": retrain_flow}


def deployments(settings: Settings, params: str = "params.yaml") -> list[Any]:
    """The schedules, in code: the daily batch (then monitor), the weekly retrain; monitor on demand."""
    from prefect.schedules import Cron  # noqa: PLC0415

    f = settings.flows
    return [
        daily_batch.to_deployment(name="daily-batch", schedules=[Cron(f.batch_cron, timezone=f.timezone)],
                                  parameters={"params": params}),
        retrain_flow.to_deployment(name="weekly-retrain", schedules=[Cron(f.retrain_cron, timezone=f.timezone)],
                                   parameters={"params": params}),
        monitor.to_deployment(name="monitor", parameters={"params": params}),
    ]
