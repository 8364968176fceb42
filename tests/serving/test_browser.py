"""A real browser (Debian's chromium, headless) on the upload page and the dashboard, with the internet cut off.

Screenshots go to the test's tmp dir; with FRUITLAB_SCREENSHOTS=/some/dir they are copied there too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from fruitlab.serving.app import create_app
from tests.browser import chromium, keep, wait
from tests.serving.conftest import ADMIN, ADMIN_TOKEN, FRUITS, live_server, settings_for


def severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def full_page(driver, path: Path) -> None:
    """A screenshot of the whole page: the window as tall as the document."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(1000, height + 140))  # + the browser's own frame
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)


@pytest.mark.slow
def test_upload_a_photo_and_see_the_dashboard(registry, fruit_photos, tmp_path):
    from selenium.webdriver.common.by import By

    app = create_app(settings_for(registry, f"sqlite:///{tmp_path / 'log.db'}"))
    with live_server(app) as url, chromium() as driver:
        driver.get(f"{url}/")
        wait(driver, lambda d: "fruits v1" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "tag").send_keys("browser")
        photo = fruit_photos[0]
        driver.find_element(By.ID, "files").send_keys(str(photo))  # choosing a file starts the prediction
        card = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, ".card.done"))
        shown = card.find_element(By.CSS_SELECTOR, ".label").text
        (row,) = requests.get(f"{url}/predictions", params={"tag": "browser"}, headers=ADMIN, timeout=10).json()[
            "items"
        ]
        assert shown == row["label"] and shown in FRUITS  # the label the server logged for this photo
        bars = card.find_elements(By.CSS_SELECTOR, ".prob")
        assert len(bars) == 3 and bars[0].text.startswith(shown)
        assert card.find_element(By.CSS_SELECTOR, "img").get_attribute("naturalWidth") != "0"
        assert "classified by fruits v1" in driver.find_element(By.ID, "status").text

        several = fruit_photos[1::2][:6]  # one photo of each class
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in several))
        wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.done")) == len(several))
        names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".card .name")]
        assert names == [p.name for p in several]
        full_page(driver, tmp_path / "upload.png")
        assert severe(driver) == []

        driver.get(f"{url}/dashboard")
        total = 1 + len(several)
        asked = "could not load: this route needs the admin token"
        wait(driver, lambda d: asked in d.find_element(By.ID, "updated").text)
        refused = severe(driver)  # the browser logs the two 401s of the log routes; nothing else failed
        assert refused and all("/predictions" in e and "status of 401" in e for e in refused), refused
        driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN + "\n")  # typed once, kept for the tab
        wait(driver, lambda d: d.find_element(By.ID, "kpi-total").text == str(total))
        for chart in ("chart-time", "chart-class", "chart-version"):
            wait(driver, lambda d, c=chart: d.find_elements(By.CSS_SELECTOR, f"#{c} .main-svg"))
        bars = driver.find_elements(By.CSS_SELECTOR, "#chart-class .bars .point")
        classes = requests.get(f"{url}/predictions/stats", headers=ADMIN, timeout=10).json()["by_label"]
        assert len(bars) == len(classes) >= 1
        assert "fruits v1" in driver.find_element(By.ID, "kpi-model").text
        assert len(driver.find_elements(By.CSS_SELECTOR, "#latest tbody tr")) == total
        full_page(driver, tmp_path / "dashboard.png")
        assert severe(driver) == []
    for name in ("upload.png", "dashboard.png"):
        assert (tmp_path / name).stat().st_size > 20_000
        keep(tmp_path / name)
