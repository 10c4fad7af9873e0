"""Monitoring of the served model: population drift (PSI, with an HTML report), outcome-based performance
and a Prometheus exporter for both. CLI: ``python -m src.monitoring drift | performance | exporter``.
"""
