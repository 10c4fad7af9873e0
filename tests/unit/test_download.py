"""``ingest --download``: fetch the original UCI zip, check its sha256, unpack the .xls, ingest it.

No mocks of urllib: every test downloads over real HTTP from a server on 127.0.0.1
(``http.server`` in a thread, on a free port) that a fixture starts and stops. The
served zip holds a genuine BIFF8 ``.xls`` (written with xlwt) laid out like the
UCI original: a first header row ``X1..X23, Y``, the real names in the second row,
built from the first rows of the real Kaggle CSV so the values can be compared.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import os
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import xlwt
import yaml

from src.common import PipelineError
from src.config import DownloadSpec, Settings
from src.data import ingest
from src.data.validate import validate
from tests.conftest import ROOT, load_params, make_settings, real_file

ROWS = 500
MEMBER = "default of credit card clients.xls"
UCI_TARGET = "default payment next month"
# pandas 3 warns on every xlrd read (it nudges towards calamine); xlrd is the project's .xls reader.
pytestmark = pytest.mark.filterwarnings("ignore:The xlrd engine is deprecated")


# --------------------------------------------------------------------------- the served files


def csv_head() -> pd.DataFrame:
    """The first ROWS rows of the real Kaggle CSV, read by ingest's own reader."""
    return ingest.read_raw(real_file("taiwan_credit"), "csv", {"nrows": ROWS})


def uci_xls_bytes(df: pd.DataFrame) -> bytes:
    """A genuine .xls in the UCI layout: row 1 = '', X1..X23, Y; row 2 = the real names; then data."""
    names = [UCI_TARGET if c == "default.payment.next.month" else c for c in df.columns]
    assert len(names) == 25 and names[0] == "ID"
    book = xlwt.Workbook()
    sheet = book.add_sheet("Data")
    for col, label in enumerate([f"X{i}" for i in range(1, 24)] + ["Y"], start=1):
        sheet.write(0, col, label)  # A1 stays empty, as in the UCI file
    for col, name in enumerate(names):
        sheet.write(1, col, name)
    for r, row in enumerate(df.itertuples(index=False), start=2):
        for col, value in enumerate(row):
            sheet.write(r, col, float(value))
    buf = io.BytesIO()
    book.save(buf)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def csv_rows() -> pd.DataFrame:
    return csv_head()


@pytest.fixture(scope="module")
def uci_zip(csv_rows: pd.DataFrame) -> bytes:
    return zip_bytes({MEMBER: uci_xls_bytes(csv_rows)})


# --------------------------------------------------------------------------- the local server


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path in self.server.raw:  # hand-written bytes: a broken or lying server
            self.wfile.write(self.server.raw[self.path])
            self.close_connection = True
            return
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404, "File not found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)  # port 0: the OS picks a free port
        self.files: dict[str, bytes] = {}
        self.raw: dict[str, bytes] = {}
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def start(self) -> _Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's http_proxy must not route 127.0.0.1 through the proxy."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server().start()
    try:
        yield srv
    finally:
        srv.stop()


def spec_for(url: str, sha: str | None, member: str | None = MEMBER) -> DownloadSpec:
    """The profile's own download spec, pointed at the local server."""
    dl = make_settings("taiwan_credit", Path("/unused")).profile.source.download
    assert dl is not None
    return dl.model_copy(update={"url": url, "sha256": sha, "member": member})


def settings_with(tmp_path: Path, url: str, sha: str | None) -> Settings:
    settings = make_settings("taiwan_credit", tmp_path)
    src = settings.profile.source
    assert src.download is not None
    source = src.model_copy(update={"download": src.download.model_copy(update={"url": url, "sha256": sha})})
    return replace(settings, profile=settings.profile.model_copy(update={"source": source}))


# --------------------------------------------------------------------------- download + ingest


def test_download_then_ingest_reads_the_uci_xls(tmp_path, server, uci_zip, csv_rows):
    server.files["/350/uci.zip"] = uci_zip
    settings = settings_with(tmp_path, server.url("/350/uci.zip"), sha256(uci_zip))
    dl = settings.profile.source.download

    saved = ingest.download(dl, settings.external_dir, timeout=10)

    assert saved == settings.external_dir / MEMBER
    assert sorted(p.name for p in settings.external_dir.iterdir()) == [MEMBER]  # only the .xls: no CSV, no temp
    assert ingest.locate_raw_file(settings) == (saved, "xls", settings.profile.source.download.read_options)

    table = ingest.run(settings)

    written = pd.read_parquet(settings.raw_table)
    expected = ingest.ingest(csv_rows, settings.profile)  # the same rows through the CSV path
    assert list(written.columns) == settings.profile.expected_columns
    assert len(written) == ROWS
    pd.testing.assert_frame_equal(written, expected, check_dtype=False)
    pd.testing.assert_frame_equal(table, written)
    # Cells come back as numbers, not strings: validation keeps every row, exactly as for the CSV.
    via_xls, via_csv = validate(written, settings.profile), validate(expected, settings.profile)
    assert len(via_xls.rejected) == 0
    pd.testing.assert_frame_equal(via_xls.clean, via_csv.clean)


def test_csv_is_preferred_when_both_files_are_present(tmp_path, server, uci_zip):
    server.files["/uci.zip"] = uci_zip
    settings = settings_with(tmp_path, server.url("/uci.zip"), None)
    ingest.download(settings.profile.source.download, settings.external_dir, timeout=10)
    csv = settings.external_dir / settings.profile.source.file
    csv.write_text("ID\n1\n", encoding="utf-8")
    assert ingest.locate_raw_file(settings)[:2] == (csv, "csv")


def test_no_raw_file_names_both_candidates(tmp_path):
    settings = make_settings("taiwan_credit", tmp_path)
    with pytest.raises(PipelineError) as err:
        ingest.locate_raw_file(settings)
    assert "UCI_Credit_Card.csv" in str(err.value) and MEMBER in str(err.value)


# --------------------------------------------------------------------------- sha256


def test_wrong_sha256_fails_naming_both_digests_and_leaves_nothing(tmp_path, server, uci_zip):
    server.files["/uci.zip"] = uci_zip
    pinned = "0" * 64
    dest = tmp_path / "external"

    with pytest.raises(PipelineError) as err:
        ingest.download(spec_for(server.url("/uci.zip"), pinned), dest, timeout=10)

    message = str(err.value)
    assert sha256(uci_zip) in message and pinned in message
    assert list(dest.iterdir()) == []  # no .xls, no temp dir, no partial download


def test_wrong_sha256_keeps_a_previous_good_file(tmp_path, server, uci_zip):
    server.files["/uci.zip"] = uci_zip
    dest = tmp_path / "external"
    dest.mkdir()
    (dest / MEMBER).write_bytes(b"previous copy")
    with pytest.raises(PipelineError):
        ingest.download(spec_for(server.url("/uci.zip"), "f" * 64), dest, timeout=10)
    assert [p.name for p in dest.iterdir()] == [MEMBER]
    assert (dest / MEMBER).read_bytes() == b"previous copy"


def test_pinned_sha256_is_case_insensitive(tmp_path, server, uci_zip):
    server.files["/uci.zip"] = uci_zip
    saved = ingest.download(spec_for(server.url("/uci.zip"), sha256(uci_zip).upper()), tmp_path, timeout=10)
    assert saved.is_file()


def test_null_sha256_accepts_and_logs_the_digest(tmp_path, server, uci_zip, caplog):
    server.files["/uci.zip"] = uci_zip
    caplog.set_level(logging.INFO, logger=ingest.log.name)

    saved = ingest.download(spec_for(server.url("/uci.zip"), None), tmp_path, timeout=10)

    assert saved.read_bytes() == zipfile.ZipFile(io.BytesIO(uci_zip)).read(MEMBER)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and sha256(uci_zip) in warnings[0].getMessage()


def test_download_without_member_saves_the_file_itself(tmp_path, server):
    server.files["/plain.csv"] = b"ID\n1\n"
    spec = spec_for(server.url("/plain.csv"), sha256(b"ID\n1\n"), member=None).model_copy(update={"file": "plain.csv"})
    assert ingest.download(spec, tmp_path, timeout=10).read_bytes() == b"ID\n1\n"


# --------------------------------------------------------------------------- network failures


def test_404_fails_naming_the_url(tmp_path, server):
    url = server.url("/no/such.zip")
    with pytest.raises(PipelineError, match=re.escape(url)) as err:
        ingest.download(spec_for(url, None), tmp_path / "ext", timeout=10)
    assert "404" in str(err.value)
    assert list((tmp_path / "ext").iterdir()) == []


def test_connection_refused_fails_naming_the_url(tmp_path):
    stopped = _Server()  # bound, never served, then closed: its port now refuses connections
    url = stopped.url("/uci.zip")
    stopped.stop()
    with pytest.raises(PipelineError, match=re.escape(url)) as err:
        ingest.download(spec_for(url, None), tmp_path / "ext", timeout=10)
    assert "refused" in str(err.value).lower()
    assert list((tmp_path / "ext").iterdir()) == []


def test_transfer_cut_short_is_refused(tmp_path, server):
    server.raw["/short.zip"] = b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000
    url = server.url("/short.zip")
    with pytest.raises(PipelineError, match=r"cut short: got 1000 of 100000 bytes"):
        ingest.download(spec_for(url, None), tmp_path, timeout=10)
    assert list(tmp_path.iterdir()) == []


def test_reply_that_is_not_http_fails_cleanly(tmp_path, server):
    server.raw["/garbage"] = b"this is not http\r\n\r\n"
    url = server.url("/garbage")
    with pytest.raises(PipelineError, match=re.escape(url)) as err:
        ingest.download(spec_for(url, None), tmp_path, timeout=10)
    assert "\n" not in str(err.value)


def test_unparsable_url_fails_cleanly(tmp_path):
    with pytest.raises(PipelineError, match="not-a-url"):
        ingest.download(spec_for("not-a-url", None), tmp_path, timeout=10)


# --------------------------------------------------------------------------- bad archives and files


def test_zip_without_the_member_fails_naming_it(tmp_path, server):
    other = zip_bytes({"readme.txt": b"hello"})
    server.files["/other.zip"] = other
    with pytest.raises(PipelineError) as err:
        ingest.download(spec_for(server.url("/other.zip"), sha256(other)), tmp_path, timeout=10)
    assert MEMBER in str(err.value) and "readme.txt" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_body_that_is_not_a_zip_fails_naming_the_member(tmp_path, server):
    server.files["/page.zip"] = b"<html>maintenance</html>"
    with pytest.raises(PipelineError, match=re.escape(MEMBER)):
        ingest.download(spec_for(server.url("/page.zip"), None), tmp_path, timeout=10)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated", "bad_header"])
def test_corrupt_xls_is_a_pipeline_error(tmp_path, csv_rows, damage):
    good = uci_xls_bytes(csv_rows.head(20))
    path = tmp_path / MEMBER
    # xlrd fails these with IndexError and CompDocError, which pandas does not wrap
    path.write_bytes(good[: len(good) // 2] if damage == "truncated" else good[:8] + b"\0" * 600)
    with pytest.raises(PipelineError, match="cannot be read as xls"):
        ingest.read_raw(path, "xls", {"header": 1, "engine": "calamine"})


# --------------------------------------------------------------------------- the command line


def write_params(tmp_path: Path, url: str, sha: str | None) -> Path:
    params = load_params()
    params["dataset"] = "taiwan_credit"
    params["profiles"]["taiwan_credit"]["source"]["download"].update(url=url, sha256=sha)
    path = tmp_path / "params.yaml"  # paths in it (data/external, ...) are relative to tmp_path
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost", "LOG_LEVEL": "INFO"}
    return subprocess.run([sys.executable, "-m", "src.data.ingest", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_download_then_ingest(tmp_path, server, uci_zip):
    server.files["/uci.zip"] = uci_zip
    params = write_params(tmp_path, server.url("/uci.zip"), sha256(uci_zip))

    fetched = cli("--download", "--params", str(params))

    assert fetched.returncode == 0, fetched.stderr
    assert "sha256 verified" in fetched.stderr
    assert (tmp_path / "data/external/taiwan_credit" / MEMBER).is_file()

    ingested = cli("--params", str(params))

    assert ingested.returncode == 0, ingested.stderr
    assert "Traceback" not in ingested.stderr
    assert len(pd.read_parquet(tmp_path / "data/raw/taiwan_credit.parquet")) == ROWS


def test_cli_bad_sha256_exits_1_with_one_error_line(tmp_path, server, uci_zip):
    server.files["/uci.zip"] = uci_zip
    pinned = "ab" * 32
    params = write_params(tmp_path, server.url("/uci.zip"), pinned)

    result = cli("--download", "--params", str(params))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert sha256(uci_zip) in errors[0] and pinned in errors[0]
    assert list((tmp_path / "data/external/taiwan_credit").iterdir()) == []


def test_cli_connection_refused_exits_1_without_traceback(tmp_path):
    stopped = _Server()
    url = stopped.url("/uci.zip")
    stopped.stop()
    result = cli("--download", "--params", str(write_params(tmp_path, url, None)))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert url in result.stderr
