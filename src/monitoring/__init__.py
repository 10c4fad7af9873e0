"""Monitoring of the served model: population drift (PSI + Evidently), outcome-based performance
and a Prometheus exporter for both. CLI: ``python -m src.monitoring drift | performance | exporter``.
"""
