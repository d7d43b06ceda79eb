"""Solve a frame's astrometry: astrometry.net's ``solve-field`` on the brightest sources, then
pylcogt's TAN-SIP fit (:mod:`pylcogt.astrometry.sip`) to reference stars from the same index
files, matched to every source given.

``solve-field`` runs in a temporary directory (its outputs, temporary files and the config
file naming the index directory all live there; removed on every exit path) in its own process
group under a wall-clock bound: on timeout the whole group (``solve-field`` and the
``astrometry-engine`` it spawns, whose ``--cpulimit`` does not bound wall time) is killed and
the field counts as unsolved. ``solve-field`` (or ``query-starkd``) crashing or exiting with an
error on a frame is that frame's outcome too: unsolved, with a one-line reason naming the exit
status and the last line of the tool's error output. Only a missing or unrunnable installation
(no executable, no index files) raises :class:`~pylcogt.errors.ConfigurationError`.

Header cards written by :func:`wcs_cards` (besides the WCS itself, with a CD matrix):

============ ================================================================================
``ASTSTAT``  'solved' or 'failed'
``ASTREASN`` why it failed, or why the distortion order is lower than configured
``ASTINDEX`` the index file ``solve-field`` solved with
``ASTTIME``  seconds spent (solve-field, reference stars and fit)
``WCSNMAT``  reference stars in the final fit
``WCSRMS``   rms distance of those stars from the fitted positions [arcsec]
``WCSSIPO``  SIP order of the WCS (0: plain TAN)
============ ================================================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import signal
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from pylcogt.astrometry.config import INSTALL_HINT, AstrometryConfig
from pylcogt.astrometry.match import nearest_one_to_one
from pylcogt.astrometry.refstars import (
    IndexFile,
    find_executable,
    find_index_files,
    reference_stars,
    tool_failure,
)
from pylcogt.astrometry.sip import (
    FitError,
    refine_wcs,
    sip_order_of,
    sky_separation_arcsec,
    world_to_pixel,
)
from pylcogt.errors import ConfigurationError, ExternalToolError
from pylcogt.io.astrometry_files import read_wcs_header, write_xylist

__all__ = [
    "SolveResult",
    "remove_wcs",
    "solve",
    "solve_field_command",
    "engine_config_text",
    "wcs_cards",
    "apply_solution",
    "radec_for",
    "MIN_SOURCES",
    "STATUS_CARDS",
]

#: Fewer usable sources than this are not worth a search (a quad is 4 stars, plus verification).
MIN_SOURCES = 5
#: pylcogt's own astrometry cards (see the module docstring).
STATUS_CARDS = ("ASTSTAT", "ASTREASN", "ASTINDEX", "ASTTIME", "WCSNMAT", "WCSRMS", "WCSSIPO")
_BASE = "sources"
_SOLVED_WITH = re.compile(r"solved with index (\S+)\.\s*$", re.MULTILINE)
# celestial WCS cards a new solution replaces (raw LCO headers carry a pointing-based TAN)
_WCS_KEYS = re.compile(
    r"^(WCSAXES|CTYPE[12]|CRPIX[12]|CRVAL[12]|CUNIT[12]|CDELT[12]|CROTA[12]|CD[12]_[12]"
    r"|PC[12]_[12]|LONPOLE|LATPOLE|RADESYS|EQUINOX|(A|B|AP|BP)_ORDER|(A|B|AP|BP)_\d+_\d+"
    r"|A_DMAX|B_DMAX|WCSNAME|WCSERR)$"
)


@dataclass(frozen=True)
class SolveResult:
    """The outcome of :func:`solve`.

    ``status`` is 'solved' or 'failed'; ``reason`` says why it failed ('' when solved);
    ``note`` says why the distortion order is lower than configured, or that astrometry.net's
    own WCS was kept ('' otherwise). ``wcs`` maps 1-indexed pixels (``origin=1``) to ICRS
    degrees. ``n_matched`` stars entered the final fit with residual rms ``rms_arcsec`` (the
    rms of the on-sky distances); ``sip_order`` is 0 for a plain TAN. ``index_name`` is the
    index file ``solve-field`` solved with. ``match_index`` indexes the ``x, y`` given to
    :func:`solve` for those ``n_matched`` stars, and ``match_ra, match_dec`` are their reference
    positions (ICRS degrees): the astrometric residuals are ``wcs(x, y) - (ra, dec)``.
    """

    status: str
    reason: str = ""
    wcs: WCS | None = None
    n_matched: int = 0
    rms_arcsec: float = math.nan
    sip_order: int = 0
    elapsed_s: float = 0.0
    index_name: str = ""
    note: str = ""
    n_sources: int = 0
    n_reference: int = 0
    match_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    match_ra: np.ndarray = field(default_factory=lambda: np.zeros(0))
    match_dec: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def solved(self) -> bool:
        return self.status == "solved"


def engine_config_text(index_dir: Path) -> str:
    """The ``astrometry-engine`` config: only ``index_dir``'s index files, loaded one at a
    time (no ``inparallel``), instead of ``/etc/astrometry.cfg``."""
    return f"add_path {Path(index_dir)}\nautoindex\n"


def solve_field_command(
    xylist: Path,
    *,
    workdir: Path,
    engine_config: Path,
    width: int,
    height: int,
    ra_deg: float | None,
    dec_deg: float | None,
    pixscale_arcsec: float,
    config: AstrometryConfig,
    program: str | None = None,
) -> list[str]:
    """The ``solve-field`` command line for an xylist of 1-indexed pixel positions.

    Outputs go to ``workdir`` (``sources.wcs`` when solved, ``sources.axy``); every optional
    product is switched off. Source-list clean-up that needs astrometry.net's Python helpers
    (line removal, uniformization) is off: the sources are already clean and sorted. Without a
    finite ``ra_deg``/``dec_deg`` the search is blind (bounded by ``timeout_s``).
    """
    scale_low = pixscale_arcsec * (1.0 - config.scale_margin)
    scale_high = pixscale_arcsec * (1.0 + config.scale_margin)
    cmd = [
        program or config.solve_field,
        "--config", str(engine_config),
        "--dir", str(workdir),
        "--temp-dir", str(workdir),
        "--out", _BASE,
        "--overwrite",
        "--no-plots",
        "--no-remove-lines",
        "--uniformize", "0",
        "--width", str(int(width)),
        "--height", str(int(height)),
        "--x-column", "X",
        "--y-column", "Y",
        "--sort-column", "FLUX",
        "--crpix-center",
        "--code-tolerance", f"{config.code_tolerance:g}",
        "--pixel-error", f"{config.pixel_error_arcsec / pixscale_arcsec:.4g}",
        "--depth", config.depth,
        "--scale-units", "arcsecperpix",
        "--scale-low", f"{scale_low:.6g}",
        "--scale-high", f"{scale_high:.6g}",
        "--cpulimit", str(int(config.cpulimit_s)),
        "--new-fits", "none",
        "--index-xyls", "none",
        "--rdls", "none",
        "--match", "none",
        "--corr", "none",
        "--solved", "none",
        "--wcs", str(Path(workdir) / f"{_BASE}.wcs"),
    ]  # fmt: skip
    if _finite(ra_deg) and _finite(dec_deg):
        cmd += ["--ra", f"{ra_deg:.8f}", "--dec", f"{dec_deg:.8f}"]
        cmd += ["--radius", f"{config.search_radius_deg:g}"]
    cmd.append(str(xylist))
    return cmd


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def solve(
    x,
    y,
    flux,
    *,
    width: int,
    height: int,
    ra_deg: float | None,
    dec_deg: float | None,
    pixscale_arcsec: float,
    config: AstrometryConfig | None = None,
) -> SolveResult:
    """Solve a frame from its clean sources.

    ``x, y``: 1-indexed FITS pixel positions of every usable source (no saturated or
    bad-pixel ones); ``flux``: any brightness measure (larger is brighter). The brightest
    ``config.max_sources`` go to ``solve-field``; all of them are matched to the reference
    stars for the TAN-SIP fit. ``ra_deg, dec_deg``: the pointing (header RA/DEC), degrees;
    ``pixscale_arcsec``: the nominal pixel scale of this (possibly binned) frame.

    Returns a failed result when the field cannot be solved within ``config.timeout_s`` or
    astrometry.net crashes or exits with an error on it; raises ConfigurationError when
    astrometry.net or its index files are missing (or the program cannot be run at all).
    """
    config = config or AstrometryConfig()
    start = time.monotonic()
    program = find_executable(config.solve_field)
    find_executable(config.query_starkd)
    index_files = find_index_files(config.index_dir)

    x, y, flux = (np.asarray(a, dtype=np.float64).ravel() for a in (x, y, flux))
    usable = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    given_index = np.flatnonzero(usable)  # positions in the arrays given, of x[i] below
    x, y, flux = x[usable], y[usable], flux[usable]
    if x.size < MIN_SOURCES:
        return SolveResult(
            "failed",
            f"only {x.size} usable sources (needs {MIN_SOURCES})",
            n_sources=int(x.size),
            elapsed_s=time.monotonic() - start,
        )
    diagonal_arcmin = math.hypot(width, height) * pixscale_arcsec / 60.0
    smallest = min(f.header.scale_low_arcmin for f in index_files)
    if smallest > diagonal_arcmin:
        largest = max(f.header.scale_high_arcmin for f in index_files)
        reason = (
            f"the index files in {config.index_dir} hold quads of {smallest:.0f}-{largest:.0f} "
            f"arcmin, larger than this field ({diagonal_arcmin:.1f} arcmin across): install "
            f"index files for smaller scales (Gaia 5200 or 2MASS 4100 series) and give their "
            f"directory with --index-dir"
        )
        return _failed(reason, x.size, start)
    brightest = np.argsort(-flux, kind="stable")[: config.max_sources]

    with tempfile.TemporaryDirectory(prefix="pylcogt-astrometry-") as tmp:
        workdir = Path(tmp)
        xylist = workdir / f"{_BASE}.xyls"
        write_xylist(xylist, x[brightest], y[brightest], flux[brightest])
        engine_config = workdir / "engine.cfg"
        engine_config.write_text(engine_config_text(config.index_dir))
        cmd = solve_field_command(
            xylist,
            workdir=workdir,
            engine_config=engine_config,
            width=width,
            height=height,
            ra_deg=ra_deg,
            dec_deg=dec_deg,
            pixscale_arcsec=pixscale_arcsec,
            config=config,
            program=program,
        )
        log_path = workdir / "solve-field.log"
        problem = _run_bounded(cmd, workdir, log_path, config.timeout_s)
        if problem:
            return _failed(problem, x.size, start)
        log = "".join(path.read_text(errors="replace")
                      for path in (log_path, _stderr_path(log_path)))  # fmt: skip
        wcs_path = workdir / f"{_BASE}.wcs"
        if not wcs_path.exists():
            return _failed("astrometry.net found no solution", x.size, start)
        wcs0 = _wcs_from_header(read_wcs_header(wcs_path))
        found = _SOLVED_WITH.search(log)
        index_name = Path(found.group(1)).name if found else ""
        result = _refit(wcs0, x, y, width, height, config, index_files, workdir, index_name,
                        start)  # fmt: skip
    # the matched sources as indices into the arrays the caller gave
    return dataclasses.replace(result, match_index=given_index[result.match_index])


def _stderr_path(log_path: Path) -> Path:
    return log_path.with_suffix(".err")


def _run_bounded(cmd: list[str], workdir: Path, log_path: Path, timeout_s: float) -> str:
    """Run ``cmd`` in its own process group, output to ``log_path`` (error output next to it,
    ``.err``). Returns '' when it ran to the end, else why not, on one line: the timeout (the
    group is killed), or its exit status or signal and the last line of its error output: a
    crash or error exit is this field's outcome, not a broken installation. ConfigurationError
    only when the program cannot be started at all."""
    with open(log_path, "wb") as log, open(_stderr_path(log_path), "wb") as err:
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=err,
                start_new_session=True,
            )
        except OSError as exc:  # on PATH but not runnable (permissions, a missing interpreter)
            msg = f"cannot run {cmd[0]}: {exc}: {INSTALL_HINT}"
            raise ConfigurationError(msg) from None
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return f"no solution within {timeout_s:g} s"
        except BaseException:
            _kill_group(proc)
            raise
    if returncode != 0:
        return tool_failure(cmd[0], returncode, _stderr_path(log_path).read_text(errors="replace"))
    return ""


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group led by ``proc`` (not yet reaped, so the group id is still
    ours), then reap the leader."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # the leader's children (astrometry-engine) get the same signal but die asynchronously:
    # wait until none of the group is running any more (zombies waiting for init count as gone)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and _group_running(proc.pid):
        time.sleep(0.01)


def _group_running(pgid: int) -> bool:
    """A process of group ``pgid`` that is not a zombie exists (Linux ``/proc``)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return False  # cannot tell: the signal was sent
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _failed(reason: str, n_sources: int, start: float) -> SolveResult:
    return SolveResult(
        "failed", reason, n_sources=int(n_sources), elapsed_s=time.monotonic() - start
    )


def _wcs_from_header(header: fits.Header) -> WCS:
    """astrometry.net's WCS. It writes ``EQUINOX = 2000`` (which reads as FK5), but its index
    catalogues (Tycho-2, Gaia, 2MASS) are ICRS: say so."""
    with warnings.catch_warnings():
        # wcslib may normalise astrometry.net's LATPOLE/EQUINOX cards: harmless, silence it
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
        wcs.wcs.radesys = "ICRS"
        wcs.wcs.equinox = np.nan
        wcs.wcs.set()
    return wcs


def _refit(
    wcs0: WCS,
    x: np.ndarray,
    y: np.ndarray,
    width: int,
    height: int,
    config: AstrometryConfig,
    index_files: list[IndexFile],
    workdir: Path,
    index_name: str,
    start: float,
) -> SolveResult:
    """pylcogt's TAN-SIP fit, starting from astrometry.net's WCS ``wcs0``."""
    centre_ra, centre_dec = (
        float(v[0]) for v in wcs0.all_pix2world([(width + 1) / 2], [(height + 1) / 2], 1)
    )
    pixscale = float(np.sqrt(abs(np.linalg.det(wcs0.pixel_scale_matrix))))
    # the field's half-diagonal with 10% to spare, plus the matching radius
    radius = 0.55 * math.hypot(width, height) * pixscale + config.match_radius_arcsec / 3600
    try:
        refs = reference_stars(
            centre_ra, centre_dec, radius, config=config, index_files=index_files, workdir=workdir
        )
    except ExternalToolError as exc:  # query-starkd failed on this field: unsolved, not fatal
        return _failed(f"no reference stars: {exc}", x.size, start)
    common = dict(index_name=index_name, n_sources=int(x.size), n_reference=len(refs))
    try:
        fit = refine_wcs(
            wcs0,
            x,
            y,
            refs.ra,
            refs.dec,
            width=width,
            height=height,
            order=config.sip_order,
            match_radius_arcsec=config.match_radius_arcsec,
            min_stars_per_coeff=config.min_stars_per_coeff,
        )
    except FitError as exc:
        i_src, i_ref, rms = _match_quality(wcs0, x, y, refs.ra, refs.dec, width, height, config)
        return SolveResult(
            "solved",
            wcs=wcs0,
            n_matched=int(i_src.size),
            rms_arcsec=rms,
            sip_order=sip_order_of(wcs0),
            elapsed_s=time.monotonic() - start,
            note=f"kept astrometry.net's WCS: {exc}",
            match_index=i_src,
            match_ra=np.asarray(refs.ra, dtype=np.float64)[i_ref],
            match_dec=np.asarray(refs.dec, dtype=np.float64)[i_ref],
            **common,
        )
    return SolveResult(
        "solved",
        wcs=fit.wcs,
        n_matched=fit.n_matched,
        rms_arcsec=fit.rms_arcsec,
        sip_order=fit.sip_order,
        elapsed_s=time.monotonic() - start,
        note=fit.note,
        match_index=np.asarray(fit.source_index, dtype=np.intp),
        match_ra=np.asarray(refs.ra, dtype=np.float64)[fit.ref_index],
        match_dec=np.asarray(refs.dec, dtype=np.float64)[fit.ref_index],
        **common,
    )


def _match_quality(wcs, x, y, ra, dec, width, height, config):
    """Reference stars matched under ``wcs`` (no fit): ``(source indices, reference indices,
    rms in arcsec)``."""
    rx, ry, idx = world_to_pixel(wcs, ra, dec, width=width, height=height)
    pixscale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
    i_ref, i_src = nearest_one_to_one(rx, ry, x, y, config.match_radius_arcsec / pixscale)
    if i_ref.size == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp), math.nan
    ra_fit, dec_fit = wcs.all_pix2world(x[i_src], y[i_src], 1)
    sep = sky_separation_arcsec(ra_fit, dec_fit, ra[idx[i_ref]], dec[idx[i_ref]])
    return (np.asarray(i_src, dtype=np.intp), np.asarray(idx[i_ref], dtype=np.intp),
            float(np.sqrt(np.mean(sep**2))))  # fmt: skip


def wcs_cards(result: SolveResult) -> list[tuple[str, object, str]]:
    """``(keyword, value, comment)`` cards for the SCI header: the WCS (TAN or TAN-SIP, with a
    CD matrix, ICRS) when solved, and the status cards listed in the module docstring. When
    unsolved only status cards: whatever WCS the header had (the telescope's pointing) stays,
    and ``ASTSTAT = 'failed'`` says it is not an astrometric solution."""
    cards: list[tuple[str, object, str]] = [
        ("ASTSTAT", result.status, "astrometric solution: solved or failed")
    ]
    text = result.reason or result.note
    if text:
        cards.append(("ASTREASN", text, "why astrometry failed or was reduced"))
    if not result.solved or result.wcs is None:
        cards.append(("ASTTIME", round(result.elapsed_s, 2), "[s] time spent on astrometry"))
        return cards
    header = result.wcs.to_header(relax=True)
    cd = result.wcs.pixel_scale_matrix
    for card in header.cards:
        key = card.keyword
        if key.startswith(("PC", "CDELT")) or not _WCS_KEYS.match(key):
            continue  # PC/CDELT become CD below; MJDREF, DATE-OBS and the like are not ours
        value = card.value.item() if isinstance(card.value, np.generic) else card.value
        cards.append((key, value, card.comment))
        if key == "CRVAL2":
            for i in range(2):
                for j in range(2):
                    cards.append(
                        (f"CD{i + 1}_{j + 1}", float(cd[i, j]), "[deg/pixel] WCS CD matrix")
                    )
    cards += [
        ("ASTINDEX", result.index_name, "astrometry.net index that solved the field"),
        ("ASTTIME", round(result.elapsed_s, 2), "[s] time spent on astrometry"),
        ("WCSNMAT", int(result.n_matched), "reference stars in the WCS fit"),
        ("WCSRMS", round(float(result.rms_arcsec), 4), "[arcsec] rms residual of the WCS fit"),
        ("WCSSIPO", int(result.sip_order), "SIP distortion order (0: plain TAN)"),
    ]
    return cards


def remove_wcs(header: fits.Header) -> None:
    """Delete every celestial WCS card (CD/PC/CDELT/CROTA, SIP, CTYPE, ...) from ``header``."""
    for key in dict.fromkeys(key for key in header if _WCS_KEYS.match(key)):
        del header[key]


def apply_solution(header: fits.Header, result: SolveResult) -> None:
    """Write :func:`wcs_cards` into ``header`` in place. When solved, every celestial WCS card
    already there (CD/PC/CDELT/CROTA, SIP, CTYPE, ...) is removed first, so no stale card mixes
    with the new solution; earlier status cards are always replaced."""
    for key in [key for key in header if key in STATUS_CARDS]:
        del header[key]
    if result.solved and result.wcs is not None:
        remove_wcs(header)
    for key, value, comment in wcs_cards(result):
        header[key] = (value, comment)


def radec_for(result: SolveResult, x, y) -> tuple[np.ndarray, np.ndarray]:
    """``(ra, dec)`` in degrees of 1-indexed FITS pixel positions ``x, y`` (same shape as the
    input); NaN everywhere when the frame is unsolved. For 0-indexed numpy positions add 1."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not result.solved or result.wcs is None:
        nan = np.full(np.broadcast(x, y).shape, np.nan)
        return nan, nan.copy()
    ra, dec = result.wcs.all_pix2world(x, y, 1)
    return np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64)
