"""The web page at `/` in a real headless Chromium (selenium): upload a WFDB record (.hea + .dat),
see its 12-lead plot, chat with streamed answers; the answer equals the API's for the same ECG.
Skips with a reason where Chromium or selenium is absent (`make browser` installs them)."""
from __future__ import annotations

import shutil

import pytest

from ecgbatch._paths import REPO_ROOT

pytestmark = [pytest.mark.vllm, pytest.mark.shared, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def test_page_upload_plot_and_streamed_chat(browser, ecg_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    import openai

    wait = WebDriverWait(browser, 120)
    browser.get(ecg_server["url"] + "/")
    browser.find_element(By.ID, "key").send_keys(ecg_server["key"])
    browser.find_element(By.ID, "reload").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) == 2)
    rec = REPO_ROOT / "sample_archive" / "cinc2021" / "A0689"
    browser.find_element(By.ID, "file").send_keys(f"{rec}.hea\n{rec}.mat")
    wait.until(lambda d: d.find_element(By.ID, "plot").is_displayed())
    assert "12 leads, 500 Hz, 10 s" in browser.find_element(By.ID, "summary").text
    assert browser.execute_script("return document.getElementById('plot').naturalWidth") > 300

    browser.find_element(By.ID, "question").send_keys("Please describe this ECG.")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#log .assistant[data-done='1']"))
    answer = browser.find_element(By.CSS_SELECTOR, "#log .assistant").text
    api = openai.OpenAI(base_url=ecg_server["url"] + "/v1", api_key=ecg_server["key"], max_retries=0)
    ref = api.chat.completions.create(model="tiny", temperature=0, messages=[{"role": "user", "content": [
        {"type": "ecg", "ecg": {"path": "cinc2021/A0689.hea"}}, {"type": "text", "text": "Please describe this ECG."}]}])
    assert answer.strip() and answer.strip() == ref.choices[0].message.content.strip()

    # a second turn keeps the history (the page sends it) and streams a new answer
    browser.find_element(By.ID, "question").send_keys("What is the rhythm?")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#log .assistant[data-done='1']")) == 2)
    assert not browser.find_elements(By.CSS_SELECTOR, "#log .error")
