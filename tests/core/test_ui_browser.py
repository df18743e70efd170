"""The MLflow UI as a reader meets it: headless Chromium on a real ``mlflow server`` (issue 15).

A tiny store (one screen run named as train names it, a few test metrics, the note train writes)
is served by the same ``tracking_server`` helper as ``medfake server``, on SQLite. Chromium opens
the links ``tracking.ui_url`` builds: the runs table in the "Model training" layout (a bare
``#/experiments/<id>`` opens MLflow 3.17's GenAI overview), then the run page with its note.

Never skipped: a machine without Debian's ``chromium``/``chromium-driver`` fails here with the
install line (``.ci/run`` installs both). ``MEDFAKE_UI_SCREENSHOTS=1`` (``make ui-check``) writes
the screenshots to ``reports/ui/``; otherwise they go to the test's tmp folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from medfake.core import server, tracking
from medfake.core.config import load_config
from medfake.core.contract import CI_HIGH_SUFFIX, CI_LOW_SUFFIX, STAGE_SCREEN, metric_key
from medfake.training.run_note import log_run_note
from medfake.training.train import Plan

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPORTS_UI = Path(__file__).resolve().parents[2] / "reports" / "ui"
PAGE_WAIT_S = 90  # the React app's first paint on a loaded 2-core machine
RUN_NAME = "Xception-s42"
METRICS = {metric_key("test", "auc"): 0.912, metric_key("test", "auc") + CI_LOW_SUFFIX: 0.871,
           metric_key("test", "auc") + CI_HIGH_SUFFIX: 0.948, metric_key("test", "h"): 0.734,
           metric_key("test", "accuracy"): 0.844, metric_key("val", "auc"): 0.897}


class _Dataset:
    """What the note reads of a dataset: its digest and the split of each slice."""

    digest = "3f2a9c41d07b"
    manifest = pd.DataFrame({"split": ["train"] * 64 + ["val"] * 16 + ["test"] * 16})


@pytest.fixture
def served_run(tracking_store, tmp_path, monkeypatch):
    """``mlflow server`` on a SQLite store holding one finished screen run; yields (url, exp id, run id)."""
    import mlflow

    state = tmp_path / "server"
    state.mkdir()
    log = state / "mlflow-server.log"
    with server.tracking_server(state, port=server.free_port(), backend_store_uri=f"sqlite:///{state / 'mlflow.db'}",
                                workers=1, log_file=log) as running:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", running.tracking_uri)
        cfg = load_config("quickstart").replace(**{"model.backbone": "Xception"})
        plan = Plan(cfg=cfg, model="Xception", stage=STAGE_SCREEN, run_name=f"Xception-s{cfg.seed}")
        with tracking.run(cfg.experiment, plan.run_name, plan.stage) as active:
            mlflow.log_metrics(METRICS)
            run_id = active.info.run_id
        log_run_note(plan, _Dataset(), run_id)
        experiment_id = mlflow.get_run(run_id).info.experiment_id
        yield running.tracking_uri, experiment_id, run_id
    mlflow.set_tracking_uri(tracking_store)


@pytest.fixture
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} missing: `apt-get install -y chromium chromium-driver` "
                    "(.ci/run does it); the UI check is never skipped")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    # TMPDIR: Chromium's profile and singleton-socket folders go once the test ends (a short path:
    # a socket's path must fit in 108 bytes, which pytest's tmp_path does not)
    with tempfile.TemporaryDirectory(prefix="medfake-ui-") as scratch:
        service = Service(str(CHROMEDRIVER), env={**os.environ, "TMPDIR": scratch})
        driver = webdriver.Chrome(options=options, service=service)
        try:
            yield driver
        finally:
            driver.quit()


def _screenshot_dir(tmp_path: Path) -> Path:
    folder = REPORTS_UI if os.environ.get("MEDFAKE_UI_SCREENSHOTS") == "1" else tmp_path / "ui"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait_text(driver, text: str, what: str) -> None:
    """Wait until ``text`` is shown on the page (the app renders after its bundles load)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, PAGE_WAIT_S, poll_frequency=0.5).until(
            lambda d: text in d.find_element(By.TAG_NAME, "body").text)
    except TimeoutException:
        shown = driver.find_element(By.TAG_NAME, "body").text.replace("\n", " | ")[:600]
        pytest.fail(f"{what}: {text!r} not shown within {PAGE_WAIT_S} s at {driver.current_url}; page: {shown}")


def _visible(driver, xpath: str) -> bool:
    from selenium.webdriver.common.by import By

    return any(el.is_displayed() for el in driver.find_elements(By.XPATH, xpath))


def _close_assistant(driver) -> None:
    """MLflow 3.17 opens its assistant panel on a first visit; it hides the table's right-hand columns."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    close = "//button[@aria-label='Close']"
    try:
        WebDriverWait(driver, 10, poll_frequency=0.5).until(lambda d: _visible(d, close))
    except TimeoutException:
        return  # not opened this time: nothing covers the table
    next(el for el in driver.find_elements(By.XPATH, close) if el.is_displayed()).click()


def _add_metric_columns(driver, metrics: list[str]) -> None:
    """Tick ``metrics`` in the runs table's "Columns" menu, as a reader does."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, "//button[normalize-space()='Columns']").click()
    _wait_text(driver, "Metrics (", "the Columns menu")
    for metric in metrics:
        driver.find_element(By.XPATH, f"//*[@role='dialog']//*[normalize-space(text())='{metric}']").click()
    driver.find_element(By.TAG_NAME, "body").send_keys("\ue00c")  # Escape closes the menu


def _column_header(metric: str) -> str:
    return f"//*[@role='columnheader']//*[@data-testid='sort-header-{metric}']"


@pytest.mark.slow
def test_runs_table_and_run_page_in_chromium(served_run, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, experiment_id, run_id = served_run
    shots = _screenshot_dir(tmp_path)
    auc, h = metric_key("test", "auc"), metric_key("test", "h")

    # The link medfake prints: the runs table in the "Model training" layout, not the GenAI overview.
    url = tracking.ui_url(experiment_id)
    assert url.startswith(f"{base}/#/experiments/{experiment_id}/runs?")
    browser.get(url)
    _wait_text(browser, RUN_NAME, "runs page")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Run Name" in body and "1 matching run" in body, body[:600]
    for genai_only in ("Token Usage", "Tokens per Trace", "Observability"):
        assert genai_only not in body, f"GenAI layout at {browser.current_url}: {genai_only!r} shown"
    assert _visible(browser, f"//a[normalize-space()='{RUN_NAME}']"), "run name is not a visible link"
    _close_assistant(browser)
    _add_metric_columns(browser, [auc, h])
    WebDriverWait(browser, 20).until(lambda d: _visible(d, _column_header(auc)) and _visible(d, _column_header(h)))
    _wait_text(browser, f"{METRICS[auc]}", "the test_auc column's value")
    browser.save_screenshot(str(shots / "runs.png"))

    # A bare experiment link is what MLflow 3.17 opens on its GenAI overview (why ui_url adds the query).
    bare = f"{base}/#/experiments/{experiment_id}"
    assert bare not in (url, tracking.ui_url(experiment_id, run_id))
    browser.get(bare)
    _wait_text(browser, "Token Usage", "bare experiment link (GenAI overview expected)")

    # The run page: its name, the note train writes, the metrics.
    browser.get(tracking.ui_url(experiment_id, run_id))
    _wait_text(browser, "Description", "run page")
    browser.find_element(By.XPATH, "//*[normalize-space(text())='Show more']").click()  # the whole note
    _wait_text(browser, "Next: plots/", "the note's last line")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert RUN_NAME in body
    assert "seed 42, experiment medfake-quickstart" in body, body[:800]
    assert "digest 3f2a9c41d07b" in body and "auc 0.912 (95% CI 0.871–0.948)" in body, body[:800]
    assert auc in body and h in body
    assert "Observability" not in body, f"GenAI layout at {browser.current_url}"
    browser.save_screenshot(str(shots / "run.png"))
    assert (shots / "runs.png").stat().st_size > 10_000 and (shots / "run.png").stat().st_size > 10_000
