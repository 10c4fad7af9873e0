"""``python -m src.deploy``: see :mod:`src.deploy.cli`."""

from src.deploy.cli import run

run()
