"""Headless Chromium for looking at a page as a person would: open it, click, press keys, read
the console, take a screenshot (tests/test_explorer_browser.py, examples/explorer_screenshot.py).

Debian's Chromium and ChromeDriver (/usr/bin/chromium, /usr/bin/chromedriver) driven by
Selenium; both paths are given to Selenium, so it never tries to download a driver or a
browser (Selenium Manager). Without them, ``browser()`` skips the calling test, naming what to
install::

    with browser() as driver:
        open_page(driver, "page.html")          # waits for body[data-ready="1"]
        driver.find_element(By.CSS_SELECTOR, "#step-next").click()
        assert not console_errors(driver)
        screenshot(driver, "page.png")
"""
import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install chromium chromium-driver; pip install selenium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")
READY_TIMEOUT = 20.0          # seconds a page may take to set body[data-ready="1"]


def missing():
    """What is not installed for ``browser()``: a list of short descriptions (empty: all is)."""
    why = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        why.append("the selenium Python package")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            why.append(path)
    return why


@contextlib.contextmanager
def browser(width=1400, height=1000, skip=True):
    """A headless Chromium WebDriver with its console log recorded; quit (and its profile
    removed) on exit. Where selenium, Chromium or ChromeDriver is missing: ``pytest.skip``
    with the reason (``skip=False``: RuntimeError instead, for scripts)."""
    why = missing()
    if why:
        message = f"no headless browser: {', '.join(why)} missing (install: {INSTALL})"
        if skip:
            import pytest
            pytest.skip(message)
        raise RuntimeError(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="tinyllm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.tinyllm_console = []
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path, timeout=READY_TIMEOUT):
    """Load the file ``path`` (file://) and wait until its script has set
    ``document.body.dataset.ready = "1"``. Returns the seconds that took. The console log
    starts afresh (``console_logs`` returns what this page printed)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    _drain(driver)
    driver.tinyllm_console = []
    url = Path(path).resolve().as_uri()
    start = time.perf_counter()
    driver.get(url)
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.05).until(
            lambda d: d.execute_script(
                "return document.body ? document.body.dataset.ready || '' : ''") == "1")
    except TimeoutException:
        errors = "; ".join(e["message"] for e in console_errors(driver)) or "none"
        raise AssertionError(f"{url}: body[data-ready=\"1\"] not set within {timeout:g} s "
                             f"(console errors: {errors})") from None
    return time.perf_counter() - start


def _drain(driver):
    """Move the browser's new console entries into ``driver.tinyllm_console`` (WebDriver hands
    each entry out once)."""
    if not hasattr(driver, "tinyllm_console"):
        driver.tinyllm_console = []
    driver.tinyllm_console.extend(driver.get_log("browser"))


def console_logs(driver):
    """Every console entry of the current page so far: dicts with level, message, source."""
    _drain(driver)
    return list(driver.tinyllm_console)


def console_errors(driver):
    """The SEVERE console entries of the current page (console.error, uncaught exceptions,
    failed loads), less a missing favicon's."""
    return [e for e in console_logs(driver)
            if e.get("level") == "SEVERE" and "favicon.ico" not in e.get("message", "")]


def screenshot(driver, out_png):
    """Save what the window shows as a PNG at ``out_png`` (folders made); returns its path."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(out)):
        raise RuntimeError(f"screenshot: the browser did not write {out}")
    return out


def click(driver, element):
    """Scroll ``element`` to the middle of the window and click it as a mouse would."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'center'})",
                          element)
    element.click()


def press(driver, key, times=1):
    """Press a key (``selenium.webdriver.common.keys.Keys.ARROW_RIGHT``, ...) ``times`` times
    on whatever has the focus (keys bubble up to the document)."""
    from selenium.webdriver.common.action_chains import ActionChains
    actions = ActionChains(driver)
    for _ in range(times):
        actions.send_keys(key)
    actions.perform()


def embedded_json(path, element_id):
    """The JSON a page embeds as ``<script id="ELEMENT_ID" type="application/json">``, read
    from the file (no browser needed)."""
    text = Path(path).read_text(encoding="utf-8")
    wanted = re.compile(r"\bid\s*=\s*[\"']?" + re.escape(element_id) + r"(?![\w-])", re.I)
    for attrs, body in re.findall(r"<script\b([^>]*)>(.*?)</script>", text, re.S | re.I):
        if wanted.search(attrs):
            return json.loads(body)
    raise AssertionError(f"{path}: no <script id=\"{element_id}\"> element")


# ----------------------------------------------------------------------------------------------
# the backward-graph explorer (tinyllm.trace.to_html): its DOM contract
#   [data-op][data-module][data-node]  one element per node; data-node: 1-based backward order
#   #card                              filled by clicking a node
#   #step-next, #step-prev             (and ArrowRight / ArrowLeft): the node of step k gets
#                                      the class "current", and no other element has it
#   <script id="explorer-data" type="application/json">{"nodes": [{index, op, module}, ...]}

EXPLORER_DATA = "explorer-data"


def explorer_nodes(driver):
    """Every node element of the open page as (data-node, data-op, data-module), in page
    order."""
    return [tuple(row) for row in driver.execute_script(
        "return Array.from(document.querySelectorAll('[data-op]')).map(e => "
        "[e.getAttribute('data-node'), e.getAttribute('data-op'), "
        "e.getAttribute('data-module')])")]


def current_nodes(driver):
    """The data-node (None where absent) of every element with the class "current"."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.current')).map(e => "
        "e.getAttribute('data-node'))")


def node(driver, index):
    """The element of the node with data-node=``index``."""
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, f'[data-op][data-node="{index}"]')


def step(driver, times=1, back=False):
    """Click #step-next (``back``: #step-prev) ``times`` times."""
    from selenium.webdriver.common.by import By
    button = driver.find_element(By.CSS_SELECTOR, "#step-prev" if back else "#step-next")
    for _ in range(times):
        click(driver, button)


def pose_explorer(driver, page, op="LayerNorm"):
    """Reopen ``page``, step to the first ``op`` node of the backward order and click it (its
    card open): the view the README's screenshot shows. Returns that node's index."""
    nodes = embedded_json(page, EXPLORER_DATA)["nodes"]
    k = min(n["index"] for n in nodes if n["op"] == op)
    open_page(driver, page)
    step(driver, k)
    click(driver, node(driver, k))
    return k
