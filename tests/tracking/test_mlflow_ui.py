"""The MLflow UI in a real browser (Debian's chromium, headless, a fresh profile) on the server `fruitlab ui` starts,
over a store holding two fruitlab fits of the same experiment and seed: the link it prints opens model-training mode
and it stays there on an experiment's own address (no URL parameter); two run names; curves against epochs.

Screenshots go to the test's tmp dir; with FRUITLAB_SCREENSHOTS=/some/dir they are copied there too (docs/ holds
three of them).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from fruitlab.config import load_experiment
from fruitlab.training.fit import fit
from tests.browser import chromium, keep, wait
from tests.conftest import SMOKE_EXPERIMENT, write_experiment

LOAD_S = 180  # the UI's first page load on a busy 2-core machine
# Two epochs in the first phase, one in the second: three points per curve.
EXPERIMENT = SMOKE_EXPERIMENT.replace("{name: head, epochs: 1", "{name: head, epochs: 2")
GENAI_ONLY = ("Judges", "Evaluation runs", "Prompts & versions")  # the GenAI mode's sidebar


@pytest.fixture(scope="module")
def two_fits(tmp_path_factory, fruit_data_dir):
    work = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        exp = load_experiment(str(write_experiment(work / "tiny.yaml", EXPERIMENT)))
        results = [fit(exp, data_dir=str(fruit_data_dir)) for _ in range(2)]  # the same seed twice
    client = MlflowClient(uri)
    experiment_id = client.get_run(results[0].run_id).info.experiment_id
    return uri, work, experiment_id, [client.get_run(r.run_id) for r in results]


@contextmanager
def fruitlab_ui(uri: str, cwd: Path) -> Iterator[str]:
    """`fruitlab ui` on a free port of 127.0.0.1: the link it prints."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    cmd = [str(Path(sys.executable).parent / "fruitlab"), "ui", "--tracking-uri", uri, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    link = proc.stdout.readline().split("open ", 1)[1].split()[0]  # "MLflow UI for ...: open <link>  (Ctrl+C ...)"
    assert link == f"http://127.0.0.1:{port}/fruitlab", link
    try:
        deadline = time.monotonic() + 300  # minutes on a loaded 2-core machine
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "fruitlab ui did not start"
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        yield link
    finally:
        proc.terminate()
        proc.wait(30)


def page_text(driver) -> str:
    return driver.execute_script("return document.body.innerText")


def genai_words(driver) -> list[str]:
    return [word for word in GENAI_ONLY if word in page_text(driver)]


@pytest.mark.slow
def test_mlflow_ui_shows_model_training_two_run_names_and_epoch_curves(two_fits, tmp_path):
    from selenium.webdriver.common.by import By

    uri, work, experiment_id, fit_runs = two_fits
    names = [r.info.run_name for r in fit_runs]
    assert len(set(names)) == 2 and all(n.startswith("tiny-") for n in names)  # same seed, distinct names
    with fruitlab_ui(uri, work) as link, chromium(1400, 900) as driver:
        base = link.removesuffix("/fruitlab")
        # The link `fruitlab ui` prints: the experiment list in model-training mode.
        driver.get(link)
        wait(driver, lambda d: d.find_elements(By.LINK_TEXT, "tiny") and not genai_words(d), LOAD_S)

        # The page stored the mode in the browser: the experiment's own address, without any workflowType (a
        # bookmark, a link from a colleague, the address bar), opens in model-training mode too. Both fits by name,
        # the model-training sidebar (Runs, Models), no GenAI pages.
        stored = driver.execute_script("return window.localStorage.getItem('mlflow.workflowType_v1')")
        assert stored == '"machine_learning"', stored
        driver.get(f"{base}/#/experiments/{experiment_id}/runs")
        wait(driver, lambda d: all(d.find_elements(By.LINK_TEXT, n) for n in names), LOAD_S)
        # the Datasets column (the dataset input) fills in after the names
        wait(driver, lambda d: "fruits_fresh_rotten (dli)" in page_text(d), LOAD_S)
        text = page_text(driver)
        assert "Model training" in text and "Runs" in text and "Models" in text
        assert genai_words(driver) == [] and "Ask questions about your" not in text  # no assistant pane opened
        driver.save_screenshot(str(tmp_path / "mlflow-runs.png"))
        with chromium(1400, 900) as fresh:  # control: a browser that never opened the link gets MLflow's GenAI mode
            fresh.get(f"{base}/#/experiments/{experiment_id}/runs")
            wait(fresh, genai_words, LOAD_S)

        # A run's curves: x is the epoch (1, 2, 3), not Lightning's global step (5, 10, 15 here).
        run_id = fit_runs[0].info.run_id
        driver.get(f"{base}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics")
        search = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "input[placeholder*='Search metric']"), LOAD_S)
        # Sections sort by name: the curves (lr, train, val) come before the best checkpoint's one-point scores.
        wait(driver, lambda d: "val_best/class" in page_text(d), LOAD_S)
        text = page_text(driver)
        assert text.index("train/class") < text.index("val/class") < text.index("val_best/class"), text[:2000]
        wait(driver, lambda d: _x_ticks(d), LOAD_S)  # the first charts are drawn
        driver.save_screenshot(str(tmp_path / "mlflow-metrics.png"))
        search.send_keys("loss")
        ticks = wait(driver, lambda d: _x_ticks(d), LOAD_S)
        assert set(ticks) <= {"1", "1.5", "2", "2.5", "3"} and {"1", "3"} <= set(ticks), ticks
        driver.save_screenshot(str(tmp_path / "mlflow-curves.png"))

        # The run's overview: its description (the recipe as it ran, the split, the fingerprint, the scores).
        driver.get(f"{base}/#/experiments/{experiment_id}/runs/{run_id}")
        wait(driver, lambda d: "score of the best checkpoint" in page_text(d), LOAD_S)
        text = page_text(driver)
        assert fit_runs[0].data.tags["fruitlab.dataset_fingerprint"] in text and "epochs run" in text
        note = driver.find_element(By.XPATH, "//*[contains(text(), 'score of the best checkpoint')]")
        driver.execute_script("arguments[0].scrollIntoView({block: 'end'})", note)
        driver.save_screenshot(str(tmp_path / "mlflow-overview.png"))
    for shot in ("mlflow-runs.png", "mlflow-metrics.png", "mlflow-curves.png", "mlflow-overview.png"):
        keep(tmp_path / shot)


def _x_ticks(driver) -> list[str] | None:
    """The x-axis tick labels of the line charts shown (plotly draws them as SVG text), once they are drawn."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        ticks = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "g.xtick text") if e.text]
    except StaleElementReferenceException:  # the chart re-rendered between finding and reading: ask again
        return None
    return ticks or None
