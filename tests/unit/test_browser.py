"""The headless-browser page checker (``tests.browser``) passes good pages and fails bad ones.

Every page is written to ``tmp_path`` and opened in one chromium per module. Network URLs use the
reserved ``.invalid`` domain; the browser's proxy is a closed local port, so they fail at once.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests import browser
from tests.browser import (
    BrowserSession,
    PageReport,
    StaticRef,
    browser_processes,
    check_page,
    find_network_refs,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def session() -> Iterator[BrowserSession]:
    with BrowserSession() as running:
        yield running


def write_png(path: Path, width: int, height: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ramp = np.add.outer(np.arange(height), np.arange(width)).astype(float)
    plt.imsave(path, ramp, cmap="viridis")
    return path


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def write_page(directory: Path, body: str, *, head: str = "", name: str = "index.html") -> Path:
    page = directory / name
    page.write_text(
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>QC test</title>\n"
        f"<style>body {{ font-family: sans-serif; }} img {{ border: 1px solid #888; }}</style>\n"
        f"{head}</head>\n<body>\n{body}\n</body></html>\n",
        encoding="utf-8",
    )
    return page


# --- pages that pass ----------------------------------------------------------------------------
def test_good_page_has_no_problems(session: BrowserSession, tmp_path: Path) -> None:
    write_png(tmp_path / "bias.png", 37, 23)
    (tmp_path / "sub").mkdir()
    write_png(tmp_path / "sub" / "flat map.png", 64, 48)  # a space: percent-encoded in the URL
    (tmp_path / "summary.txt").write_text("night summary\n")
    page = write_page(
        tmp_path,
        '<h1 style="color: #234">Night 20240101</h1>\n'
        '<a href="bias.png"><img src="bias.png" alt="bias"></a>\n'
        '<img src="sub/flat%20map.png" alt="flat" loading="lazy" style="margin-top: 3000px">\n'
        '<p><a href="summary.txt">summary</a> <a href="#top">top</a></p>',
    )

    report = check_page(page, session=session)

    assert report.problems == []
    assert report.loaded and report.title == "QC test"
    sizes = {
        image.src: (image.complete, image.natural_width, image.natural_height)
        for image in report.images
    }
    bias_size = png_size((tmp_path / "bias.png").read_bytes())
    flat_size = png_size((tmp_path / "sub" / "flat map.png").read_bytes())
    assert (bias_size, flat_size) == ((37, 23), (64, 48))
    assert sizes == {"bias.png": (True, *bias_size), "sub/flat%20map.png": (True, *flat_size)}
    assert report.broken_images == []
    # the request log works: it shows the page and both images, all of them local
    assert report.requests == [
        page.as_uri(),
        (tmp_path / "bias.png").as_uri(),
        (tmp_path / "sub" / "flat map.png").as_uri(),
    ]
    assert report.network_requests == [] and report.static_refs == []
    assert report.console_errors == [] and report.missing_links == []
    assert [link.href for link in report.links] == ["bias.png", "summary.txt", "#top"]


def test_data_uri_image_is_fine(session: BrowserSession, tmp_path: Path) -> None:
    png = write_png(tmp_path / "tiny.png", 5, 3).read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    page = write_page(tmp_path, f'<img src="{uri}" alt="inline"><img srcset="{uri} 1x">')

    report = check_page(page, session=session)

    assert report.problems == []
    assert [(i.complete, i.natural_width, i.natural_height) for i in report.images] == [
        (True, 5, 3),
        (True, 5, 3),
    ]
    assert uri in report.requests and report.network_requests == []


# --- pages that fail ----------------------------------------------------------------------------
def test_missing_image_is_broken(session: BrowserSession, tmp_path: Path) -> None:
    write_png(tmp_path / "present.png", 8, 8)
    page = write_page(tmp_path, '<img src="present.png"><img src="missing.png">')

    report = check_page(page, session=session)

    assert [image.src for image in report.broken_images] == ["missing.png"]
    assert report.broken_images[0].natural_width == 0
    assert report.network_requests == [] and report.static_refs == []
    assert (tmp_path / "missing.png").as_uri() in dict(report.failed_requests)
    assert any("broken image: src='missing.png'" in p for p in report.problems)
    assert any("ERR_FILE_NOT_FOUND" in p for p in report.problems)


@pytest.mark.parametrize(
    ("body", "head", "url"),
    [
        ('<img src="http://example.invalid/x.png">', "", "http://example.invalid/x.png"),
        (
            "<p>styled</p>",
            '<link rel=stylesheet href="https://cdn.example.invalid/a.css">',
            "https://cdn.example.invalid/a.css",
        ),
    ],
    ids=["img", "stylesheet"],
)
def test_network_resource_is_requested_and_referenced(
    session: BrowserSession, tmp_path: Path, body: str, head: str, url: str
) -> None:
    page = write_page(tmp_path, body, head=head)

    started = time.monotonic()
    report = check_page(page, session=session)
    elapsed = time.monotonic() - started

    assert elapsed < 10  # the dead proxy fails the request at once: nothing waits for a timeout
    assert report.loaded
    assert report.network_requests == [url]
    assert dict(report.failed_requests)[url] == "net::ERR_PROXY_CONNECTION_FAILED"
    assert [ref.url for ref in report.static_refs] == [url]
    assert f"request to the network: {url}" in report.problems
    assert any(ref_problem.endswith(url) for ref_problem in report.problems)


def test_css_background_in_style_block(session: BrowserSession, tmp_path: Path) -> None:
    page = write_page(
        tmp_path,
        '<div class="banner">QC</div>',
        head="<style>\n"
        ".banner { background-image: url(https://img.example.invalid/used.png); }\n"
        ".never-used { background: url('//img.example.invalid/unused.png') no-repeat; }\n"
        "/* url(https://img.example.invalid/commented-out.png) */\n"
        "</style>\n",
    )

    report = check_page(page, session=session)

    assert report.static_refs == [
        StaticRef("https://img.example.invalid/used.png", "<style>"),
        StaticRef("//img.example.invalid/unused.png", "<style>"),
    ]
    # the browser only fetches what a rule applies to: the source scan is what sees the other one
    assert report.network_requests == ["https://img.example.invalid/used.png"]
    assert report.images == []


def test_link_to_the_network_is_a_problem(session: BrowserSession, tmp_path: Path) -> None:
    page = write_page(tmp_path, '<a href="https://lco.global/">LCO</a>')

    report = check_page(page, session=session)

    assert report.network_requests == [] and report.console_errors == []  # nothing was loaded
    assert report.static_refs == [StaticRef("https://lco.global/", "<a href>")]
    assert report.problems == ["network reference in the HTML, <a href>: https://lco.global/"]


def test_link_to_missing_local_file(session: BrowserSession, tmp_path: Path) -> None:
    page = write_page(tmp_path, '<a href="night/details.html#flats">details</a>')

    report = check_page(page, session=session)

    assert [link.href for link in report.missing_links] == ["night/details.html#flats"]
    assert len(report.problems) == 1 and "link to a missing file" in report.problems[0]


# --- the session: no Selenium Manager, no network from Python, no process left ------------------
AUDIT_SCRIPT = """
import ipaddress, json, socket, sys
from pathlib import Path

import selenium.webdriver.common.selenium_manager as sm

def no_selenium_manager(*args, **kwargs):
    raise AssertionError("Selenium Manager was called")

sm.SeleniumManager.binary_paths = no_selenium_manager
seen = {"popen": [], "connect": [], "getaddrinfo": []}

def hook(event, args):
    if event == "subprocess.Popen":
        seen["popen"].append(str(args[0] or args[1][0]))
    elif event == "socket.connect" and isinstance(args[1], tuple):
        seen["connect"].append(str(args[1][0]))
    elif event == "socket.getaddrinfo":
        seen["getaddrinfo"].append(str(args[0]))

sys.addaudithook(hook)
from tests.browser import check_page
report = check_page(Path(sys.argv[1]))
print(json.dumps({**seen, "network_requests": report.network_requests}))
"""


def test_selenium_stays_local(tmp_path: Path) -> None:
    """Python side: only chromedriver is started and only loopback is contacted.

    Even with proxy variables set (selenium would send its localhost traffic there), with
    $SE_CHROMEDRIVER pointing elsewhere, and with Selenium Manager made to fail.
    """
    browser.require_browser()
    page = write_page(tmp_path, '<img src="https://example.invalid/a.png">')
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "http_proxy": "http://proxy.example.invalid:3128",
        "https_proxy": "http://proxy.example.invalid:3128",
        "HTTP_PROXY": "http://proxy.example.invalid:3128",
        "HTTPS_PROXY": "http://proxy.example.invalid:3128",
        "SE_CHROMEDRIVER": "/bin/false",
    }
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", AUDIT_SCRIPT, str(page)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["popen"] == [str(browser.CHROMEDRIVER)]
    assert seen["connect"] and set(seen["connect"]) <= {"127.0.0.1", "::1"}
    assert set(seen["getaddrinfo"]) <= {"localhost", "127.0.0.1", "::1"}
    # ... while the browser itself did try the network, and the checker saw it
    assert seen["network_requests"] == ["https://example.invalid/a.png"]


def test_session_leaves_no_process_or_directory(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", 4, 4)
    page = write_page(tmp_path, '<img src="a.png">')
    real_profile = Path.home() / ".config" / "chromium"
    started = time.time() - 1
    with BrowserSession() as own:
        tmp_dir = own.tmp_dir
        assert tmp_dir is not None and tmp_dir.is_dir()
        during = browser_processes(own.run_id, tmp_dir)
        assert check_page(page, session=own).problems == []
    assert len(during) >= 3  # chromedriver, chromium, its zygotes and renderers...
    assert browser_processes(own.run_id, tmp_dir) == []
    assert not tmp_dir.exists()
    # chromium writes crash-report settings under $HOME whatever its --user-data-dir: not the
    # real one (the session gives it a temporary HOME)
    touched = [p for p in real_profile.rglob("*") if p.stat().st_mtime >= started]
    assert touched == []
    for pid in during:  # gone, or a zombie waiting for init to reap it
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        assert state in (b"Z", b"X"), pid


def test_missing_browser_skips_with_instructions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(pytest.skip.Exception, match=r"run \./dev test.*chromium-driver"):
        check_page(write_page(tmp_path, "<p>x</p>"))


# --- the source scan alone (no browser) ---------------------------------------------------------
def test_find_network_refs_catches_every_form() -> None:
    html = """<!DOCTYPE html><html manifest="https://m.example.invalid/app.appcache"><head>
    <base href="https://base.example.invalid/">
    <meta http-equiv="refresh" content="5; url=https://refresh.example.invalid/">
    <link rel=icon href=//icons.example.invalid/favicon.ico>
    <script src="https://js.example.invalid/lib.js"></script>
    <script>fetch("wss://socket.example.invalid/feed")</script>
    <style>@import "https://css.example.invalid/a.css";
      .x { background: image-set("https://css.example.invalid/b.png" 1x); }</style>
    </head><body>
    <img srcset="data:image/png;base64,iVBO,RW0= 1x, https://img.example.invalid/2x.png 2x">
    <div style="background-image:url( 'HTTPS://style.example.invalid/bg.png' )"></div>
    <video poster="ftp://ftp.example.invalid/poster.png"></video>
    <svg><image xlink:href="http://svg.example.invalid/s.png"/></svg>
    <a href="&#104;ttps://entity.example.invalid/">x</a>
    <a href=" \\\\backslash.example.invalid/x">y</a>
    <iframe srcdoc="<img src='https://srcdoc.example.invalid/i.png'>"></iframe>
    </body></html>"""

    refs = find_network_refs(html)

    assert refs == [
        StaticRef("https://m.example.invalid/app.appcache", "<html manifest>"),
        StaticRef("https://base.example.invalid/", "<base href>"),
        StaticRef("https://refresh.example.invalid/", "<meta http-equiv=refresh>"),
        StaticRef("//icons.example.invalid/favicon.ico", "<link href>"),
        StaticRef("https://js.example.invalid/lib.js", "<script src>"),
        StaticRef("wss://socket.example.invalid/feed", "<script>"),
        StaticRef("https://css.example.invalid/a.css", "<style>"),
        StaticRef("https://css.example.invalid/b.png", "<style>"),
        StaticRef("https://img.example.invalid/2x.png", "<img srcset>"),
        StaticRef("HTTPS://style.example.invalid/bg.png", "<div style>"),
        StaticRef("ftp://ftp.example.invalid/poster.png", "<video poster>"),
        StaticRef("http://svg.example.invalid/s.png", "<image xlink:href>"),
        StaticRef("https://entity.example.invalid/", "<a href>"),
        StaticRef("\\\\backslash.example.invalid/x", "<a href>"),
        StaticRef("https://srcdoc.example.invalid/i.png", "<iframe srcdoc> <img src>"),
    ]


def test_find_network_refs_ignores_what_is_not_a_reference() -> None:
    html = """<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN"
      "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">
    <html xmlns="http://www.w3.org/1999/xhtml"><head><title>t</title>
    <style>/* see https://example.invalid/doc */ .a { color: red }</style></head><body>
    <!-- <img src="https://comment.example.invalid/x.png"> -->
    <p>Data from https://text.example.invalid/ (plain text, not a link)</p>
    <svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"></svg>
    <img src="a.png" srcset="b.png 2x, c%20d.png 3x"><a href="sub/x.html">x</a>
    <a href="mailto:ops@example.invalid">mail</a><a href="#top">top</a>
    <img src="data:image/png;base64,iVBORw0KGgo=">
    </body></html>"""

    assert find_network_refs(html) == []


def test_problems_of_a_page_that_did_not_load() -> None:
    report = PageReport(
        path=Path("/x/index.html"), url="file:///x/index.html", loaded=False, load_error="boom"
    )
    assert report.problems == ["the page did not load: file:///x/index.html (boom)"]
    loaded_but_unseen = PageReport(
        path=Path("/x/index.html"), url="file:///x/index.html", loaded=True
    )
    assert loaded_but_unseen.problems == [
        "the browser's request log does not show the page itself (file:///x/index.html)"
    ]
