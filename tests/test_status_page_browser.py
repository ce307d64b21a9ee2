"""The status page in a real browser: Debian's headless Chromium driven by selenium (chromedriver).

Against a real ``qasup up --http``: the page renders every service of the plan with its state, pid, restarts,
ready time and last error, a progress bar for a starting service, the GPU plan and a chosen service's log;
``qasup stop NAME`` shows within a second without a reload; when the daemon stops the page says so and, when a
new daemon answers on the same port, it is live again without a reload. Against an in-process server with 300
services: the page renders them all and follows 300 events quickly. The screenshot of the first test is saved
as ``docs/status-page.png`` when that file is missing or ``QASUP_UPDATE_SCREENSHOT=1`` (so that a test run does
not rewrite a tracked file), and always under the test's temporary folder.

Chromium and chromedriver come from Debian (``chromium``, ``chromium-driver``); when they are missing the test
installs them with apt-get (as root; ``QASUP_NO_BROWSER_INSTALL=1`` skips that) and skips, saying why, only
where that fails. selenium comes with the test extras.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.from_thread
import pytest

from supervisor.control.metrics import Observed
from supervisor.control.server import serve

from conftest import qasup
from enginehelp import PY, free_port, poll, stack, up  # noqa: F401  (stack, up: fixtures)
from fakecontrol import FakeController

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,860")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "status-page.png"
GPUS = [{"index": i, "name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564, "memory_free_mib": 24000 - 900 * i,
         "compute_capability": "8.9"} for i in range(2)]

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extras (pip install -e '.[test]')")


def _install_browser() -> str | None:
    """None when Chromium and chromedriver are there (installed now if need be), else why not."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return None
    if os.environ.get("QASUP_NO_BROWSER_INSTALL") == "1":
        return "Chromium is not installed and QASUP_NO_BROWSER_INSTALL=1"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "Chromium is not installed and apt-get cannot install it here (not root, or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "chromium", "chromium-driver"]
    try:
        r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:   # a stale package list: update it once and try again
            subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q"], env=env,
                           capture_output=True, timeout=600)
            r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"Chromium could not be installed: {e}"
    if r.returncode != 0 or not os.path.exists(CHROMEDRIVER):
        return f"Chromium could not be installed: apt-get said: {(r.stderr or r.stdout).strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    why = _install_browser()
    if why is not None:
        pytest.skip(why)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="qasup-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


ROWS_JS = """
const out = {};
for (const tr of document.querySelectorAll('#services tbody tr')) {
  const c = tr.children;
  out[tr.dataset.name] = {state: c[1].querySelector('.badge').textContent, pid: c[2].textContent,
    uptime: c[3].textContent, restarts: c[4].textContent, ready: c[5].textContent, error: c[7].textContent,
    bar: !c[1].querySelector('.bar').hidden, eta: c[1].querySelector('.eta').textContent, hidden: tr.hidden};
}
return out;
"""


def rows(driver) -> dict[str, dict]:
    return driver.execute_script(ROWS_JS)


def severe_console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"
            and "favicon" not in e["message"] and "/v1/events" not in e["message"]
            and "ERR_CONNECTION_REFUSED" not in e["message"]]


def write_stack(stack) -> None:
    stack.unit("web", command=[PY, "-c", "import time\nfor i in range(5): print(f'web: serving request {i}', "
                                         "flush=True)\nprint('web ready on :8777', flush=True)\ntime.sleep(600)"],
               ready={"log": "ready on"})
    stack.unit("api", command=["sleep", "600"], requires=["web"])
    stack.unit("worker", command=["sleep", "600"], requires=["api"])
    stack.unit("loader", command=["sleep", "600"], ready={"tcp": "127.0.0.1:9", "timeout": "300s"})
    stack.unit("flaky", command=[PY, "-c", "import sys\nprint('flaky: cannot open model file', flush=True)\n"
                                           "sys.exit(3)"],
               restart={"policy": "on-failure", "delay": "50ms", "max_restarts": 2, "window": "60s"})
    stack.unit("ocr", command=["sleep", "600"], enabled=False)
    (stack.root / "qasup.toml").write_text('[stack]\nname = "qanything"\n\n[plan]\nllm_api = "local"\n'
                                           'runtime_backend = "default"\n')


def test_the_page_follows_a_real_stack(stack, up, browser, tmp_path: Path) -> None:
    write_stack(stack)
    port = free_port()
    env = {"QASUP_GPUS": json.dumps(GPUS)}
    u = up().start("--http", f"127.0.0.1:{port}", env=env)
    for name in ("web", "api", "worker"):
        u.wait_state(name, "ready", timeout=30)
    u.wait_state("flaky", "failed", timeout=30)
    u.wait_state("loader", "starting", timeout=30)
    browser.get(f"http://127.0.0.1:{port}/")
    browser.execute_script("window.__sameDocument = true;")
    want = {"web": "ready", "api": "ready", "worker": "ready", "loader": "starting", "flaky": "failed",
            "ocr": "disabled"}
    poll(lambda: {n: r["state"] for n, r in rows(browser).items()} == want, 10,
         lambda: f"every service in its state on the page: {rows(browser)}", pause=0.05)
    poll(lambda: browser.find_element("id", "conn").text == "live", 5, "the page to say it is live")
    got = rows(browser)
    status = {s["name"]: s for s in u.status()[1]["services"]}
    assert got["web"]["pid"] == str(status["web"]["pid"]) and got["ocr"]["pid"] == "-"
    assert got["flaky"]["restarts"] == "2" and "gave up after 2 restarts" in got["flaky"]["error"]
    assert got["web"]["ready"] not in ("-", "") and got["web"]["uptime"].endswith("s")
    # the starting service's progress against its [ready] timeout (and only its)
    assert got["loader"]["bar"] and got["loader"]["eta"].endswith("/ 300s")
    assert not any(r["bar"] for n, r in got.items() if n != "loader")
    # the GPU plan
    plan = browser.find_element("id", "plan-section")
    assert plan.is_displayed()
    text = plan.text
    assert "OFFCUT_TOKEN 0" in text and "backend default" in text and "size 7B" in text
    assert "GPU 0 · NVIDIA GeForce RTX 4090" in text and "GPU 1" in text and "23100 MiB free" in text
    assert browser.find_element("id", "stack-state").text == "degraded"
    # the log of a chosen service
    browser.execute_script("document.querySelector('tr[data-name=\"web\"]').click();")
    poll(lambda: "web ready on :8777" in browser.find_element("id", "log").text, 5, "web's log on the page")
    assert "web: serving request 0" in browser.find_element("id", "log").text
    shot = tmp_path / "status-page.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if not SCREENSHOT.exists() or os.environ.get("QASUP_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)

    # a stop shows within a second, without reloading the page
    r = qasup("stop", "worker", cwd=stack.root)
    assert r.returncode == 0, r.stdout + r.stderr
    t0 = time.monotonic()
    poll(lambda: rows(browser)["worker"]["state"] == "stopped", 1.0,
         lambda: f"worker stopped on the page within 1 s: {rows(browser)['worker']}", pause=0.02)
    shown_after = time.monotonic() - t0
    assert rows(browser)["worker"]["pid"] == "-"
    assert browser.execute_script("return window.__sameDocument === true;"), "the page was reloaded"

    # the daemon goes away: the page says so; a new one on the same port: live again, same document
    u.signal(signal.SIGTERM)
    assert u.wait(30) == 0
    poll(lambda: browser.find_element("id", "conn").text.startswith("reconnecting"), 5, "the page to notice")
    u2 = up().start("--http", f"127.0.0.1:{port}", env=env)
    u2.wait_state("web", "ready", timeout=30, nth=2)
    poll(lambda: browser.find_element("id", "conn").text == "live", 10, "the page to reconnect")
    poll(lambda: rows(browser)["worker"]["state"] in ("waiting", "starting", "ready"), 10,
         lambda: f"the new daemon's worker on the page: {rows(browser)['worker']}")
    assert browser.execute_script("return window.__sameDocument === true;"), "the page was reloaded"
    assert severe_console_errors(browser) == []
    assert u2.stop(30) == 0
    print(f"stop shown {shown_after * 1000:.0f} ms after the CLI returned")


def test_300_services(browser, tmp_path: Path) -> None:
    names = [f"svc-{i:03d}" for i in range(300)]
    controller = FakeController(tmp_path, {n: {"state": "ready", "pid": 1000 + i, "uptime_s": 60.0 + i,
                                               "ready_after_s": 1.5, "ready_timeout_s": 120.0}
                                           for i, n in enumerate(names)})
    with anyio.from_thread.start_blocking_portal() as portal:
        finished = threading.Event()
        scopes: list[anyio.CancelScope] = []

        async def run(task_status=anyio.TASK_STATUS_IGNORED) -> None:
            try:
                with anyio.CancelScope() as scope:
                    scopes.append(scope)
                    await serve(controller, tmp_path / "qasup.sock", log=lambda m: None, http=("127.0.0.1", 0),
                                observed=Observed(plan=lambda: {"gpus": GPUS}), task_status=task_status)
            finally:
                finished.set()

        _, info = portal.start_task(run)
        try:
            t0 = time.monotonic()
            browser.get(f"http://127.0.0.1:{info.http_address[1]}/")
            poll(lambda: browser.execute_script("return document.querySelectorAll('#services tbody tr').length")
                 == 300, 10, "300 rows", pause=0.05)
            rendered = time.monotonic() - t0
            poll(lambda: controller.subscribers, 5, "the page's events subscription")
            t1 = time.monotonic()
            for n in names:
                controller.services[n]["state"] = "stopped"
                portal.call(controller.publish, {"ts": time.time(), "service": n, "state": "stopped",
                                                 "prev": "ready"})
            poll(lambda: all(r["state"] == "stopped" for r in rows(browser).values()), 10,
                 "every row stopped", pause=0.05)
            followed = time.monotonic() - t1
            browser.execute_script("const f = document.getElementById('filter'); f.value = 'svc-29';"
                                   "f.dispatchEvent(new Event('input'));")
            shown = [n for n, r in rows(browser).items() if not r["hidden"]]
            assert shown == [f"svc-29{d}" for d in range(10)]
            assert "10 of 300 services" in browser.find_element("id", "shown").text
        finally:
            portal.call(scopes[0].cancel)
            assert finished.wait(5)
    assert rendered < 5 and followed < 5, f"300 rows in {rendered:.2f}s, 300 events in {followed:.2f}s"
