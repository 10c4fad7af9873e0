"""A real headless Chromium uses the web pages over real HTTP: the loan officer signs in, scores, reads the
result and fixes a mistake; a reviewer signs in and looks up a decision made through the API.

The Flask test client never runs a browser's form submission, its CSRF cookie
round trip, or the CSS; this test does, and leaves desktop and phone
screenshots in tmp_path/reports for a person to look at.
"""

from __future__ import annotations

import base64
import re
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import requests
from flask import Flask
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from flask_api.forms import fmt_number
from src.auth.store import create_key, set_user
from src.batch.__main__ import main as batch_main
from src.config import load_settings
from src.data import ingest, split, validate
from tests.conftest import TrainedProject, make_settings, real_file
from tests.unit.test_access import build
from tests.unit.test_batch import cli_params
from tests.unit.test_monitoring_page import monitored_fixture  # noqa: F401  (registers "monitored")

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PASSWORD = "browser test passphrase"
DESKTOP = (1280, 900, 1, False)  # width, height, device pixel ratio, mobile
PHONE = (390, 844, 2, True)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _browser_missing() -> bool:
    return not (CHROMIUM.exists() and CHROMEDRIVER.exists())


pytestmark = [
    pytest.mark.integration,
    # Checked before the (slow) trained model is built; CI installs both packages.
    pytest.mark.skipif(_browser_missing(), reason=f"{CHROMIUM} or {CHROMEDRIVER} not found: "
                       "apt-get install -y chromium chromium-driver to run the browser test"),
]


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """``app`` on a real threaded HTTP server on 127.0.0.1 (port chosen by the OS), stopped on exit."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    with serving(app) as url:
        yield url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with a throw-away profile and nothing that phones home."""
    if _browser_missing():
        pytest.skip("apt-get install -y chromium chromium-driver to run the browser test")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-quic", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def set_viewport(driver: WebDriver, width: int, height: int, ratio: int, mobile: bool) -> None:
    """Exact CSS viewport (window sizes include browser chrome; this does not), phone-style when mobile."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": ratio, "mobile": mobile})


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 2000, f"{path} is not a real PNG"
    return struct.unpack(">II", data[16:24])


def capture(driver: WebDriver, path: Path, viewport: tuple[int, int, int, bool]) -> None:
    """Save the viewport as ``path`` and the whole page as ``<name>-full.png``; check both are real PNGs."""
    width, height, ratio, _ = viewport
    driver.save_screenshot(str(path))
    assert png_size(path) == (width * ratio, height * ratio)
    content = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": content["width"], "height": content["height"], "scale": 1}})
    full = path.with_name(f"{path.stem}-full.png")
    full.write_bytes(base64.b64decode(shot["data"]))
    png_size(full)


def no_sideways_scroll(driver: WebDriver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_officer_scores_an_applicant_then_fixes_an_invalid_value(browser: WebDriver, live_server: str, app: Flask,
                                                               tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    svc = app.extensions["credit_service"]
    model = svc.model()
    wait = WebDriverWait(browser, 30)

    # Signing in first: a user in the service's credentials file makes every page need one.
    source = app.extensions["credit_credentials"]
    set_user(source.path, "officer", PASSWORD, "score")
    set_viewport(browser, *DESKTOP)
    wait.until(lambda _: browser.get(f"{live_server}/") or "/login" in browser.current_url)  # seen within 1 s
    assert "Sign in" in browser.title
    capture(browser, reports / "desktop-sign-in.png", DESKTOP)
    browser.find_element(By.ID, "username").send_keys("officer")
    browser.find_element(By.ID, "password").send_keys("not the password")
    browser.find_element(By.CSS_SELECTOR, "form.signin-form button[type=submit]").click()
    # (the click may return before the answer's page has loaded, on a loaded machine: wait for it)
    assert "do not match" in wait.until(ec.visibility_of_element_located((By.CLASS_NAME, "error-summary"))).text
    browser.find_element(By.ID, "username").clear()
    browser.find_element(By.ID, "username").send_keys("officer")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form.signin-form button[type=submit]").click()

    # The form, pre-filled with the typical applicant.
    wait.until(lambda d: d.current_url.rstrip("/") == live_server)
    assert "Score a loan applicant" in browser.title
    assert model.name in browser.page_source and f"version {model.version}" in \
        browser.find_element(By.CLASS_NAME, "model-line").text
    limit = browser.find_element(By.ID, "limit_bal")
    assert limit.get_attribute("value") == fmt_number(model.meta["feature_summary"]["limit_bal"]["default"])
    assert browser.find_element(By.CSS_SELECTOR, "label[for=limit_bal]").text.strip() == "Credit limit"
    assert not browser.find_elements(By.ID, "age") and not browser.find_elements(By.ID, "sex")  # protected
    capture(browser, reports / "desktop-form.png", DESKTOP)

    # Submit the defaults: a valid applicant is scored, logged and explained.
    browser.find_element(By.ID, "score-button").click()
    probability = wait.until(ec.visibility_of_element_located((By.ID, "probability"))).text
    assert re.fullmatch(r"\d{1,3}\.\d%", probability), probability
    decision = browser.find_element(By.ID, "decision").text
    assert decision in {"Approve", "Refer", "Decline"}
    assert "threshold" in browser.find_element(By.ID, "decision-words").text
    reasons = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "li.reason")]
    assert reasons and all(":" in r for r in reasons), reasons
    assert f"version {model.version}" in browser.find_element(By.ID, "model-line").text
    assert svc.predlog.count() == 1
    capture(browser, reports / "desktop-result.png", DESKTOP)

    # Back to the form with the answers kept; an impossible repayment status is refused beside the field.
    browser.find_element(By.ID, "edit-button").click()
    status = wait.until(ec.presence_of_element_located((By.ID, "pay_0")))
    assert status.get_attribute("value") == fmt_number(model.meta["feature_summary"]["pay_0"]["default"])
    status.clear()
    status.send_keys("15")
    browser.find_element(By.ID, "score-button").click()
    error = wait.until(ec.visibility_of_element_located((By.ID, "pay_0-error")))
    assert "Repayment status, September must be at most 9 months late" in error.text
    status = browser.find_element(By.ID, "pay_0")
    assert status.get_attribute("value") == "15"
    assert "pay_0-error" in (status.get_attribute("aria-describedby") or "").split()
    assert error.find_element(By.XPATH, "..").get_attribute("id") == "pay_0-field"
    gap = status.rect["y"] - (error.rect["y"] + error.rect["height"])
    assert 0 <= gap < 60 and abs(status.rect["x"] - error.rect["x"]) < 5, "error is not right by its input"
    assert svc.predlog.count() == 1
    capture(browser, reports / "desktop-form-error.png", DESKTOP)

    # The same on a phone: one column, nothing wider than the screen.
    set_viewport(browser, *PHONE)
    browser.get(f"{live_server}/")
    assert no_sideways_scroll(browser)
    capture(browser, reports / "phone-form.png", PHONE)
    browser.find_element(By.ID, "score-button").click()
    wait.until(ec.visibility_of_element_located((By.ID, "probability")))
    assert no_sideways_scroll(browser)
    assert svc.predlog.count() == 2
    capture(browser, reports / "phone-result.png", PHONE)

    shots = sorted(p.name for p in reports.glob("*.png"))
    assert len(shots) == 12, shots  # five views and the sign-in, each viewport and whole page


def test_reviewer_looks_up_a_decision_made_through_the_api(browser: WebDriver, live_server: str, app: Flask,
                                                           tmp_path: Path) -> None:
    """A reviewer signs in, types the reference the API returned, and reads the decision as it was given."""
    reports = tmp_path / "reports"
    reports.mkdir()
    svc = app.extensions["credit_service"]
    source = app.extensions["credit_credentials"]
    key, _ = create_key(source.path, "origination", "score")
    set_user(source.path, "reviewer", PASSWORD, "review")
    applicant = {**{k: v["default"] for k, v in svc.model().meta["feature_summary"].items()}, "pay_0": 8, "pay_2": 7}
    wait = WebDriverWait(browser, 30)
    answer = wait.until(lambda _: (r := requests.post(f"{live_server}/api/v1/predict", json={"applicants": [applicant]},
                                                      headers={"X-API-Key": key}, timeout=30)).ok and r.json())
    given = answer["results"][0]
    assert given["adverse_action"], given  # a decline or referral: reasons are owed
    assert svc.predlog.flush(10)

    set_viewport(browser, *DESKTOP)
    browser.get(f"{live_server}/decisions")
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "username").send_keys("reviewer")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form.signin-form button[type=submit]").click()
    box = wait.until(ec.visibility_of_element_located((By.ID, "reference")))
    capture(browser, reports / "desktop-lookup.png", DESKTOP)
    box.send_keys(answer["request_id"])
    browser.find_element(By.CSS_SELECTOR, "form.lookup-form button[type=submit]").click()
    title = wait.until(ec.visibility_of_element_located((By.ID, "record-title")))
    assert answer["request_id"] in title.text
    assert browser.find_element(By.ID, "record-source").text == "the API"
    assert browser.find_element(By.ID, "record-requested-by").text == f"key:{key.split('_')[1]}"
    record = browser.find_element(By.ID, "applicant-0").text
    assert f"{given['probability_of_default'] * 100:.1f}%" in record and given["decision"].capitalize() in record
    reasons = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#applicant-0 li.adverse-reason")]
    assert reasons == [f"{a['code']} {a['reason']}: {a['value']}" for a in given["adverse_action"]]
    capture(browser, reports / "desktop-decision.png", DESKTOP)

    set_viewport(browser, *PHONE)
    browser.get(f"{live_server}/decisions?reference=01234567-89ab-7cde-8f01-23456789abcd")
    assert "No decision with this reference" in browser.find_element(By.ID, "lookup-error").text
    browser.get(f"{live_server}/decisions?reference={answer['request_id']}")
    assert no_sideways_scroll(browser)
    capture(browser, reports / "phone-decision.png", PHONE)
    assert len(list(reports.glob("*.png"))) == 6


def full_test_split(tmp_path: Path) -> pd.DataFrame:
    """The real taiwan_credit test split (about 4,500 rows): ingest, validate and split of the whole public file."""
    root = tmp_path / "full"
    source = real_file("taiwan_credit")
    external = root / "data" / "external" / "taiwan_credit"
    external.mkdir(parents=True)
    (external / source.name).symlink_to(source)
    settings = make_settings("taiwan_credit", root)
    for stage in (ingest, validate, split):
        stage.run(settings)
    return pd.read_parquet(settings.split_table("test"))


def downloaded(folder: Path, name: str, timeout: float = 30) -> Path:
    """Chromium's finished download (no .crdownload left) of ``name`` in ``folder``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = folder / name
        if path.exists() and not list(folder.glob("*.crdownload")):
            return path
        time.sleep(0.1)
    raise AssertionError(f"{name} not downloaded: {sorted(p.name for p in folder.iterdir())}")


def test_analyst_scores_a_file_and_downloads_what_the_batch_cli_writes(browser: WebDriver, live_server: str,
                                                                      app: Flask, trained_project: TrainedProject,
                                                                      tmp_path: Path) -> None:
    """An analyst signs in, uploads a broken file (one message), then the real ~4,500-row test split with raw
    column names; the counts show, and the downloaded scored file is the batch CLI's for the same input."""
    reports, downloads = tmp_path / "reports", tmp_path / "downloads"
    reports.mkdir()
    downloads.mkdir()
    test = full_test_split(tmp_path)
    assert 4400 <= len(test) <= 4600  # 15 % of the 30,000 rows, less what the validate stage rejects
    raw_names = {name: raw for raw, name in trained_project.settings.profile.rename.items()}
    upload = tmp_path / "applicants.csv"
    test.drop(columns=["default"]).rename(columns=raw_names).to_csv(upload, index=False)
    broken = tmp_path / "broken.csv"
    broken.write_text("ID,LIMIT_BAL\n1,20000\n", encoding="utf-8")
    set_user(app.extensions["credit_credentials"].path, "analyst", PASSWORD, "score")
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    wait = WebDriverWait(browser, 60)

    set_viewport(browser, *DESKTOP)
    sign_in_to(browser, f"{live_server}/batch", "analyst")
    wait.until(ec.visibility_of_element_located((By.ID, "file"))).send_keys(str(broken))
    capture(browser, reports / "desktop-upload.png", DESKTOP)
    browser.find_element(By.CSS_SELECTOR, "form.upload-form button[type=submit]").click()
    error = wait.until(ec.visibility_of_element_located((By.ID, "upload-error"))).text
    assert error.startswith("broken.csv: missing required column(s)") and "PAY_0" in error, error

    browser.find_element(By.ID, "file").send_keys(str(upload))
    browser.find_element(By.CSS_SELECTOR, "form.upload-form button[type=submit]").click()
    wait.until(ec.visibility_of_element_located((By.ID, "job-done")))  # the page refreshed itself until done
    counts = {name: int(browser.find_element(By.ID, f"count-{name}").text.replace(",", ""))
              for name in ("rows", "scored", "rejected", "approve", "refer", "decline")}
    assert counts["rows"] == len(test) == counts["scored"] + counts["rejected"]
    capture(browser, reports / "desktop-upload-done.png", DESKTOP)
    browser.find_element(By.ID, "download-scored-parquet").click()
    scored = pd.read_parquet(downloaded(downloads, "applicants.scored.parquet"))
    browser.find_element(By.ID, "download-scored-csv").click()
    as_csv = pd.read_csv(downloaded(downloads, "applicants.scored.csv"))

    cli = tmp_path / "cli" / "scored.parquet"
    batch_main([str(upload), "--output", str(cli), "--model-uri", str(trained_project.model_dir),
                "--params", str(cli_params(tmp_path))])
    expected = pd.read_parquet(cli)
    pd.testing.assert_frame_equal(scored.drop(columns=["scored_at"]), expected.drop(columns=["scored_at"]))
    assert as_csv["id"].tolist() == expected["id"].tolist()
    assert as_csv["decision"].tolist() == expected["decision"].tolist()
    assert {d: counts[d] for d in ("approve", "refer", "decline")} == \
        {d: int((expected["decision"] == d).sum()) for d in ("approve", "refer", "decline")}

    set_viewport(browser, *PHONE)
    browser.refresh()
    wait.until(ec.visibility_of_element_located((By.ID, "job-done")))
    assert no_sideways_scroll(browser)
    capture(browser, reports / "phone-upload-done.png", PHONE)
    browser.get(f"{live_server}/batch")
    assert no_sideways_scroll(browser) and "applicants.csv" in browser.find_element(By.ID, "jobs").text
    capture(browser, reports / "phone-upload.png", PHONE)
    assert len(list(reports.glob("*.png"))) == 8


def charts_drawn(driver: WebDriver) -> list[str]:
    """Ids of the charts on the page whose SVG was drawn with marks, and whose table has rows."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('[data-chart]')).filter(function (el) {
          var svg = el.querySelector('svg');
          var marks = svg ? svg.querySelectorAll('path, rect, line, circle, text').length : 0;
          var rows = document.querySelectorAll('#' + el.dataset.chart + '-table tbody tr').length;
          var wide = svg && svg.getBoundingClientRect().width > 100;
          return el.dataset.rendered === 'true' && wide && marks > 5 && rows > 0;
        }).map(function (el) { return el.dataset.chart; });""")


def sign_in_to(browser: WebDriver, page: str, user: str) -> None:
    """Open ``page``, which sends a signed-out browser to the sign-in form, and sign in as ``user``."""
    browser.get(page)
    browser.find_element(By.ID, "username").send_keys(user)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form.signin-form button[type=submit]").click()


def charts_on_desktop_and_phone(browser: WebDriver, wait: WebDriverWait, expected: list[str], reports: Path,
                                name: str) -> None:
    """Every expected chart drawn beside its table, on the desktop (as open) and again on a phone."""
    wait.until(lambda d: charts_drawn(d) == expected)
    capture(browser, reports / f"desktop-{name}.png", DESKTOP)
    set_viewport(browser, *PHONE)
    browser.refresh()
    wait.until(lambda d: charts_drawn(d) == expected)
    assert no_sideways_scroll(browser)
    capture(browser, reports / f"phone-{name}.png", PHONE)


def test_validator_sees_every_chart_of_the_model(browser: WebDriver, live_server: str, app: Flask,
                                                 tmp_path: Path) -> None:
    """A reviewer opens the model page: every chart (curves, confusion, importance, each protected attribute's
    approval and error rates) is drawn as a non-empty SVG beside its table, on a desktop and on a phone."""
    reports = tmp_path / "reports"
    reports.mkdir()
    set_user(app.extensions["credit_credentials"].path, "validator", PASSWORD, "review")
    served = app.extensions["credit_service"].model()
    wait = WebDriverWait(browser, 60)
    set_viewport(browser, *DESKTOP)
    sign_in_to(browser, f"{live_server}/model", "validator")
    title = wait.until(ec.visibility_of_element_located((By.ID, "model-title")))
    assert title.text == f"{served.name}, version {served.version}"
    expected = ["roc", "precision-recall", "calibration", "confusion", "importance",
                *(f"{kind}-{a}" for a in ("sex", "marriage", "age") for kind in ("approval", "errors"))]
    on_page = browser.execute_script("return Array.from(document.querySelectorAll('[data-chart]'))"
                                      ".map(function (el) { return el.dataset.chart; })")
    assert on_page == expected
    assert browser.find_element(By.ID, "verdict-floors").text in {"passed", "warned"}
    charts_on_desktop_and_phone(browser, wait, expected, reports, "model")
    assert len(list(reports.glob("*.png"))) == 4


def test_operator_sees_drift_performance_and_traffic_drawn(browser: WebDriver, trained_project: TrainedProject,
                                                           monitored: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator opens the monitoring page over what `python -m src.monitoring drift | performance` wrote for the
    real test split: PSI per input, the score distribution, ROC-AUC by period, default rate per band and the
    service's own traffic, each a drawn SVG beside its table, on a desktop and on a phone."""
    reports = tmp_path / "reports"
    reports.mkdir()
    set_user(tmp_path / "credentials.json", "operator", PASSWORD, "metrics")
    app = build(trained_project, tmp_path, monkeypatch, load_settings(monitored / "params.yaml"))
    expected = ["psi", "score-distribution", "auc-by-period", "default-rate-by-band", "traffic"]
    wait = WebDriverWait(browser, 60)
    try:
        with serving(app) as url:
            set_viewport(browser, *DESKTOP)
            sign_in_to(browser, f"{url}/monitoring", "operator")
            assert wait.until(ec.visibility_of_element_located((By.ID, "drift-flag"))).text.endswith(".")
            charts_on_desktop_and_phone(browser, wait, expected, reports, "monitoring")
    finally:
        app.extensions["credit_service"].predlog.dispose()
    assert len(list(reports.glob("*.png"))) == 4
