"""Check a self-contained HTML page in a real headless browser (Debian's chromium).

``pylcogt qc`` writes one HTML page next to its PNG previews; the page must work from a plain
directory, offline, forever (copied to a laptop, attached to a ticket, archived with the night).
A test that only greps the HTML cannot tell whether the browser actually finds and decodes the
images, so :func:`check_page` opens the page's ``file://`` URL in Debian's chromium, driven by
selenium through Debian's chromedriver, and reports:

* whether the page loaded (``document.readyState == 'complete'`` and the document request did
  not fail);
* every ``<img>`` in the DOM: the ``src`` as written, the URL the browser resolved, ``complete``
  and the decoded ``naturalWidth`` x ``naturalHeight`` (0 means missing or undecodable);
* every ``<a href>`` and whether a ``file:`` target exists;
* every URL the browser requested while loading the page, from the Chrome DevTools Protocol
  ``Network.requestWillBeSent`` events of chromedriver's performance log; any scheme other than
  ``file:``, ``data:``, ``blob:``, ``about:`` is a request to the network;
* every absolute network reference (``http:``, ``https:``, ``ftp:``, ``ws:``, ``wss:`` and
  protocol-relative ``//host``) written in the HTML source: URL attributes (``src``, ``href``,
  ``srcset``, ``poster``, ...), inline ``style`` attributes, ``<style>`` blocks (``url()``,
  ``@import``) and inline scripts. Links count too: an ``<a href="https://...">`` does not load
  anything, but the page is meant to be complete offline;
* the browser console's SEVERE entries (failed loads, script errors).

:attr:`PageReport.problems` lists all of it as sentences; a good page has none.

Nothing may leave the machine, whatever the page contains:

* the browser's proxy is a closed local port (``--proxy-server=127.0.0.1:9``, with
  ``<-loopback>`` so that loopback is proxied too), so any request fails at once with
  ``ERR_PROXY_CONNECTION_FAILED`` instead of reaching the network or hanging; the performance
  log still records the attempt;
* chromium starts on ``about:blank``: by default Debian's chromium opens its new-tab page, which
  loads the default search engine's start page (https://start.duckduckgo.com/) at every start;
* selenium never runs Selenium Manager (which downloads drivers and sends usage statistics):
  the session is built from an explicit ``Service(/usr/bin/chromedriver)`` and a
  ``webdriver.Remote`` connection, which does not go through selenium's driver finder at all;
* selenium's connection to chromedriver on localhost ignores ``http_proxy``/``https_proxy``
  (a ``ClientConfig`` with a direct proxy), and chromedriver is stopped without selenium's
  ``/shutdown`` request, which goes through ``urllib`` and hence through those variables;
* chromium runs with a fresh ``--user-data-dir`` and a fresh ``HOME`` (it writes crash-report
  settings and a dconf cache under ``$HOME`` whatever its profile directory), both removed
  afterwards.

Every process of a session (chromedriver, chromium and its zygotes, renderers, crashpad handlers)
is found again when the session closes, by an environment variable and by its temporary
directory on the command line, and killed: no process outlives the session.

If Debian's chromium or chromium-driver is missing, the test is skipped with a message to run
``./dev test`` (which installs both); under ``CI=true`` the project turns that skip into a
failure (``tests/ci_rules.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Nothing listens on the discard port: every proxied request fails at once.
DEAD_PROXY = "127.0.0.1:9"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root in containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    f"--proxy-server={DEAD_PROXY}",
    # chromium never proxies loopback by default; "<-loopback>" removes that exception
    "--proxy-bypass-list=<-loopback>",
)
#: the environment variable that marks every process of one session
RUN_ENV = "PYLCOGT_BROWSER_RUN"
LOCAL_SCHEMES = frozenset({"file", "data", "blob", "about"})
NETWORK_SCHEMES = frozenset({"http", "https", "ftp", "ws", "wss"})


class PageImage(NamedTuple):
    """One ``<img>`` of the DOM, as the browser sees it after loading."""

    src: str | None  # the src attribute as written
    url: str  # the URL the browser resolved (currentSrc, else src)
    complete: bool
    natural_width: int
    natural_height: int

    @property
    def broken(self) -> bool:
        return not self.complete or self.natural_width == 0


class PageLink(NamedTuple):
    """One ``<a>``/``<area>`` with an ``href``: as written and as resolved by the browser."""

    href: str | None
    url: str


class StaticRef(NamedTuple):
    """An absolute network URL written in the HTML, and where (``<img src>``, ``<style>``...)."""

    url: str
    where: str


@dataclass
class PageReport:
    """What the browser saw when it loaded one page (see the module docstring)."""

    path: Path
    url: str
    loaded: bool
    title: str = ""
    images: list[PageImage] = field(default_factory=list)
    links: list[PageLink] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed_requests: list[tuple[str, str]] = field(default_factory=list)
    static_refs: list[StaticRef] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    load_error: str | None = None

    @property
    def broken_images(self) -> list[PageImage]:
        return [image for image in self.images if image.broken]

    @property
    def network_requests(self) -> list[str]:
        return [url for url in self.requests if _scheme(url) not in LOCAL_SCHEMES]

    @property
    def missing_links(self) -> list[PageLink]:
        """Links to local files that do not exist."""
        return [link for link in self.links if _missing_local_file(link.url)]

    @property
    def problems(self) -> list[str]:
        problems = []
        if not self.loaded:
            problems.append(f"the page did not load: {self.url} ({self.load_error})")
        elif self.url not in self.requests:
            # the performance log always records the page's own request: without it the network
            # monitoring is blind and an empty `network_requests` would prove nothing
            problems.append(f"the browser's request log does not show the page itself ({self.url})")
        problems += [
            f"broken image: src={image.src!r} ({_short(image.url)}): complete={image.complete}, "
            f"{image.natural_width}x{image.natural_height} px"
            for image in self.broken_images
        ]
        problems += [
            f"link to a missing file: href={link.href!r} ({link.url})"
            for link in self.missing_links
        ]
        problems += [f"request to the network: {_short(url)}" for url in self.network_requests]
        problems += [
            f"network reference in the HTML, {ref.where}: {_short(ref.url)}"
            for ref in self.static_refs
        ]
        problems += [f"browser console error: {message}" for message in self.console_errors]
        return problems


# --- the browser session ----------------------------------------------------------------------
def require_browser() -> None:
    """Skip the calling test unless Debian's chromium and chromedriver are installed."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(
            f"no headless browser ({', '.join(missing)} missing): run ./dev test, which installs "
            "Debian's chromium and chromium-driver"
        )


class BrowserSession:
    """One headless chromium (and its chromedriver), to check several pages in a row.

    Use as a context manager, or call :meth:`start` and :meth:`close` (always, in a finally).
    """

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex
        self._tmp: Path | None = None
        self._service: Any = None
        self._driver: Any = None
        self._log_file: Any = None

    @property
    def driver(self) -> Any:
        if self._driver is None:
            raise RuntimeError("the browser session is not started")
        return self._driver

    @property
    def tmp_dir(self) -> Path | None:
        """The session's temporary directory (profile, HOME, chromedriver log); None once closed."""
        return self._tmp

    def __enter__(self) -> BrowserSession:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> BrowserSession:
        require_browser()
        # imported here: collecting the tests must not need selenium
        from selenium import webdriver
        from selenium.webdriver.chrome.remote_connection import ChromeRemoteConnection
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.proxy import Proxy, ProxyType
        from selenium.webdriver.remote.client_config import ClientConfig

        self._tmp = Path(tempfile.mkdtemp(prefix="pylcogt-browser-"))
        try:
            home = self._tmp / "home"
            home.mkdir()
            options = webdriver.ChromeOptions()
            options.binary_location = str(CHROMIUM)
            for flag in CHROMIUM_FLAGS:
                options.add_argument(flag)
            options.add_argument(f"--user-data-dir={self._tmp / 'profile'}")
            # start on about:blank, not on the new-tab page (which loads the search engine's page)
            options.add_experimental_option(
                "prefs", {"session.restore_on_startup": 4, "session.startup_urls": ["about:blank"]}
            )
            options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
            env = {
                **os.environ,
                RUN_ENV: self.run_id,
                "HOME": str(home),
                "XDG_CONFIG_HOME": str(home / ".config"),
                "XDG_CACHE_HOME": str(home / ".cache"),
                "XDG_DATA_HOME": str(home / ".local" / "share"),
            }
            self._log_file = open(self._tmp / "chromedriver.log", "w", encoding="utf-8")  # noqa: SIM115
            service = Service(str(CHROMEDRIVER), log_output=self._log_file, env=env)
            service.path = str(CHROMEDRIVER)  # Service() prefers $SE_CHROMEDRIVER when set
            self._service = service
            service.start()
            config = ClientConfig(
                remote_server_addr=service.service_url,
                proxy=Proxy({"proxyType": ProxyType.DIRECT}),
                timeout=120,
            )
            connection = ChromeRemoteConnection(service.service_url, client_config=config)
            self._driver = webdriver.Remote(command_executor=connection, options=options)
            # every page is read from disk again, never from the memory cache of a previous one
            self._driver.execute(
                "executeCdpCommand",
                {"cmd": "Network.setCacheDisabled", "params": {"cacheDisabled": True}},
            )
        except Exception as exc:
            log = self._driver_log_tail()
            self.close()
            raise RuntimeError(
                f"cannot start {CHROMIUM} through {CHROMEDRIVER}: {exc}\n"
                f"chromedriver log (end):\n{log}"
            ) from exc
        except BaseException:
            self.close()
            raise
        return self

    def _driver_log_tail(self, lines: int = 30) -> str:
        if self._tmp is None:
            return ""
        try:
            text = (self._tmp / "chromedriver.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Quit the browser, stop chromedriver, kill any process left, remove the temp dir."""
        try:
            if self._driver is not None:
                with contextlib.suppress(Exception):
                    self._driver.quit()
        finally:
            self._driver = None
            try:
                self._stop_chromedriver()
            finally:
                self._service = None
                try:
                    kill_processes(self.run_id, self._tmp)
                finally:
                    if self._log_file is not None:
                        self._log_file.close()
                        self._log_file = None
                    if self._tmp is not None:
                        _rmtree(self._tmp)
                        self._tmp = None

    def _stop_chromedriver(self) -> None:
        process = getattr(self._service, "process", None)
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except Exception:
                process.kill()
                process.wait(10)
        if process.stdin is not None:
            process.stdin.close()

    def check(self, path: Path, *, timeout_s: float = 30) -> PageReport:
        """Load ``path`` (a local HTML file) and report what the browser saw."""
        from selenium.common.exceptions import TimeoutException

        path = Path(path).resolve()
        if not path.is_file():
            raise FileNotFoundError(path)
        url = path.as_uri()
        driver = self.driver
        driver.set_page_load_timeout(timeout_s)
        driver.set_script_timeout(timeout_s)
        driver.get("about:blank")
        self._log("performance")  # forget everything before this page
        self._log("browser")
        deadline = time.monotonic() + timeout_s
        report = PageReport(path=path, url=url, loaded=False)
        try:
            driver.get(url)
        except TimeoutException:
            report.load_error = f"no load event after {timeout_s:g} s"
        state = driver.execute_script("return document.readyState")
        while state != "complete" and time.monotonic() < deadline:
            time.sleep(0.05)
            state = driver.execute_script("return document.readyState")
        # images below the fold may be lazy: load them all, then wait until each is settled
        driver.execute_script(
            "document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager' })"
        )
        while time.monotonic() < deadline and not driver.execute_script(
            "return Array.from(document.images).every(i => i.complete)"
        ):
            time.sleep(0.05)
        report.title = driver.title
        report.images = [PageImage(*row) for row in driver.execute_script(_IMAGES_JS)]
        report.links = [PageLink(*row) for row in driver.execute_script(_LINKS_JS)]
        current = driver.current_url
        requests, failed = _network_events(self._log("performance"))
        report.requests = requests
        report.failed_requests = failed
        report.console_errors = [
            entry["message"] for entry in self._log("browser") if entry.get("level") == "SEVERE"
        ]
        page_failure = next((error for u, error in failed if u == url), None)
        if page_failure is not None:
            report.load_error = f"the document request failed: {page_failure}"
        elif current != url:
            report.load_error = f"the browser shows {current} instead"
        elif state != "complete":
            report.load_error = f"document.readyState is {state!r} after {timeout_s:g} s"
        report.loaded = report.load_error is None
        report.static_refs = find_network_refs(path.read_text(encoding="utf-8", errors="replace"))
        return report

    def _log(self, kind: str) -> list[dict]:
        # chromedriver's /se/log endpoint (what ChromeDriver.get_log calls); returns and clears
        return self.driver.execute("getLog", {"type": kind})["value"]


def check_page(
    path: Path, *, timeout_s: float = 30, session: BrowserSession | None = None
) -> PageReport:
    """Open ``path`` in headless chromium and report what it loaded (see the module docstring).

    With ``session``, reuse that running browser; otherwise start one and close it afterwards.
    """
    if session is not None:
        return session.check(path, timeout_s=timeout_s)
    with BrowserSession() as own:
        return own.check(path, timeout_s=timeout_s)


_IMAGES_JS = """
return Array.from(document.querySelectorAll('img')).map(i => [
    i.getAttribute('src'), i.currentSrc || i.src, i.complete, i.naturalWidth, i.naturalHeight]);
"""
_LINKS_JS = """
return Array.from(document.querySelectorAll('a[href], area[href]')).map(
    a => [a.getAttribute('href'), a.href]);
"""


def _network_events(entries: Iterable[dict]) -> tuple[list[str], list[tuple[str, str]]]:
    """Requested URLs (in order, once each) and failed requests from the performance log."""
    urls: dict[str, None] = {}
    by_id: dict[str, str] = {}
    failed = []
    for entry in entries:
        message = json.loads(entry["message"])["message"]
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            urls.setdefault(url, None)
            by_id[params["requestId"]] = url
        elif method == "Network.loadingFailed":
            url = by_id.get(params["requestId"], f"(request {params['requestId']})")
            failed.append((url, params.get("errorText", "")))
    return list(urls), failed


# --- leftover processes -------------------------------------------------------------------------
def browser_processes(run_id: str, tmp_dir: Path | None = None) -> list[int]:
    """Live processes of one session: marked by ``$PYLCOGT_BROWSER_RUN`` or naming its temp dir.

    Chromium rewrites the environment block of its zygotes and renderers (to set their process
    titles), so those are found by their ``--user-data-dir`` instead. Zombies are not counted.
    """
    marker = f"{RUN_ENV}={run_id}".encode()
    needle = str(tmp_dir).encode() if tmp_dir is not None else None
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_bytes()
            if stat.rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                continue
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") or (needle is not None and needle in cmdline):
            found.append(int(entry.name))
    return sorted(found)


def kill_processes(run_id: str, tmp_dir: Path | None = None, *, wait_s: float = 5) -> None:
    """SIGKILL every live process of the session and wait until they are gone."""
    deadline = time.monotonic() + wait_s
    while pids := browser_processes(run_id, tmp_dir):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"browser processes {pids} survive SIGKILL")
        time.sleep(0.05)


def _rmtree(path: Path) -> None:
    for _ in range(20):  # a dying process may still create a file as the tree is removed
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)
    shutil.rmtree(path)


# --- network references in the HTML source ------------------------------------------------------
#: attributes holding one URL (``xlink:href`` for SVG; ``cite``/``longdesc`` are not loaded, but
#: they point at the network all the same)
_URL_ATTRS = frozenset(
    {"src", "href", "xlink:href", "poster", "data", "action", "formaction", "background", "cite",
     "longdesc", "manifest", "codebase"}
)  # fmt: skip
_SRCSET_ATTRS = frozenset({"srcset", "imagesrcset"})
_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)\s]*))\s*\)""", re.I)
_CSS_IMPORT = re.compile(r"""@import\s+(?:"([^"]*)"|'([^']*)')""", re.I)
_ABSOLUTE_URL = re.compile(r"""\b(?:https?|ftp|wss?)://[^\s"'`<>()\\]+""", re.I)
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
_REFRESH_URL = re.compile(r"url\s*=\s*['\"]?([^'\"]*)", re.I)


def is_network_url(url: str) -> bool:
    """True for an absolute network URL (http, https, ftp, ws, wss) or a protocol-relative one.

    The URL is cleaned as browsers do: surrounding whitespace stripped, tabs and newlines removed
    and, the page's own ``file:`` scheme being "special", backslashes read as slashes.
    """
    url = re.sub(r"[\t\n\r]", "", url.strip(" \t\n\r\f"))
    if url.replace("\\", "/").startswith("//"):
        return True
    return _scheme(url) in NETWORK_SCHEMES


def find_network_refs(html: str) -> list[StaticRef]:
    """Absolute network references in an HTML document (see the module docstring)."""
    parser = _RefParser()
    parser.feed(html)
    parser.close()
    unique: dict[StaticRef, None] = dict.fromkeys(parser.refs)
    return list(unique)


class _RefParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[StaticRef] = []
        self._raw_tag: str | None = None  # inside <style> or <script>

    def _add(self, urls: Iterable[str], where: str) -> None:
        self.refs += [StaticRef(url.strip(), where) for url in urls if is_network_url(url)]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value for name, value in attrs if value is not None}
        for name, value in values.items():
            where = f"<{tag} {name}>"
            if name in _URL_ATTRS:
                self._add([value], where)
            elif name in _SRCSET_ATTRS:
                self._add(_srcset_urls(value), where)
            elif name == "ping":
                self._add(value.split(), where)
            elif name == "style":
                self._add(_css_urls(value), where)
            elif name == "srcdoc":  # an HTML document of its own
                inner = find_network_refs(value)
                self.refs += [ref._replace(where=f"{where} {ref.where}") for ref in inner]
        if tag == "meta" and values.get("http-equiv", "").lower() == "refresh":
            match = _REFRESH_URL.search(values.get("content", ""))
            if match:
                self._add([match.group(1)], "<meta http-equiv=refresh>")
        if tag in ("style", "script"):
            self._raw_tag = tag

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self._raw_tag = None

    def handle_endtag(self, tag: str) -> None:
        if tag == self._raw_tag:
            self._raw_tag = None

    def handle_data(self, data: str) -> None:
        if self._raw_tag == "style":
            self._add(_css_urls(data), "<style>")
        elif self._raw_tag == "script":
            self._add(_ABSOLUTE_URL.findall(data), "<script>")


def _css_urls(css: str) -> Iterator[str]:
    css = _CSS_COMMENT.sub(" ", css)
    for regex in (_CSS_URL, _CSS_IMPORT):
        for match in regex.finditer(css):
            yield next(group for group in match.groups() if group is not None)
    yield from _ABSOLUTE_URL.findall(css)  # image-set("https://..."), src: "..." and the like


def _srcset_urls(srcset: str) -> Iterator[str]:
    """The URLs of a srcset (a comma inside a URL, as in data: URIs, does not split it)."""
    pos, n = 0, len(srcset)
    while pos < n:
        while pos < n and (srcset[pos].isspace() or srcset[pos] == ","):
            pos += 1
        start = pos
        while pos < n and not srcset[pos].isspace():
            pos += 1
        url = srcset[start:pos]
        if url.endswith(","):
            url = url.rstrip(",")
        else:  # skip the descriptors ("2x", "640w") up to the next comma
            while pos < n and srcset[pos] != ",":
                pos += 1
        if url:
            yield url


# --- helpers ------------------------------------------------------------------------------------
def _scheme(url: str) -> str:
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else ""


def _missing_local_file(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "file":
        return False
    return not Path(url2pathname(parts.path)).exists()


def _short(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[: limit - 3] + "..."
