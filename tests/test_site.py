"""The book, as a reader's browser sees it.

Builds book/ with Sphinx once per session into a temporary folder, serves it on 127.0.0.1 (a
free port, `http.server` in a thread) and opens every page in headless Chromium driven by
Selenium. A page fails when an image does not load, an equation is left as raw TeX, a link inside
the site points nowhere, or the page asks any host but the local server for anything (read from
Chromium's network log; every other host is also mapped to nowhere, so nothing leaves the
machine), or its console logs an error on a first visit. Needs Debian's `chromium` and `chromium-driver` and the packages of
requirements-book.txt; without them it skips, with the reason, unless
AUTOENCODERS_REQUIRE_SITE_TEST=1 (set by .ci/run), where it fails instead.
"""

import functools
import http.server
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMEDRIVER = pathlib.Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  # Every host but the local server resolves to nothing: a request for one is
                  # still in the network log, and never leaves the machine.
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                  "--window-size=1280,1024"]
PAGE_TIMEOUT_S = 20

# Each lesson's page, its script, and the prefix of its committed figures.
LESSONS = {
    "lessons/vae.html": ("VariationalAutoEncoder_tf2", "vae_"),
    "lessons/cvae.html": ("ConditionalVAE", "cvae_"),
    "lessons/ae.html": ("AutoEncoder", "ae_"),
    "lessons/pretrain.html": ("GreedyPretraining", "pretraining_"),
    "lessons/dae.html": ("StackedDenoisingAutoEncoder", "dae_"),
    "lessons/sparse.html": ("SparseAutoEncoder", "sparse_"),
    "lessons/contractive.html": ("ContractiveAutoEncoder", "contractive_"),
    "lessons/mae.html": ("MaskedAutoEncoder", "mae_"),
    "lessons/vqvae.html": ("VQVAE", "vqvae_"),
}
CHAPTERS = ["index.html", "chapters/data.html", "chapters/command-line.html",
            "chapters/troubleshooting.html", "chapters/scaling.html", "chapters/layout.html"]


def _missing():
    """Why this test cannot run here, or None."""
    for tool, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not tool.exists():
            return (f"{tool} is missing: the site test needs headless Chromium "
                    f"(apt-get install chromium chromium-driver)")
    for module in ("sphinx", "myst_parser", "selenium"):
        try:
            __import__(module)
        except ImportError:
            return (f"Python package {module} is missing: the site test needs "
                    f"requirements-book.txt (make site, or pip install -r requirements-book.txt)")
    return None


_REASON = _missing()
_REQUIRED = os.environ.get("AUTOENCODERS_REQUIRE_SITE_TEST") == "1"
pytestmark = pytest.mark.skipif(_REASON is not None and not _REQUIRED, reason=_REASON or "")


@pytest.fixture(scope="session", autouse=True)
def _required_here():
    """Where the site test must run (CI), what it lacks fails it rather than skipping it."""
    if _REASON is not None:
        pytest.fail(f"AUTOENCODERS_REQUIRE_SITE_TEST=1, but {_REASON}")


# -- Build, serve, browse ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The book built from scratch, warnings as errors (a missing figure or function fails)."""
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-E", "-W", "--keep-going", "-q",
         str(BOOK), str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"sphinx-build failed:\n{build.stdout}\n{build.stderr}"
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="session")
def server(site):
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def start_chromium():
    """Headless Chromium in a fresh profile, logging its network and console: (driver, profile)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    driver.set_script_timeout(PAGE_TIMEOUT_S)
    return driver, profile


@pytest.fixture(scope="session")
def browser():
    driver, profile = start_chromium()
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


# What a page holds once it has loaded, its images have loaded and MathJax has typeset it.
_INSPECT = r"""
const skip = "pre, code, script, style, textarea, mjx-container, .highlight";
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
const texts = [];
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  const parent = node.parentElement;
  if (parent && !parent.closest(skip) && parent.getClientRects().length) texts.push(node.data);
}
const urls = [];
for (const el of document.querySelectorAll("a[href], link[href]")) urls.push([el.tagName, el.href]);
for (const el of document.querySelectorAll("img[src], script[src], source[src], iframe[src]"))
  urls.push([el.tagName, el.src]);
const math = Array.from(document.querySelectorAll(".math"));
return {
  title: document.title,
  text: texts.join(" "),
  images: Array.from(document.images, im => ({src: im.src, complete: im.complete,
                                               width: im.naturalWidth})),
  math: math.length,
  untypeset: math.filter(el => !el.querySelector("mjx-container"))
                 .map(el => el.textContent.slice(0, 80)),
  math_errors: Array.from(document.querySelectorAll("mjx-merror"),
                          el => el.getAttribute("data-mjx-error") || el.textContent),
  urls: urls,
  ids: Array.from(document.querySelectorAll("[id]"), el => el.id)
    .concat(Array.from(document.querySelectorAll("a[name]"), el => el.name)),
  code_captions: Array.from(document.querySelectorAll(".literal-block-wrapper .caption-text"),
                            el => el.textContent),
  code_lines: Array.from(document.querySelectorAll(".literal-block-wrapper pre"),
                         el => el.textContent.split("\n").length),
};
"""

_WAIT_FOR_PAGE = r"""
const done = arguments[arguments.length - 1];
for (const im of document.images) im.loading = "eager";
const images = Promise.all(Array.from(document.images, im => im.complete ? null :
  new Promise(resolve => { im.addEventListener("load", resolve);
                           im.addEventListener("error", resolve); })));
const math = (window.MathJax && MathJax.startup && MathJax.startup.promise)
  ? MathJax.startup.promise : Promise.resolve();
Promise.all([images, math]).then(() => done(true), () => done(false));
"""


def _network(driver):
    """The requests, responses and failures in Chromium's log since the last call."""
    requests, responses, failures = {}, {}, {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            requests[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.responseReceived":
            responses[params["requestId"]] = (params["response"]["url"],
                                              params["response"]["status"])
        elif message["method"] == "Network.loadingFailed":
            failures[params["requestId"]] = params.get("errorText", "")
    return requests, responses, failures


@pytest.fixture(scope="session")
def pages(site, server, browser):
    """Every page of the site, opened in the browser: {path: what it holds, and its traffic}."""
    found = {}
    # The browser's own requests (about:blank, its background fetches) are no page's: one of
    # them can fail after the first page has opened, its request logged at start-up or not at
    # all, so the start-up log is read first and a failure whose request no page logged is
    # dropped (a page logs every request it sends before the request can fail). Every other
    # failure is reported with the URL it was for, even when an earlier page logged it.
    _network(browser)
    urls = {}
    browser.get_log("browser")
    for page in sorted(site.rglob("*.html")):
        path = page.relative_to(site).as_posix()
        if path.startswith("_static/"):
            continue  # the theme's template fragments, copied there, are not pages
        browser.get(f"{server}/{path}")
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while browser.execute_script("return document.readyState") != "complete":
            assert time.monotonic() < deadline, f"{path} did not finish loading"
            time.sleep(0.05)
        browser.execute_async_script(_WAIT_FOR_PAGE)
        info = browser.execute_script(_INSPECT)
        requests, info["responses"], failures = _network(browser)
        urls.update(requests)
        info["requests"] = requests
        info["failures"] = {request: (urls[request], error)
                            for request, error in failures.items() if request in urls}
        info["console_errors"] = [entry["message"] for entry in browser.get_log("browser")
                                  if entry["level"] == "SEVERE"]
        browser.execute_script("localStorage.clear()")  # each page a reader's first visit
        found[path] = info
    return found


# Schemes that name no host: inline data, and the browser's own pages and resources.
LOCAL_SCHEMES = ("data:", "blob:", "about:", "chrome:", "chrome-extension:", "devtools:")


def _local(url, server):
    return url.startswith(server + "/") or url == server


# -- What every page must do ---------------------------------------------------------------------

def test_the_site_has_every_page(pages):
    missing = [path for path in [*CHAPTERS, *LESSONS] if path not in pages]
    assert not missing, f"pages the book should have: {missing}"


def test_every_image_loads(pages):
    broken = [(path, im["src"]) for path, info in pages.items() for im in info["images"]
              if not im["complete"] or im["width"] == 0]
    assert not broken, f"images that did not load (naturalWidth 0): {broken}"


def test_every_equation_is_typeset(pages):
    problems = {}
    for path, info in pages.items():
        if info["untypeset"] or info["math_errors"]:
            problems[path] = {"untypeset": info["untypeset"], "errors": info["math_errors"]}
    assert not problems, f"math that MathJax did not typeset: {problems}"
    assert sum(info["math"] for path, info in pages.items() if path in LESSONS) > 100, \
        "the lessons should hold their equations as typeset math"


# Raw TeX in what a reader sees, outside code: $ delimiters, \( \) \[ \], or a TeX command.
RAW_TEX = re.compile(r"\$|\\[()\[\]]|\\[A-Za-z]{2,}")


def test_no_raw_tex_is_left_in_the_text(pages):
    leftovers = {}
    for path, info in pages.items():
        hits = [info["text"][max(0, m.start() - 30):m.end() + 30]
                for m in RAW_TEX.finditer(info["text"])]
        if hits:
            leftovers[path] = hits[:5]
    assert not leftovers, f"raw TeX visible outside code blocks: {leftovers}"


def test_every_link_inside_the_site_resolves(pages, server):
    targets = {}
    for path, info in pages.items():
        for tag, url in info["urls"]:
            if _local(url, server):
                targets.setdefault(url, path)
    broken, anchors = [], []
    checked = {}
    for url, page in sorted(targets.items()):
        address, _, fragment = url.partition("#")
        if address not in checked:
            try:
                with urllib.request.urlopen(address, timeout=10) as response:
                    checked[address] = response.status
            except urllib.error.HTTPError as error:
                checked[address] = error.code
        if checked[address] != 200:
            broken.append((page, url, checked[address]))
            continue
        target = urllib.parse.urlparse(address).path.lstrip("/") or "index.html"
        if target.endswith("/"):
            target += "index.html"
        ids = pages.get(target, {}).get("ids")
        if fragment and ids is not None and urllib.parse.unquote(fragment) not in ids:
            anchors.append((page, url))
    assert not (broken or anchors), (
        f"links inside the site that point nowhere (page, link, status): {broken}; "
        f"links to an anchor their page does not have: {anchors}")


def test_no_page_asks_another_host_for_anything(pages, server):
    foreign = {}
    for path, info in pages.items():
        urls = [url for url in info["requests"].values()
                if not _local(url, server) and not url.startswith(LOCAL_SCHEMES)]
        if urls:
            foreign[path] = sorted(set(urls))
    assert not foreign, f"requests to hosts other than the local server: {foreign}"


def test_no_page_logs_a_console_error(pages):
    errors = {path: info["console_errors"] for path, info in pages.items()
              if info["console_errors"]}
    assert not errors, f"errors in the browser's console: {errors}"


def test_every_request_to_the_local_server_succeeds(pages, server):
    failed = {}
    for path, info in pages.items():
        bad = [(url, status) for url, status in info["responses"].values()
               if _local(url, server) and status not in (200, 304)]
        bad += list(info["failures"].values())
        if bad:
            failed[path] = bad
    assert not failed, f"requests for fonts, scripts, styles or images that failed: {failed}"


# -- What the lessons' pages must hold -----------------------------------------------------------

def test_every_committed_figure_is_on_its_lessons_page(pages):
    for path, (script, prefix) in LESSONS.items():
        shown = {pathlib.PurePosixPath(urllib.parse.urlparse(im["src"]).path).name
                 for im in pages[path]["images"]}
        committed = {figure.name for figure in (ROOT / "figures").glob(f"{prefix}*.png")}
        assert committed <= shown, f"{path} misses {sorted(committed - shown)}"


def test_every_lesson_page_includes_its_code_from_the_sources(pages):
    for path, (script, _) in LESSONS.items():
        captions = pages[path]["code_captions"]
        assert captions, f"{path} includes no code"
        assert all(c.endswith(".py") for c in captions), captions
        assert f"{script}.py" in captions, f"{path} includes nothing from {script}.py: {captions}"
        assert min(pages[path]["code_lines"]) >= 2, f"{path} has an empty code inclusion"


def test_every_lesson_page_links_its_script_and_its_notebook(pages, server):
    for path, (script, _) in LESSONS.items():
        links = [url for tag, url in pages[path]["urls"] if tag == "A"]
        assert any(url.endswith(f"/{script}.py") for url in links), f"{path}: no {script}.py"
        notebook = ROOT / "notebooks" / f"{script}.ipynb"  # committed: `make notebooks`
        served = [url for url in links if url.endswith(f"/{script}.ipynb")]
        assert served, f"{path}: no link to notebooks/{script}.ipynb"
        with urllib.request.urlopen(served[0], timeout=10) as response:
            assert response.read() == notebook.read_bytes(), f"{served[0]} is not the notebook"


# -- Code, search and the build ------------------------------------------------------------------

def _open(browser, url):
    browser.get(url)
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while browser.execute_script("return document.readyState") != "complete":
        assert time.monotonic() < deadline, f"{url} did not finish loading"
        time.sleep(0.05)


def test_code_blocks_show_100_columns_at_1920px(server, browser):
    """On a 1920 px wide window no code block on the VAE page scrolls sideways, nor would one
    with a 100-column line (the lessons' widest)."""
    browser.set_window_size(1920, 1080)
    try:
        _open(browser, f"{server}/lessons/vae.html")
        assert browser.execute_script("return window.innerWidth") == 1920
        blocks = browser.execute_script(r"""
          const blocks = Array.from(document.querySelectorAll("pre"), pre =>
            ({text: pre.textContent.slice(0, 60), scroll: pre.scrollWidth, width: pre.clientWidth}));
          const probe = document.querySelector(".highlight pre");
          probe.append("\n" + "W".repeat(100));
          blocks.push({text: "a 100-column line", scroll: probe.scrollWidth, width: probe.clientWidth});
          return blocks;""")
    finally:
        browser.set_window_size(1280, 1024)
    assert len(blocks) > 1, "the VAE page should include its code"
    wide = [block for block in blocks if block["scroll"] > block["width"]]
    assert not wide, f"code blocks that scroll sideways at 1920 px: {wide}"


# Once the results are listed, their summaries fetched, and MathJax done with them.
_SEARCH_RESULTS = r"""
const done = arguments[arguments.length - 1];
const deadline = Date.now() + arguments[0] * 1000;
const poll = () => {
  const status = document.querySelector("#search-results .search-summary");
  const items = Array.from(document.querySelectorAll("#search-results li"));
  if (status && status.textContent && items.every(li => li.querySelector("p.context"))) {
    const typeset = (window.MathJax && MathJax.startup && MathJax.startup.promise) || null;
    Promise.resolve(typeset).then(() => done(items.map(li => ({
      text: li.textContent, math: li.querySelectorAll("mjx-container").length}))));
  } else if (Date.now() > deadline) done(null);
  else setTimeout(poll, 50);
};
poll();
"""


def test_search_results_show_no_raw_tex(server, browser):
    """A search's summaries quote the pages' text: their math is typeset, not raw \\( or \\[."""
    browser.get_log("browser")
    _open(browser, f"{server}/search.html?q=prior")
    results = browser.execute_async_script(_SEARCH_RESULTS, PAGE_TIMEOUT_S - 5)
    assert results, "the search for 'prior' listed no results with summaries"
    raw = [result["text"] for result in results if re.search(r"\\[()\[\]]", result["text"])]
    assert not raw, f"search results showing raw TeX: {raw}"
    assert any(result["math"] for result in results), \
        "no summary for 'prior' quotes a formula: search for a word next to one"
    errors = [entry["message"] for entry in browser.get_log("browser")
              if entry["level"] == "SEVERE"]
    assert not errors, f"errors in the console of the search page: {errors}"


def test_a_failed_make_site_leaves_the_last_site(tmp_path):
    """`make site` builds into a folder beside site/ and replaces site/ only if the build
    succeeds: here with a two-line book (a broken link, then none) in place of book/."""
    if shutil.which("make") is None:
        pytest.skip("make is missing")
    book, out = tmp_path / "book", tmp_path / "site"
    book.mkdir()
    (book / "conf.py").write_text('extensions = ["myst_parser"]\n')
    (book / "index.md").write_text("# A book\n\nA link to {doc}`nowhere`.\n")
    out.mkdir()
    (out / "index.html").write_text("the last good build")
    env = {key: value for key, value in os.environ.items()
           if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def make_site():  # the installs taken as done; no models, so no explorer data to make
        return subprocess.run(
            ["make", "-s", "-o", ".venv/.installed-book", "-o", ".venv/.installed",
             "-o", ".venv/.installed-export", "-o", "book/node_modules/.package-lock.json",
             "site", f"BOOK_DIR={book}", f"SITE_DIR={out}", f"PY={sys.executable}",
             f"EXPLORER_MODELS={book}", f"EXPLORER_DATA={tmp_path / 'explorer'}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    failed = make_site()
    assert failed.returncode != 0, "the build of a book with a broken link should fail"
    assert "nowhere" in failed.stderr, failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book", "site"], \
        "the failed build should leave no folder behind"
    assert [p.name for p in out.iterdir()] == ["index.html"], "the failed build changed site/"
    assert (out / "index.html").read_text() == "the last good build"
    (book / "index.md").write_text("# A book\n")
    built = make_site()
    assert built.returncode == 0, built.stdout + built.stderr
    assert "A book" in (out / "index.html").read_text(), "the good build should replace site/"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book", "site"]
