"""Scheduled work as Prefect flows: retrain weekly, score each day's new applicants once, monitor after each batch.

``python -m src.flows run daily-batch --date 2026-12-04`` runs one flow once (no server needed);
``make flows`` starts a local Prefect server (SQLite) and serves the deployments on their schedules.
"""
