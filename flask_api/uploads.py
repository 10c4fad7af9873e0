"""Batch upload for risk analysts: GET/POST /batch, a job page with progress, then the counts and downloads.

The file is checked while the analyst waits (name, size, emptiness, columns: one message on
the page), then scored in the background by src.batch.uploads with the model the service
serves, one file per user at a time. The job page refreshes itself until the job is done
(no script needed) and then offers the scored and rejects files as CSV and Parquet, the
same files ``python -m src.batch`` writes. Signed-in users with the ``score`` scope.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, abort, current_app, redirect, render_template, request, send_file, url_for
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response
from wtforms import BooleanField

from flask_api.service import service
from flask_api.signin import signed_in
from src.batch.run import job_for
from src.batch.uploads import SUFFIXES, UploadJob, UploadRefused, UploadStore, size_words
from src.config import Settings
from src.scoring.scorer import DECISIONS

log = logging.getLogger(__name__)

bp = Blueprint("uploads", __name__)

FORM_BYTES = 1 << 20  # room for the form's other fields and the multipart framing, above the file limit
OPEN_OWNER = "open"  # every job's owner while the service runs open (loopback only)
REFRESH_SECONDS = 1


class UploadForm(FlaskForm):
    file = FileField("CSV or Parquet file")
    reasons = BooleanField("Add the top reasons for every row (slower)")


def install(app: Flask, settings: Settings) -> UploadStore:
    folder = Path(settings.serve.uploads.folder)
    store = UploadStore(folder if folder.is_absolute() else settings.paths.root / folder, settings.serve.uploads,
                        settings.batch)
    app.extensions["credit_uploads"] = store
    app.register_blueprint(bp)
    return store


def _store() -> UploadStore:
    return current_app.extensions["credit_uploads"]


def _owner() -> str:
    return signed_in() or OPEN_OWNER


def _form_page(form: UploadForm, error: str | None = None, status: int = 200) -> tuple[str, int]:
    store = _store()
    svc = service()
    return render_template("batch.html", form=form, error=error, jobs=store.jobs_of(_owner()), job=None,
                           model=svc.models.current, limit=size_words(store.settings.max_bytes),
                           accept=",".join(SUFFIXES), keep=store.settings.keep_minutes,
                           top_reasons=svc.settings.serve.top_reasons), status


@bp.get("/batch")
def index() -> tuple[str, int]:
    _store().sweep()
    return _form_page(UploadForm())


@bp.post("/batch")
def upload() -> Any:
    """Check the upload and queue it; a refusal is the form again with one message (4xx)."""
    store = _store()
    request.max_content_length = store.settings.max_bytes + FORM_BYTES
    try:
        form = UploadForm()
        valid = form.validate()
        file = request.files.get("file")
    except RequestEntityTooLarge:
        return _form_page(UploadForm(formdata=None),
                          f"The file is larger than the {size_words(store.settings.max_bytes)} limit.", 413)
    if not valid:
        return _form_page(form, "The form expired; please choose the file again.", 400)
    if file is None or not file.filename:
        return _form_page(form, "Choose a CSV or Parquet file to upload.", 400)
    svc = service()
    model = svc.models.current
    if model is None:
        return _form_page(form, "No model is loaded yet; please try again in a minute.", 503)
    reasons = svc.settings.serve.top_reasons if form.reasons.data else 0
    try:
        job = store.accept(_owner(), file.filename, file.save, model.scorer.profile, reasons)
    except UploadRefused as exc:
        return _form_page(form, str(exc), exc.status)
    store.start(job, job_for(model, top_reasons=reasons))
    return redirect(url_for("uploads.job", job_id=job.id), code=303)


def _mine(job_id: str) -> UploadJob:
    job = _store().get(job_id)
    if job is None or job.owner != _owner():
        abort(404, "No such file: it expired or belongs to someone else.")
    return job


@bp.get("/batch/<job_id>")
def job(job_id: str) -> tuple[str, int, dict[str, str]]:
    """Progress while the file is scored (the page refreshes itself), then the counts and the downloads."""
    item = _mine(job_id)
    summary = item.summary or {}
    decisions = [(d, summary.get("decisions", {}).get(d, 0)) for d in DECISIONS]
    headers = {"Cache-Control": "no-store"}
    return render_template("batch.html", form=None, job=item, decisions=decisions, model=service().models.current,
                           refresh=REFRESH_SECONDS if item.active else None,
                           keep=_store().settings.keep_minutes), 200, headers


@bp.get("/batch/<job_id>/<kind>.<fmt>")
def download(job_id: str, kind: str, fmt: str) -> Response:
    item = _mine(job_id)
    path = _store().output(item, kind, fmt)
    if path is None:
        abort(404, f"No {kind} file in {fmt} for this job.")
    mimetype = "text/csv" if fmt == "csv" else "application/vnd.apache.parquet"
    return send_file(path, mimetype=mimetype, as_attachment=True, download_name=item.download_name(kind, fmt),
                     max_age=0)
