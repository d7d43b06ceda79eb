"""What ingest needs from a raw frame's headers, validated once.

Keywords may sit in the primary header or in the first image extension (Sinistro MEF frames
keep them in the primary, fpacked single-image frames in the compressed extension): the first
header with a non-blank value wins, primary first.

Every value is one the registry can store, or the frame is refused with the keyword and what to
do: text without control characters (PostgreSQL refuses NUL in text); the values frames and
masters are matched on (SITEID, ENCID, TELID, INSTRUME, FILTER, CONFMODE: indexed, and an index
entry is limited) at most :data:`MAX_KEY_CHARS` characters; descriptive text (OBJECT, TELESCOP,
SITE) of any length, control characters replaced by U+FFFD; numbers finite (a NaN EXPTIME would
be NULL on SQLite); CCDSUM 1 to :data:`MAX_BINNING` per axis. The scan
(:mod:`pylcogt.io.scan`) already refuses header bytes that are not printable ASCII.

``exposure`` identifies the exposure a file holds, whatever its name or compression:
``site/camera/DAY-OBS/FRAMENUM`` (FRAMENUM zero-padded to 4 digits, as in ``ORIGNAME``), the
frame number taken from ``ORIGNAME`` when FRAMENUM is absent, else ``None``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits
from astropy.io.fits.verify import VerifyError

from pylcogt.db.models import CameraFamily
from pylcogt.errors import UnprocessableFrameError
from pylcogt.instruments import FAMILY_DEFAULTS, REDUCED_OBSTYPES, family_from_camera
from pylcogt.io.scan import FitsScan
from pylcogt.sections import parse_section

__all__ = [
    "FrameMetadata",
    "read_frame_metadata",
    "metadata_from_headers",
    "merged_lookup",
    "MAX_KEY_CHARS",
    "MAX_BINNING",
]

#: Longest value (characters) of a keyword frames and masters are matched on: those values sit
#: in composite indexes (PostgreSQL limits an index entry to 2704 bytes) and name the masters'
#: files (:func:`pylcogt.paths.safe_component` takes 128 characters).
MAX_KEY_CHARS = 128
#: Largest binning factor per axis (``binning`` is stored as ``'2x2'`` in 8 characters).
MAX_BINNING = 64
#: Numeric keywords the worker reads (per amplifier on Sinistro): refused at ingest when not
#: finite, in any header, since the frame cannot be reduced with them.
_FINITE_IF_PRESENT = ("GAIN", "RDNOISE", "SATURATE")

_BLANK = {"", "N/A", "UNKNOWN", "NONE"}
_CCDSUM_RE = re.compile(r"^\s*(\d+)\s+(\d+)\s*$")
_DAYOBS_RE = re.compile(r"^\d{8}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NOT_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
# ORIGNAME as written by the camera: <site><tel>-<camera>-<DAY-OBS>-<frame number>-<type>00.fits
_ORIGNAME_RE = re.compile(r"-(\d{8})-(\d{4,})-[a-z]\d\d(?:\.|$)")


@dataclass(frozen=True)
class FrameMetadata:
    """Header facts of one raw frame. Times are naive UTC; ``binning`` is ``'2x2'``."""

    obstype: str
    site: str
    enclosure: str
    telescope: str
    telescope_name: str | None
    camera: str
    family: CameraFamily
    dateobs: dt.datetime
    dayobs: dt.date
    exptime_s: float
    filter_name: str
    binning: str
    readout_mode: str
    object_name: str | None
    n_amplifiers: int
    detector_px: tuple[int, int]
    latitude_deg: float | None
    longitude_deg: float | None
    height_m: float | None
    site_name: str | None
    exposure: str | None = None


def merged_lookup(headers: Sequence[fits.Header], path: Path, *, first_index: int = 0):
    """A function ``get(keyword)`` returning the first non-blank value, in ``headers`` order.

    A card whose value astropy cannot parse raises UnprocessableFrameError naming it (and its
    header's index, counted from ``first_index``).
    """

    def get(keyword: str):
        for index, header in enumerate(headers, start=first_index):
            if keyword in header:
                try:
                    value = header[keyword]
                except (VerifyError, ValueError) as exc:
                    image = str(header.cards[keyword].image).rstrip()
                    msg = (
                        f"header {index} card {keyword!r} cannot be parsed: {image!r} ({exc}); "
                        f"fix the header or fetch a good copy from the archive"
                    )
                    raise _fail(path, msg, keyword) from None
                if isinstance(value, str):
                    value = value.strip()
                    if value.upper() in _BLANK:
                        continue
                if value is None or isinstance(value, fits.card.Undefined):
                    continue
                return value
        return None

    return get


def _fail(path: Path, message: str, keyword: str | None = None) -> UnprocessableFrameError:
    return UnprocessableFrameError(f"{path.name}: {message}", path=str(path), keyword=keyword)


def _required(path: Path, get, keyword: str):
    value = get(keyword)
    if value is None:
        raise _fail(
            path,
            f"required keyword {keyword} is missing or blank; fix the header "
            f"(e.g. with astropy.io.fits) and ingest the file again",
            keyword,
        )
    return value


def _float(path: Path, get, keyword: str, *, required: bool = True) -> float | None:
    value = _required(path, get, keyword) if required else get(keyword)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(path, f"{keyword} = {value!r} is not a number", keyword) from None
    if not math.isfinite(number):
        raise _fail(path, f"{keyword} = {value!r} is not a finite number; fix the header", keyword)
    return number


def _key_text(path: Path, keyword: str, value) -> str:
    """A value frames are matched on: no control characters, at most MAX_KEY_CHARS long."""
    text = str(value)
    bad = _CONTROL_RE.search(text)
    if bad is not None:
        msg = (f"{keyword} contains the control character {bad.group()!r}; fix the header "
               f"and ingest the file again")  # fmt: skip
        raise _fail(path, msg, keyword)
    if len(text) > MAX_KEY_CHARS:
        msg = (f"{keyword} is {len(text)} characters long ({text[:20]!r}...); frames are matched "
               f"on it and it may have at most {MAX_KEY_CHARS}: fix the header and ingest the "
               f"file again")  # fmt: skip
        raise _fail(path, msg, keyword)
    return text


def _free_text(value) -> str | None:
    """A descriptive value (OBJECT, TELESCOP, SITE), stored in full; control characters
    (which a header read by astropy cannot hold, but other callers' headers might) replaced."""
    return None if value is None else _CONTROL_RE.sub("\ufffd", str(value))


def _check_finite(path: Path, headers: Sequence[fits.Header], keyword: str) -> None:
    """``keyword``, where present (in any header), is not NaN or infinite."""
    for index, header in enumerate(headers):
        value = merged_lookup([header], path, first_index=index)(keyword)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            bad = not math.isfinite(value)
        else:
            bad = str(value).strip().lower() in _NOT_FINITE
        if bad:
            msg = (f"{keyword} = {value!r} is not a finite number; the frame cannot be reduced "
                   f"with it: fix the header and ingest the file again")  # fmt: skip
            raise _fail(path, msg, keyword)


def _frame_number(path: Path, get, dayobs: dt.date) -> int | None:
    """FRAMENUM, else the frame number of ORIGNAME (of the same night), else None."""
    value = get("FRAMENUM")
    if value is not None:
        text = str(value).strip()
        if isinstance(value, float) and value.is_integer():
            text = str(int(value))
        if isinstance(value, bool) or not text.isdigit():
            msg = (f"FRAMENUM = {value!r} is not a frame number (a whole number >= 0); fix the "
                   f"header or remove the card")  # fmt: skip
            raise _fail(path, msg, "FRAMENUM")
        return int(text)
    origname = get("ORIGNAME")
    match = _ORIGNAME_RE.search(str(origname)) if origname is not None else None
    if match is None or match.group(1) != f"{dayobs:%Y%m%d}":
        return None
    return int(match.group(2))


def _exposure(site: str, camera: str, dayobs: dt.date, frame_number: int | None) -> str | None:
    """``site/camera/DAY-OBS/FRAMENUM`` (the frame number as in ORIGNAME), or None."""
    if frame_number is None:
        return None
    return f"{site}/{camera}/{dayobs:%Y%m%d}/{frame_number:04d}"


def _binning(path: Path, get) -> tuple[int, int]:
    """CCDSUM ``'x y'`` as (x, y), each 1 to MAX_BINNING."""
    ccdsum = str(_required(path, get, "CCDSUM"))
    match = _CCDSUM_RE.match(ccdsum)
    if match is None:
        raise _fail(path, f"CCDSUM {ccdsum!r} is not of the form '2 2'", "CCDSUM")
    xbin, ybin = int(match.group(1)), int(match.group(2))
    if not (1 <= xbin <= MAX_BINNING and 1 <= ybin <= MAX_BINNING):
        msg = f"CCDSUM {ccdsum!r} is not a binning (1 to {MAX_BINNING} per axis); fix the header"
        raise _fail(path, msg, "CCDSUM")
    return xbin, ybin


def _detector_size(path: Path, get, images, family: CameraFamily, xbin: int, ybin: int):
    """Light-sensitive size in unbinned pixels: DETSIZE when it is a real size (many real
    headers say ``[1:0,1:0]``), else the family's nominal size for Sinistro, else DATASEC (or
    the image) times the binning."""
    try:
        detsize = parse_section(get("DETSIZE") or "")
    except ValueError:
        detsize = None
    if detsize is not None:
        return (detsize.nx, detsize.ny)
    if family is CameraFamily.SINISTRO:
        return FAMILY_DEFAULTS[family].detector_px
    try:
        datasec = parse_section(get("DATASEC") or "")
    except ValueError as exc:
        raise _fail(path, f"DATASEC: {exc}", "DATASEC") from None
    if datasec is not None:
        return (datasec.nx * xbin, datasec.ny * ybin)
    ny, nx = images[0][-2:]
    return (nx * xbin, ny * ybin)


def read_frame_metadata(scan: FitsScan) -> FrameMetadata:
    """Validate and collect the keywords ingest needs; raise UnprocessableFrameError naming the
    file and keyword when one is missing or malformed."""
    headers = [scan.hdus[0].header]
    headers += [h.image_header() for h in scan.hdus[1:] if h.kind in ("image", "compressed_image")]
    shapes = [
        h.shape for h in scan.hdus if h.kind in ("primary", "image", "compressed_image") and h.shape
    ]
    return metadata_from_headers(scan.path, headers, shapes)


def metadata_from_headers(
    path: Path, headers: Sequence[fits.Header], image_shapes: Sequence[tuple[int, ...]]
) -> FrameMetadata:
    """:func:`read_frame_metadata` on headers already read: the primary header first, then the
    image extensions' headers; ``image_shapes`` are the numpy shapes of the HDUs with pixels."""
    get = merged_lookup(headers, path)
    images = list(image_shapes)
    if not images:
        raise _fail(path, "has no image data (every HDU is header-only or a table)")

    obstype = str(_required(path, get, "OBSTYPE")).upper()
    if obstype not in REDUCED_OBSTYPES:
        raise _fail(
            path,
            f"OBSTYPE {obstype!r} is not reduced by pylcogt (it reduces "
            f"{', '.join(REDUCED_OBSTYPES)}); nothing to do for this file",
            "OBSTYPE",
        )

    camera = _key_text(path, "INSTRUME", _required(path, get, "INSTRUME")).lower()
    family = family_from_camera(camera)
    if family is None:
        raise _fail(
            path,
            f"INSTRUME {camera!r} is not a known camera family (fa/fl Sinistro, kb SBIG, "
            f"fs Spectral)",
            "INSTRUME",
        )

    raw_dateobs = str(_required(path, get, "DATE-OBS"))
    try:
        dateobs = dt.datetime.fromisoformat(raw_dateobs.replace("Z", "+00:00"))
    except ValueError:
        raise _fail(
            path, f"DATE-OBS {raw_dateobs!r} is not an ISO 8601 UTC time", "DATE-OBS"
        ) from None
    if dateobs.tzinfo is not None:
        dateobs = dateobs.astimezone(dt.timezone.utc).replace(tzinfo=None)

    raw_dayobs = str(_required(path, get, "DAY-OBS")).strip()
    if not _DAYOBS_RE.match(raw_dayobs):
        raise _fail(path, f"DAY-OBS {raw_dayobs!r} is not a night of the form YYYYMMDD", "DAY-OBS")
    try:
        dayobs = dt.datetime.strptime(raw_dayobs, "%Y%m%d").date()
    except ValueError:
        raise _fail(path, f"DAY-OBS {raw_dayobs!r} is not a valid date", "DAY-OBS") from None
    if abs((dateobs.date() - dayobs).days) > 1:
        raise _fail(
            path, f"DAY-OBS {raw_dayobs} is more than a day from DATE-OBS {raw_dateobs}", "DAY-OBS"
        )

    exptime = _float(path, get, "EXPTIME")
    if exptime < 0 or (obstype != "BIAS" and exptime <= 0):
        raise _fail(path, f"EXPTIME = {exptime} s is not valid for a {obstype} frame", "EXPTIME")

    filter_value = get("FILTER")
    if filter_value is None and obstype in ("SKYFLAT", "EXPOSE", "STANDARD"):
        raise _fail(path, f"FILTER is missing; a {obstype} frame needs its filter", "FILTER")
    filter_name = _key_text(path, "FILTER", filter_value) if filter_value is not None else ""
    xbin, ybin = _binning(path, get)
    for keyword in _FINITE_IF_PRESENT:
        _check_finite(path, headers, keyword)

    defaults = FAMILY_DEFAULTS[family]
    # MEF Sinistro: one image extension per amplifier; a legacy cube (or a shrunk test file)
    # holds the amplifiers in one HDU, and then the family's count applies
    if family is CameraFamily.SINISTRO:
        n_amps = len(images) if len(images) > 1 else defaults.n_amplifiers
    else:
        n_amps = 1
    detector_px = _detector_size(path, get, images, family, xbin, ybin)

    readout_mode = _key_text(path, "CONFMODE", get("CONFMODE") or "")
    site = _key_text(path, "SITEID", _required(path, get, "SITEID")).lower()
    frame_number = _frame_number(path, get, dayobs)
    return FrameMetadata(
        obstype=obstype,
        site=site,
        enclosure=_key_text(path, "ENCID", _required(path, get, "ENCID")).lower(),
        telescope=_key_text(path, "TELID", _required(path, get, "TELID")).lower(),
        telescope_name=_free_text(get("TELESCOP")),
        camera=camera,
        family=family,
        dateobs=dateobs,
        dayobs=dayobs,
        exptime_s=float(exptime),
        filter_name=filter_name,
        binning=f"{xbin}x{ybin}",
        readout_mode=readout_mode,
        object_name=_free_text(get("OBJECT")),
        n_amplifiers=int(n_amps),
        detector_px=(int(detector_px[0]), int(detector_px[1])),
        latitude_deg=_float(path, get, "LATITUDE", required=False),
        longitude_deg=_float(path, get, "LONGITUD", required=False),
        height_m=_float(path, get, "HEIGHT", required=False),
        site_name=_free_text(get("SITE")),
        exposure=_exposure(site, camera, dayobs, frame_number),
    )
