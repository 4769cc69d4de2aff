"""The headless Chromium the page tests drive (Selenium). Needs ``make browser-deps`` (Debian
chromium + chromium-driver, pip selenium); a test that asks for ``browser`` skips otherwise."""

import os
import shutil
import tempfile

import pytest

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or shutil.which("chromium-browser") or "")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", shutil.which("chromedriver") or "")


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (its own profile, 1280 x 1000)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: run `make browser-deps`")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium or chromedriver not found: run `make browser-deps`")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
