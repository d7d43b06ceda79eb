"""``pylcogt qc`` as an operator runs it: two simulated SBIG nights reduced by the worker (one
twilight flat of the second night ruined by saturation), then the second night's page, checked in
Debian's headless chromium (it loads, every image is there, nothing refers to the network) and
against the simulator's known answers; a product gone bad is an error on the page and exit 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.simulate import simulate_night
from tests.browser import check_page

from .test_cli import run

FAST = ["--quiet-time", "0", "--poll", "0.1"]
N_BIAS = 3  # per set: 6 biases per night
READ_NOISE = 13.5  # e-, the simulated SBIG's (RDNOISE)


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("qc")
    for dayobs, seed in (("20261127", 21), ("20261128", 22)):
        simulate_night(root / "raw" / dayobs, camera="sbig", size=1024, dayobs=dayobs, seed=seed,
                       n_bias=N_BIAS, n_dark=2, n_flat=3, n_science=2,
                       filters=("rp",))  # fmt: skip
    # one evening flat of the second night: a quarter of it at the saturation level
    flat = sorted((root / "raw" / "20261128").glob("*-f00.fits"))[0]
    with fits.open(flat, mode="update") as hdul:
        hdu = next(h for h in hdul if h.data is not None)
        saturate = float(hdul[0].header["SATURATE"])
        hdu.data[: hdu.data.shape[0] // 4, :] = saturate
    config = ["--database-url", f"sqlite:///{root / 'registry.db'}", "--data-dir",
              str(root / "data")]  # fmt: skip
    run("ingest", str(root / "raw"), "-q", *config, cwd=root)
    run("worker", "--until-idle", *FAST, "-q", *config, cwd=root)
    out = run("qc", "20261128", "--output", str(root / "page"), "--json", *config, cwd=root)
    return {"root": root, "config": config, "data": json.loads(out.stdout), "flat": flat.name,
            "stderr": out.stderr}  # fmt: skip


def test_page_loads_in_a_real_browser_with_every_image_and_no_network(nights: dict) -> None:
    page = nights["root"] / "page" / "index.html"
    report = check_page(page)
    assert report.problems == [], report.problems
    data = nights["data"]
    named = {n for m in data["masters"] for n in m["images"].values()}
    named |= {n for f in data["frames"] for n in f["images"].values()}
    named |= set(data["images"].values())  # the night's trends
    assert data["images"] == {"trends": "night-trends.png"}
    shown = {Path(img.src).name: img for img in report.images}
    assert named == set(shown)
    for name, img in shown.items():
        width, height = _png_size(page.parent / name)
        assert (img.natural_width, img.natural_height) == (width, height), name
        assert width >= 600 and height >= 300
    assert report.title.startswith("pylcogt QC, night 20261128")


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_masters_of_the_night_with_their_numbers_and_previous_masters(nights: dict) -> None:
    data = nights["data"]
    assert data["dayobs"] == "20261128" and data["cameras"] == ["kb95"]
    by_type = {m["type"]: m for m in data["masters"] if m["filter"] in ("", "rp")}
    assert set(by_type) == {"BIAS", "DARK", "SKYFLAT", "BPM"}
    for master in data["masters"]:
        assert master["previous"] is not None, master["label"]  # night 1 made each kind too
        assert master["previous"]["dayobs"] == "2026-11-27"
        assert master["comparison"] is not None and master["error"] is None
    bias = by_type["BIAS"]
    n = bias["n_inputs"]
    assert n == 2 * N_BIAS
    # known answers: a master bias of n frames has noise RN / sqrt(n), and so must its ERR
    assert bias["stats"]["median_err"] == pytest.approx(READ_NOISE / math.sqrt(n), rel=0.03)
    assert bias["stats"]["rstd"] == pytest.approx(READ_NOISE / math.sqrt(n), rel=0.10)
    # two nights of the same detector agree within their noise, and the masters' ERR says so:
    # a master dark's ERR includes its master bias's error once (every input shares it; it
    # was 1.23 when the stack divided it by sqrt(n) as if independent)
    assert bias["comparison"]["z_rstd"] == pytest.approx(1.0, abs=0.1)
    assert by_type["DARK"]["comparison"]["z_rstd"] == pytest.approx(1.0, abs=0.1)
    assert bias["stats"]["biaslvl"] > 0
    # each input's level is in the master (IMLVLnnn): the master's BIASLVL is their mean
    levels = [f["level"] for f in bias["inputs"]]
    assert len(levels) == n and bias["stats"]["biaslvl"] == pytest.approx(np.mean(levels),
                                                                         abs=1e-3)  # fmt: skip
    flat = by_type["SKYFLAT"]
    assert flat["comparison"]["mode"] == "ratio"
    # one camera, one detector: the two nights' flats agree within their noise too
    assert flat["comparison"]["median"] == pytest.approx(1.0, abs=0.002)
    assert flat["comparison"]["z_rstd"] == pytest.approx(1.0, abs=0.15)
    assert flat["stats"]["median"] == pytest.approx(1.0, abs=0.1)
    # the saturated flat was screened out when checked (rejected), and the page says why
    (left,) = flat["left_out"]
    assert left["file"] == nights["flat"] and left["state"] == "rejected"
    assert "saturated" in left["reason"]
    assert flat["n_inputs"] == 2 * 3 - 1
    assert nights["flat"] not in {f["file"] for f in flat["inputs"]}
    assert len(flat["inputs"]) == 5 and all(f["level"] > 1000 for f in flat["inputs"])
    page = (nights["root"] / "page" / "index.html").read_text()
    assert nights["flat"] in page and "saturated" in page


def test_reduced_frames_have_thumbnails_and_numbers(nights: dict) -> None:
    data = nights["data"]
    assert data["summary"]["frames_reduced"] == len(data["frames"]) == 2
    assert data["summary"]["frames_not_reduced"] == 0 and data["errors"] == []
    for frame in data["frames"]:
        assert frame["sources"] > 10 and frame["fwhm_arcsec"] > 0
        assert frame["cosmic_ray_pixels"] is not None
        # a 9-arcmin field cannot be solved with Debian's Tycho-2 index files: said, not hidden
        assert frame["wcs"] == "failed" and "index files" in frame["wcs_reason"]
        assert frame["bias"] and frame["flat"]
        assert (nights["root"] / "page" / frame["images"]["thumbnail"]).stat().st_size > 10_000


def test_rerun_is_idempotent_and_a_broken_product_is_an_error_not_the_end(nights: dict) -> None:
    root, config = nights["root"], nights["config"]
    before = sorted(p.name for p in (root / "page").iterdir())
    out = run("qc", "20261128", "--output", str(root / "page"), *config, cwd=root)
    assert sorted(p.name for p in (root / "page").iterdir()) == before
    assert "page: " in out.stdout and "2 reduced frames" in out.stdout
    # a product truncated on disk: exit 1, the error on the page, everything else still there
    product = Path(nights["data"]["frames"][0]["product"])
    product.write_bytes(product.read_bytes()[:5000])
    out = run("qc", "20261128", "--output", str(root / "page2"), "--json", *config, cwd=root,
              check=False)  # fmt: skip
    assert out.returncode == 1, out.stderr
    data = json.loads(out.stdout)
    assert data["summary"]["errors"] == 1 and product.name in data["errors"][0]
    assert len(data["masters"]) == len(nights["data"]["masters"])
    assert sum(1 for f in data["frames"] if f["images"]) == 1
    page = (root / "page2" / "index.html").read_text()
    assert "cannot read" in page and product.name in page


def test_usage_errors(nights: dict) -> None:
    root, config = nights["root"], nights["config"]
    out = run("qc", "20261128", "--instrument", "zz99", *config, cwd=root, check=False)
    assert out.returncode == 2 and "no instrument 'zz99'" in out.stderr and "kb95" in out.stderr
    out = run("qc", "28/11/2026", *config, cwd=root, check=False)
    assert out.returncode == 2 and "YYYYMMDD" in out.stderr
    # a mistyped registry URL is an error, and creates no empty registry
    typo = root / "registy.db"
    out = run("qc", "20261128", "--database-url", f"sqlite:///{typo}", cwd=root, check=False)
    assert out.returncode == 2 and "no registry at" in out.stderr and not typo.exists()
    # an output path that is a file
    (root / "a-file").write_text("x")
    out = run("qc", "20261128", "--output", str(root / "a-file"), *config, cwd=root, check=False)
    assert out.returncode == 2 and "cannot use" in out.stderr
    # a night with nothing: a page that says so, exit 0
    out = run("qc", "20200101", "--output", str(root / "empty"), *config, cwd=root)
    assert "nothing is registered for night 20200101" in out.stdout
    assert "no master and no science frame" in (root / "empty" / "index.html").read_text()
