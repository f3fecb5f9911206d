"""The dashboard in a real browser (Debian's chromium, driven by Selenium through
chromium-driver): the live counters grow without a reload, the planted bug appears and its page
shows the traces with the divergent op marked, no script error or blocked load; screenshots
are kept under the test's temporary directory.  The fast test runs the service on fake kernels;
the kernel test on the real default kernel with a zoo bug injected."""

import shutil
import time

import pytest

from fuzz.execute.kernels import model_for, open_qemu
from fuzz.serve.config import KernelConfig, ServeConfig
from fuzz.serve.http import Service
from fuzz.serve.manager import Manager
from test_serve_api import get
from test_serve_fakes import fake_kernel


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pyproject.toml)")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (ci/setup.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service as DriverService
    session = webdriver.Chrome(service=DriverService(driver), options=options)
    session.set_page_load_timeout(60)
    yield session
    session.quit()


def run_service(config: ServeConfig, state, open_target) -> tuple[Manager, Service]:
    manager = Manager(config, state, open_target, model_for, stat_seconds=5, scan_seconds=1).start()
    server = Service(("127.0.0.1", 0), manager, None)
    server.serve_in_thread()
    return manager, server


def counter(browser, name: str) -> int:
    text = browser.find_element("css selector", f'[data-live="{name}"]').text
    return int(text) if text.isdigit() else 0


def wait_until(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (value := check()):
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def watch_dashboard(browser, base: str, kernel: str, tmp_path, bug_seconds: float) -> None:
    """Counters grow in place, the bug shows up in the list, its page has the traces."""
    browser.get(base + "/")
    assert browser.title.startswith("Dashboard")
    wait_until(lambda: counter(browser, f"{kernel}/programs") > 0, bug_seconds, "programs on the dashboard")
    marker = browser.execute_script("window.kept = 1; return window.kept")       # a reload would forget it
    seen = counter(browser, f"{kernel}/programs")
    wait_until(lambda: counter(browser, f"{kernel}/programs") > seen, 60, "the live counter to grow")
    assert browser.execute_script("return window.kept") == marker
    wait_until(lambda: counter(browser, "bugs/new") > 0, bug_seconds, "a new bug on the dashboard")
    wait_until(lambda: any(p["programs"] for p in get(f"{base}/api/stats")), 30, "a stat point with programs")
    browser.refresh()                      # the charts and the bug list are rendered by the server
    wait_until(lambda: browser.find_elements("css selector", "svg polyline, svg circle"), 30, "a chart")
    assert browser.find_elements("css selector", 'a[href^="/bugs/"]')
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    browser.get(base + "/bugs?status=new")
    browser.find_element("css selector", 'a[href^="/bugs/"]').click()
    wait_until(lambda: browser.find_elements("css selector", "#traces tr.divergent"), 30, "the traces")
    assert "divergent op" in browser.find_element("css selector", "#traces tr.divergent").text
    browser.save_screenshot(str(tmp_path / "bug.png"))
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []                    # no script error, nothing blocked by the CSP
    assert (tmp_path / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_dashboard_lives_in_chromium_with_fake_kernels(browser, tmp_path):
    config = ServeConfig(kernels=(KernelConfig("zoo", "6.1-cloud", "stale_pid"),), guests=1, budget=3600, runs=2,
                         retries=1)
    manager, server = run_service(config, tmp_path / "state", fake_kernel)
    try:
        watch_dashboard(browser, f"http://127.0.0.1:{server.server_address[1]}", "zoo", tmp_path, 90)
    finally:
        server.shutdown()
        manager.stop()


@pytest.mark.kernel
def test_the_dashboard_shows_a_zoo_bug_found_on_the_real_kernel(browser, tmp_path):
    # One guest: the follow-up (minimise, reproduce) would take the campaign's; off here, it is
    # the benchmark's business (bench/bench_serve.py), and this test keeps to one QEMU at a time.
    config = ServeConfig(kernels=(KernelConfig("zoo", None, "stale_pid", leak_every=0),), guests=1, budget=3600,
                         follow_up=False)
    manager, server = run_service(config, tmp_path / "state", open_qemu)
    try:
        watch_dashboard(browser, f"http://127.0.0.1:{server.server_address[1]}", "zoo", tmp_path, 150)
    finally:
        server.shutdown()
        manager.stop()
