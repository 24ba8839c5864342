"""Issue 27's page: `pomona local up`'s classify port opened in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium). A sample photo picked in the page shows the classify handler's answer; a
text file named .jpg shows the handler's refusal and its reason."""

from __future__ import annotations

import base64
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest

from pomona.bench.classify import write_model
from pomona.core.settings import Settings

WAIT_S = 60
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# Marked, not skipped in the fixture: session fixtures (moto, the model cache) would be set up first for nothing.
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver on PATH (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def endpoint(
    deployment: Settings,
    random_model: Callable[[Settings], Settings],
    sample_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """A classifier of five sample labels committed in a deployment's bucket (random weights, trained on synthetic
    fruit), and the classify handler behind the local Function URL `pomona local up` serves."""
    from pomona.local.up import classify_endpoint

    settings = random_model(deployment)
    labels = sorted(p.name for p in sample_dir.iterdir() if p.is_dir())[:5]
    root = write_model(tmp_path / "bucket", settings, labels=labels)
    s3 = boto3.client("s3", endpoint_url=deployment.endpoint_url)
    for path in root.rglob("*"):
        if path.is_file():
            s3.put_object(
                Bucket=deployment.bucket, Key=path.relative_to(root).as_posix(), Body=path.read_bytes()
            )
    for var, value in {**settings.to_env(), "POWERTOOLS_METRICS_DISABLED": "true"}.items():
        monkeypatch.setenv(var, value)
    server = classify_endpoint(port=0)
    yield server.url  # pytest runs the rest whether or not the test passed
    server.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium through the system chromedriver (no Selenium Manager, no download)."""
    from selenium import webdriver

    assert CHROMIUM is not None
    assert CHROMEDRIVER is not None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _post(url: str, body: bytes, file: str) -> tuple[int, dict[str, Any]]:
    """The app's call, for the answer the page must show."""
    request = urllib.request.Request(f"{url}?{urlencode({'file': file})}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# A file dropped on the page, as a person drags it from their desktop (WebDriver cannot drag from outside the page).
_DROP = """
const [name, b64] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const files = new DataTransfer();
files.items.add(new File([bytes], name, {type: "image/jpeg"}));
document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true}));
"""


def _shown(driver: Any, path: Path, state: Callable[[str], bool], *, dropped: bool = False) -> dict[str, Any]:
    """Pick (or drop) `path` in the page; what the answer box shows once its state satisfies `state`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    if dropped:
        driver.execute_script(_DROP, path.name, base64.b64encode(path.read_bytes()).decode())
    else:
        driver.find_element(By.ID, "photo").send_keys(str(path.resolve()))  # chromedriver wants it absolute
    answer = driver.find_element(By.ID, "answer")
    WebDriverWait(driver, WAIT_S).until(
        lambda _: answer.is_displayed() and state(answer.get_attribute("data-state"))
    )
    text = {name: driver.find_element(By.ID, name).text for name in ("verdict", "confidence", "reason")}
    top = [item.get_attribute("data-label") for item in driver.find_elements(By.CSS_SELECTOR, "#top li")]
    return {"state": answer.get_attribute("data-state"), "top": top, **text}


@needs_chromium
def test_a_photo_picked_or_dropped_in_the_page_shows_the_handlers_answer_and_a_non_image_its_refusal(
    browser: Any, endpoint: str, sample_dir: Path, tmp_path: Path
) -> None:
    # GIVEN the page at the classify port's `/`, and what the handler answers the app for a sample photo
    browser.get(endpoint)
    assert browser.title == "Pomona: what fruit is this?"
    photo = min(sample_dir.glob("*/*.jpg"))
    status, expected = _post(endpoint, photo.read_bytes(), photo.name)
    assert status == 200

    # WHEN a person picks that photo
    shown = _shown(browser, photo, lambda state: state in {"answered", "not-sure", "unfamiliar"})

    # THEN the page shows the handler's answer as the app would: the label (or which "not sure"), its confidence
    # and the top three
    verdict = expected["label"] if expected["answered"] else None
    if expected["reason"] == "unfamiliar":
        verdict = "Not something I know"
    assert shown["verdict"] == (verdict or "Not sure which")
    assert shown["confidence"] == f"confidence {expected['confidence'] * 100:.1f} %"
    assert shown["top"] == [label for label, _ in expected["top"]]
    assert len(shown["top"]) == 3

    # WHEN a text file named .jpg is picked
    fake = tmp_path / "notes.jpg"
    fake.write_bytes(b"a shopping list, not a photo: apples, pears, lemons\n")
    status, refused = _post(endpoint, fake.read_bytes(), fake.name)
    assert status == 400
    shown = _shown(browser, fake, lambda state: state == "rejected")

    # THEN it shows the handler's refusal: ingestion's reason and its detail, no answer
    assert shown["verdict"] == "Not a photo I can use"
    assert shown["reason"] == f"{refused['reason']}: {refused['detail']}"
    assert refused["reason"] == "not_an_image"
    assert (shown["confidence"], shown["top"]) == ("", [])

    # WHEN the photo is dropped on the page instead, THEN the same answer is shown again
    again = _shown(browser, photo, lambda state: state != "rejected", dropped=True)
    assert (again["verdict"], again["top"]) == (
        verdict or "Not sure which",
        [label for label, _ in expected["top"]],
    )


def test_the_app_and_curl_still_get_the_handlers_answer_to_a_get(endpoint: str) -> None:
    # A GET without Accept: text/html is the handler's, as at the deployed URL: 405 and why
    request = urllib.request.Request(endpoint, headers={"Accept": "*/*"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=WAIT_S)
    assert refused.value.code == 405
    assert "expected POST" in json.loads(refused.value.read())["error"]
