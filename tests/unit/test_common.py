"""Shared helpers: JSON/table output, missing-input errors, and the stage entry point's exit codes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.common import PipelineError, read_table, run_main, write_json, write_table
from src.config import ConfigError


def test_write_json_handles_numpy_and_paths(tmp_path):
    target = tmp_path / "deep" / "er" / "out.json"
    write_json(target, {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "p": Path("a/b")})
    text = target.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert json.loads(text) == {"i": 3, "f": 0.5, "b": True, "p": "a/b"}


def test_write_json_refuses_unknown_objects(tmp_path):
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json(tmp_path / "x.json", {"o": object()})


def test_table_round_trip_and_missing(tmp_path):
    frame = pd.DataFrame({"a": pd.array([1, None], dtype="Int64"), "b": ["x", "y"]})
    path = tmp_path / "sub" / "t.parquet"
    write_table(frame.set_axis([5, 9]), path)
    back = read_table(path)
    assert list(back.index) == [0, 1]  # the index is not stored
    assert back["a"].isna().tolist() == [False, True]
    with pytest.raises(PipelineError) as err:
        read_table(tmp_path / "nope.parquet")
    assert "nope.parquet is missing" in str(err.value)
    assert "dvc repro" in str(err.value)


@pytest.fixture
def root_logging():
    """run_main reconfigures the root logger; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("exc", [PipelineError("bad input file"), ConfigError("params.yaml: missing key 'x'")])
def test_run_main_exits_1_with_the_message(exc, capsys, root_logging):
    def stage() -> None:
        raise exc

    with pytest.raises(SystemExit) as stop:
        run_main(stage)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert str(exc) in err
    assert "ERROR" in err
    assert "Traceback" not in err


def test_run_main_lets_bugs_through(root_logging):
    def stage() -> None:
        raise KeyError("a real bug")

    with pytest.raises(KeyError):
        run_main(stage)


def test_run_main_returns_normally(root_logging):
    calls = []
    run_main(lambda: calls.append(1))
    assert calls == [1]
