"""Read a raw LCO frame into a :class:`~pylcogt.frame.RawImage`, validating its header once.

**Formats**

- **Single image** (SBIG ``kb..``, Spectral ``fs..``): one image HDU, in the primary or (fpacked)
  in the first extension. One amplifier.
- **Sinistro MEF** (``fa..``/``fl..``): header-only primary and four image extensions (``SCI``),
  one per amplifier in file order 1-4, each with its own GAIN, BIASSEC, DATASEC, DETSEC.
- **Sinistro legacy cube**: one ``4 x rows x cols`` HDU. Per-amplifier values come from numbered
  keywords in that header (``GAIN1``.., ``BIASSEC1``.., ``DATASEC1``.., ``DETSEC1``..) when present;
  ``GAIN`` may also be one number or a list string such as ``'[2.01, 1.99, 2.05, 2.02]'``. The
  unnumbered ``DATASEC``/``BIASSEC``/``DETSEC`` of a cube describe the old preprocessor's mosaic
  (e.g. ``[1:4094,1:4096]``), not an amplifier, and are ignored. Missing sections are derived with
  the MEF geometry (``pylcogt.simulate.geometry``, the real fa05 frame): ``h = 2048 / binning``
  light pixels per axis; DATASEC ``[1:h,1:h]`` (``[1:h,2:h+1]`` on amplifiers 1 and 4 when the
  cube has more than ``h`` rows: their raw row 1 is the extra edge row); BIASSEC the serial
  overscan columns after ``h`` less the first quarter of them (transitional columns); DETSEC the
  real frame's layout (1 top-left flipped in y, 2 bottom-left, 3 bottom-right flipped in x, 4
  top-right flipped in both). A cube's TRIMSEC that does not fit the binned mosaic but does once
  divided by the binning (legacy headers wrote it in unbinned pixels) is divided.
- ``.fits``, ``.fits.fz`` (tile-compressed) and ``.fits.gz``; recognised by content.

**Keyword precedence** (``merged_lookup``: first non-blank value wins)

- Frame keywords (INSTRUME, SATURATE, RDNOISE, TRIMSEC, CCDSUM, CRSTLKij): the primary header,
  then the image headers in order.
- Per-amplifier keywords (GAIN, BIASSEC, DATASEC, DETSEC, CCDSUM) of an MEF: the amplifier's own
  extension, then the primary. Real frames carry ``GAIN = 0.0`` and a whole-detector ``DATASEC``
  in the primary, so the extension must come first.

**Checks** (each raises :class:`~pylcogt.errors.UnprocessableFrameError` with the file in the
message and in ``path``, and the keyword in the message and in ``keyword``). The file's
structure and the presence of all declared data (:func:`pylcogt.io.scan.scan_fits` for plain
and fpacked files; gzip files are decompressed once in memory and checked against the
sizes their headers declare): a truncated or corrupt file fails here. INSTRUME a known family;
the amplifier count (4 for Sinistro, all of one raw shape); GAIN finite and > 0 for every
amplifier; RDNOISE finite and >= 0; SATURATE >= 0 (0 or absent: the family default of
:mod:`pylcogt.instruments`); CCDSUM ``'x y'``; every section parseable, inside its array, BIASSEC
not overlapping DATASEC; Sinistro DATASEC/DETSEC sizes agree with the binning and tile the mosaic
(:func:`pylcogt.sections.mosaic_layout`); TRIMSEC inside the mosaic (Sinistro) or inside DATASEC
(single image, raw coordinates); Sinistro crosstalk: all twelve ``CRSTLKij`` in the header, else
the ``crosstalk=`` matrix the caller passes from the instrument configuration, else an error
(keyword ``CRSTLK``). Header coefficients win over the caller's matrix. ``I + C`` must be
invertible.

**Pixels.** Stored integers (uint16 as int16 + ``BZERO = 32768``) become float32 in one pass
into arrays this function owns; there is no float64 copy of a frame. Pixels at or above the
saturation level (raw ADU, bias included) get :attr:`PixelFlag.SATURATED` in each amplifier's
``bpm``.

:func:`pixel_digest` tells whether two files hold the same pixels (ingest asks it only when two
files claim the same exposure).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from pylcogt.errors import UnprocessableFrameError
from pylcogt.frame import AmpImage, PixelFlag, RawImage
from pylcogt.instruments import FAMILY_DEFAULTS, family_from_camera
from pylcogt.io.raw_header import merged_lookup
from pylcogt.io.scan import scan_fits
from pylcogt.sections import Section, check_within, mosaic_layout, parse_section

__all__ = ["read_raw", "frame_name", "pixel_digest"]

_GZIP_MAGIC = b"\x1f\x8b"
_CCDSUM_RE = re.compile(r"^\s*(\d+)\s+(\d+)\s*$")
_SUFFIXES = (".fits.fz", ".fits.gz", ".fits", ".fit", ".fts")
#: Cards that describe the stored HDU, not the observation: dropped from the merged header
#: (BZERO/BSCALE above all: they must not follow float32 pixels into a product).
_STRUCTURAL = (
    "SIMPLE",
    "XTENSION",
    "BITPIX",
    "EXTEND",
    "PCOUNT",
    "GCOUNT",
    "BZERO",
    "BSCALE",
    "BLANK",
    "EXTNAME",
    "EXTVER",
    "INHERIT",
    "CHECKSUM",
    "DATASUM",
)
_PER_AMP_KEYS = ("GAIN", "BIASSEC", "DATASEC", "DETSEC")


def frame_name(path: str | os.PathLike) -> str:
    """The file name without its FITS suffix: ``lsc1m009-fa15-20261128-0004-e00``."""
    name = Path(path).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_raw(path: str | os.PathLike, *, crosstalk=None) -> RawImage:
    """Read and validate a raw frame; see the module docstring for formats and checks.

    ``crosstalk``: ``(4, 4)`` coefficients ``[i, j]`` (fraction of amplifier i+1's
    overscan-subtracted signal seen in amplifier j+1) from the instrument configuration, or a
    function ``(INSTRUME, CCDSUM) -> matrix or None`` looking them up (see
    :func:`pylcogt.instruments.crosstalk_lookup`); used for a Sinistro frame whose header has no
    ``CRSTLKij``.
    """
    path = Path(path)
    reader = _Reader(path)
    hdul, compression = _open(path, reader)
    with hdul:
        images = [hdu for hdu in hdul if _is_image(hdu)]
        if not images:
            raise reader.fail("has no image data (every HDU is header-only or a table)")
        primary = hdul[0].header
        headers = [primary] + [h.header for h in images if h is not hdul[0]]
        get = merged_lookup(headers, path)
        camera = str(reader.required(get, "INSTRUME")).strip().lower()
        family = family_from_camera(camera)
        if family is None:
            raise reader.fail(
                f"INSTRUME {camera!r} is not a known camera family (fa/fl Sinistro, "
                f"kb SBIG, fs Spectral)",
                "INSTRUME",
            )
        defaults = FAMILY_DEFAULTS[family]
        read_noise = reader.number(get, "RDNOISE")
        if not (math.isfinite(read_noise) and read_noise >= 0):
            raise reader.fail(f"RDNOISE = {read_noise} e- must be finite and >= 0", "RDNOISE")
        saturate = reader.number(get, "SATURATE", required=False)
        if saturate is not None and not (math.isfinite(saturate) and saturate >= 0):
            raise reader.fail(f"SATURATE = {saturate} ADU must be >= 0", "SATURATE")
        saturate_source = "header"
        if not saturate:
            saturate, saturate_source = defaults.saturate_adu, "family default"
        binning = reader.binning(get("CCDSUM"), required=family.value == "sinistro")

        extra: dict = {
            "path": str(path),
            "compression": compression,
            "binning": binning,
            "saturate_source": saturate_source,
        }
        if family.value == "sinistro":
            cube = len(images) == 1 and images[0].header.get("NAXIS") == 3
            n_found = int(images[0].header["NAXIS3"]) if cube else len(images)
            if n_found != defaults.n_amplifiers:
                what = "planes in its data cube" if cube else "image HDU(s)"
                raise reader.fail(
                    f"a Sinistro frame needs {defaults.n_amplifiers} amplifiers, found {n_found} "
                    f"{what} ({_shape_text([(h.header,) for h in images])})"
                )
            if cube:
                specs = reader.cube_amps(images[0], get, binning, defaults.detector_px)
                extra["format"] = "cube"
            else:
                specs = reader.mef_amps(images, primary, binning)
                extra["format"] = "mef"
        else:
            if len(images) != 1 or images[0].header.get("NAXIS") != 2:
                raise reader.fail(
                    f"a {family.value} frame must hold one 2-D image, found {len(images)} "
                    f"image HDU(s) of {_shape_text([(h.header,) for h in images])}",
                    "NAXIS",
                )
            specs = reader.single_amp(images[0], headers, binning)
            extra["format"] = "single"

        amps = []
        for index, (amp_header, planes, values) in enumerate(specs):
            data = _to_float32(planes, amp_header, path)
            amps.append((data, values))
            if index == 0:
                first_header = amp_header

    header = _merged_header(primary, first_header)
    saturate_f32 = np.float32(saturate)
    amp_images = []
    for data, values in amps:
        bpm = np.greater_equal(data, saturate_f32).view(np.uint8)
        bpm *= np.uint8(PixelFlag.SATURATED)
        amp_images.append(AmpImage(data=data, bpm=bpm, **values))

    matrix = None
    if family.value == "sinistro":
        shapes = {a.data.shape for a in amp_images}
        if len(shapes) != 1:
            raise reader.fail(
                f"the amplifiers' raw arrays differ in shape ({_shape_text(amps)}); crosstalk "
                f"needs them read out in step",
                "NAXIS1",
            )
        matrix, extra["crosstalk_source"] = reader.crosstalk(get, len(amp_images), crosstalk)
        reader.check_mosaic(amp_images, binning, header, get, cube=extra["format"] == "cube")
    else:
        reader.check_single_trim(amp_images[0], get)

    header["SATURATE"] = (float(saturate), f"[ADU] raw, bias included ({saturate_source})")
    return RawImage(
        amps=tuple(amp_images),
        header=header,
        name=frame_name(path),
        family=family.value,
        read_noise_e=float(read_noise),
        saturate_adu=float(saturate),
        crosstalk=matrix,
        extra=extra,
    )


_DIGEST_ROWS = 256  # rows converted at a time: bounded memory for large frames


def pixel_digest(path: str | os.PathLike) -> str:
    """Hex sha256 of a raw file's decoded pixels, independent of how the file stores them.

    For each image HDU in file order: its shape, then its values with BZERO/BSCALE applied, as
    little-endian int64 (integers with integer scaling) or float64. One exposure written plain,
    gzipped or tile-compressed without loss has one digest; an edited header does not change
    it. Raises :class:`~pylcogt.errors.UnprocessableFrameError` for an unreadable file.
    """
    path = Path(path)
    reader = _Reader(path)
    hdul, _ = _open(path, reader)
    digest = hashlib.sha256()
    with hdul:
        for hdu in hdul:
            if not _is_image(hdu):
                continue
            try:
                stored = np.asarray(hdu.data)
            except (ValueError, TypeError) as exc:  # undecodable tiles or data
                msg = f"pixel data cannot be decoded ({exc}); re-copy the file"
                raise reader.fail(msg) from None
            digest.update(repr(stored.shape).encode())
            _digest_values(digest, stored, hdu.header)
    return digest.hexdigest()


def _digest_values(digest, stored: np.ndarray, header: fits.Header) -> None:
    bscale = float(header.get("BSCALE", 1.0))
    bzero = float(header.get("BZERO", 0.0))
    integral = stored.dtype.kind in "iu" and bscale == 1.0 and bzero.is_integer()
    rows = stored.reshape(-1, stored.shape[-1]) if stored.ndim > 1 else stored.reshape(1, -1)
    for start in range(0, rows.shape[0], _DIGEST_ROWS):
        block = rows[start : start + _DIGEST_ROWS]
        if integral:
            values = block.astype("<i8") + int(bzero)
        else:
            values = block.astype("<f8") * bscale + bzero
        digest.update(values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes())


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _open(path: Path, reader: _Reader) -> tuple[fits.HDUList, str]:
    """Open the file for reading, its structure checked: ``(HDUList, compression)``.

    Plain and tile-compressed files go through :func:`scan_fits` first (headers only: cheap),
    so a truncated file or a non-FITS file fails with its reason. A gzip file (by content) is
    decompressed once, in memory (astropy's own gzip reading is ~4x slower), and the data each
    HDU declares is checked against the decompressed length.
    """
    try:
        with open(path, "rb") as handle:
            magic = handle.read(2)
    except OSError:
        scan_fits(path)  # missing, unreadable, a directory...: UnprocessableFrameError
        raise
    if magic != _GZIP_MAGIC:
        scan = scan_fits(path)
        hdul = fits.open(path, do_not_scale_image_data=True, lazy_load_hdus=False)
        return hdul, scan.compression
    try:
        buffer = gzip.decompress(path.read_bytes())
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        msg = f"is a truncated or corrupt gzip stream ({exc}); re-copy the file"
        raise reader.fail(msg) from None
    if not buffer.startswith(b"SIMPLE  ="):
        raise reader.fail("is not a FITS file: the gzip stream does not start with SIMPLE")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)  # truncation: checked below
        hdul = fits.open(io.BytesIO(buffer), do_not_scale_image_data=True, lazy_load_hdus=False)
    for index in range(len(hdul)):
        info = hdul.fileinfo(index)
        if info["datLoc"] + info["datSpan"] > len(buffer):
            hdul.close()
            raise reader.fail(
                f"is truncated: HDU {index} declares {info['datSpan']:,} data bytes (padded) at "
                f"offset {info['datLoc']:,} of the decompressed stream, which ends at "
                f"{len(buffer):,}; re-copy the file"
            )
    return hdul, "gz"


def _is_image(hdu) -> bool:
    if isinstance(hdu, fits.CompImageHDU):
        return True
    if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)):
        return int(hdu.header.get("NAXIS", 0)) > 0 and all(
            int(hdu.header.get(f"NAXIS{i}", 0)) > 0 for i in range(1, hdu.header["NAXIS"] + 1)
        )
    return False


def _shape_text(specs) -> str:
    shapes = []
    for item in specs:
        first = item[0]
        if isinstance(first, np.ndarray):
            shapes.append("x".join(str(n) for n in first.shape[::-1]))
        else:
            naxis = int(first.get("NAXIS", 0))
            shapes.append("x".join(str(first.get(f"NAXIS{i}")) for i in range(1, naxis + 1)))
    return ", ".join(shapes) or "nothing"


def _to_float32(stored: np.ndarray, header: fits.Header, path: Path) -> np.ndarray:
    """Stored pixels (scaling not applied) -> a new float32 array, in one pass (no float64)."""
    bscale = float(header.get("BSCALE", 1.0))
    bzero = float(header.get("BZERO", 0.0))
    out = np.empty(stored.shape, dtype=np.float32)
    try:
        if bscale == 1.0 and bzero == 0.0:
            np.copyto(out, stored, casting="unsafe")
        elif bscale == 1.0:
            np.add(stored, np.float32(bzero), out=out, dtype=np.float32, casting="unsafe")
        else:
            np.multiply(stored, np.float32(bscale), out=out, dtype=np.float32, casting="unsafe")
            out += np.float32(bzero)
    except (ValueError, TypeError) as exc:  # undecodable pixel data
        msg = f"{path.name}: pixel data cannot be decoded ({exc}); re-copy the file"
        raise UnprocessableFrameError(msg, path=str(path)) from None
    return out


def _merged_header(primary: fits.Header, image: fits.Header) -> fits.Header:
    """Primary cards, then the first image header's cards the primary lacks; no structural
    cards (NAXISn, BZERO, ...)."""
    header = primary.copy(strip=False)
    if image is not primary:
        for card in image.cards:
            key = card.keyword
            if key and key not in header and key not in ("COMMENT", "HISTORY", ""):
                header.append(card.copy() if hasattr(card, "copy") else card)
    for key in list(header.keys()):
        if key in _STRUCTURAL or re.fullmatch(r"NAXIS\d*", key) or key.startswith("ZNAXIS"):
            header.remove(key, ignore_missing=True, remove_all=True)
    return header


def _parse_list(value) -> list[float]:
    """``1.5``, ``'1.5'`` or ``'[2.01, 1.99, 2.05, 2.02]'`` -> floats; ValueError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    parts = [p for p in re.split(r"[,\s]+", text) if p]
    if not parts:
        raise ValueError("empty")
    return [float(p) for p in parts]


class _Reader:
    """Validation helpers bound to one file (for the messages)."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, message: str, keyword: str | None = None) -> UnprocessableFrameError:
        text = f"{self.path.name}: {message}"
        return UnprocessableFrameError(text, path=str(self.path), keyword=keyword)

    def required(self, get, keyword: str):
        value = get(keyword)
        if value is None:
            raise self.fail(f"required keyword {keyword} is missing or blank", keyword)
        return value

    def number(self, get, keyword: str, *, required: bool = True) -> float | None:
        value = self.required(get, keyword) if required else get(keyword)
        if value is None:
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            raise self.fail(f"{keyword} = {value!r} is not a number", keyword) from None

    def binning(self, value, *, required: bool) -> tuple[int, int]:
        if value is None:
            if required:
                raise self.fail("required keyword CCDSUM is missing or blank", "CCDSUM")
            return (1, 1)
        match = _CCDSUM_RE.match(str(value))
        if match is None or int(match.group(1)) < 1 or int(match.group(2)) < 1:
            raise self.fail(f"CCDSUM {value!r} is not of the form '2 2'", "CCDSUM")
        return int(match.group(1)), int(match.group(2))

    def section(self, value, keyword: str, where: str) -> Section | None:
        try:
            return parse_section("" if value is None else str(value))
        except ValueError as exc:
            raise self.fail(f"{where}{keyword}: {exc}", keyword) from None

    def gain(self, value, amp: int, n_amps: int, keyword: str, where: str) -> float:
        if value is None:
            raise self.fail(f"{where}{keyword} is missing: the gain is needed", keyword)
        try:
            values = _parse_list(value)
        except ValueError:
            raise self.fail(f"{where}{keyword} = {value!r} is not a number", keyword) from None
        if len(values) == 1:
            gain = values[0]
        elif len(values) == n_amps:
            gain = values[amp - 1]
        else:
            raise self.fail(
                f"{where}{keyword} = {value!r} lists {len(values)} gains for {n_amps} amplifiers",
                keyword,
            )
        if not (math.isfinite(gain) and gain > 0):
            raise self.fail(f"{where}{keyword} = {gain} e-/ADU must be > 0", keyword)
        return gain

    def amp_values(
        self, shape, gain, biassec: Section | None, datasec: Section | None, detsec, where: str
    ) -> dict:
        """Check one amplifier's sections against its raw array; AmpImage keyword arguments."""
        if datasec is None:
            raise self.fail(f"{where}DATASEC is missing: the light-sensitive region", "DATASEC")
        for keyword, section in (("DATASEC", datasec), ("BIASSEC", biassec)):
            if section is None:
                continue
            try:
                check_within(section, shape, keyword)
            except ValueError as exc:
                raise self.fail(f"{where}{exc}", keyword) from None
        if biassec is not None and _overlap(biassec, datasec):
            raise self.fail(f"{where}BIASSEC {biassec} overlaps DATASEC {datasec}", "BIASSEC")
        return {
            "gain": float(gain),
            "biassec": str(biassec) if biassec is not None else "UNKNOWN",
            "datasec": str(datasec),
            "detsec": str(detsec) if detsec is not None else "UNKNOWN",
        }

    # ---- layouts ---------------------------------------------------------------------------

    def single_amp(self, hdu, headers, binning):
        get = merged_lookup(headers, self.path)
        shape = hdu.data.shape
        values = self.amp_values(
            shape,
            self.gain(get("GAIN"), 1, 1, "GAIN", ""),
            self.section(get("BIASSEC"), "BIASSEC", ""),
            self.section(get("DATASEC"), "DATASEC", ""),
            None,
            "",
        )
        return [(hdu.header, hdu.data, values)]

    def mef_amps(self, images, primary, binning):
        specs = []
        n_amps = len(images)
        for amp, hdu in enumerate(images, start=1):
            where = f"amplifier {amp} (HDU {_hdu_label(hdu, amp)}) "
            get = merged_lookup([hdu.header, primary], self.path)
            if self.binning(get("CCDSUM"), required=True) != binning:
                raise self.fail(
                    f"{where}CCDSUM {get('CCDSUM')!r} differs from the frame's "
                    f"'{binning[0]} {binning[1]}'",
                    "CCDSUM",
                )
            if int(hdu.header.get("NAXIS", 0)) != 2:
                raise self.fail(f"{where}is not a 2-D image", "NAXIS")
            detsec = self.section(get("DETSEC"), "DETSEC", where)
            if detsec is None:
                raise self.fail(f"{where}DETSEC is missing: the mosaic position", "DETSEC")
            values = self.amp_values(
                hdu.data.shape,
                self.gain(get("GAIN"), amp, n_amps, "GAIN", where),
                self.section(get("BIASSEC"), "BIASSEC", where),
                self.section(get("DATASEC"), "DATASEC", where),
                detsec,
                where,
            )
            specs.append((hdu.header, hdu.data, values))
        return specs

    def cube_amps(self, hdu, get, binning, detector_px):
        cube = hdu.data
        n_amps, ny, nx = cube.shape
        derived = _derived_cube_sections(n_amps, ny, nx, binning, detector_px)
        specs = []
        for amp in range(1, n_amps + 1):
            where = f"amplifier {amp} (cube plane {amp}) "
            numbered = {key: get(f"{key}{amp}") for key in _PER_AMP_KEYS}
            gain_key = "GAIN" if numbered["GAIN"] is None else f"GAIN{amp}"
            gain_value = get("GAIN") if numbered["GAIN"] is None else numbered["GAIN"]
            sections = {}
            for key in ("BIASSEC", "DATASEC", "DETSEC"):
                if numbered[key] is not None:
                    sections[key] = self.section(numbered[key], f"{key}{amp}", where)
                elif derived is None:
                    raise self.fail(
                        f"{where}{key}{amp} is missing and cannot be derived: a {nx}x{ny} plane "
                        f"is smaller than a quarter of the {detector_px[0]}x{detector_px[1]} "
                        f"detector binned {binning[0]}x{binning[1]}",
                        f"{key}{amp}",
                    )
                else:
                    sections[key] = derived[amp - 1][key]
            values = self.amp_values(
                (ny, nx),
                self.gain(gain_value, amp, n_amps, gain_key, where),
                sections["BIASSEC"],
                sections["DATASEC"],
                sections["DETSEC"],
                where,
            )
            specs.append((hdu.header, cube[amp - 1], values))
        return specs

    # ---- frame-level checks ----------------------------------------------------------------

    def crosstalk(self, get, n_amps: int, given) -> tuple[np.ndarray, str]:
        keys = [f"CRSTLK{i}{j}" for i in range(1, n_amps + 1) for j in range(1, n_amps + 1)]
        keys = [k for k in keys if k[-1] != k[-2]]
        found = {k: get(k) for k in keys}
        if any(v is not None for v in found.values()):
            missing = [k for k, v in found.items() if v is None]
            if missing:
                raise self.fail(
                    f"crosstalk coefficient {missing[0]} is missing ({len(missing)} of "
                    f"{len(keys)} CRSTLKij absent)",
                    missing[0],
                )
            matrix = np.zeros((n_amps, n_amps))
            for key, value in found.items():
                try:
                    matrix[int(key[-2]) - 1, int(key[-1]) - 1] = float(value)
                except (TypeError, ValueError):
                    raise self.fail(f"{key} = {value!r} is not a number", key) from None
            source = "header"
        elif given is not None and (
            not callable(given) or (given := given(get("INSTRUME"), get("CCDSUM"))) is not None
        ):
            matrix = np.array(given, dtype=np.float64)
            if matrix.shape != (n_amps, n_amps):
                raise self.fail(
                    f"has no CRSTLKij and the configured crosstalk matrix is {matrix.shape}, "
                    f"not {n_amps}x{n_amps}",
                    "CRSTLK",
                )
            matrix = matrix.copy()
            np.fill_diagonal(matrix, 0.0)
            source = "configuration"
        else:
            raise self.fail(
                "Sinistro frame without crosstalk coefficients: no CRSTLKij "
                "(CRSTLK12..CRSTLK43) in the header and none configured for the instrument",
                "CRSTLK",
            )
        if not np.all(np.isfinite(matrix)) or np.abs(matrix).max() >= 1:
            raise self.fail(f"crosstalk coefficients must be finite and < 1 ({source})", "CRSTLK")
        if np.linalg.cond(np.eye(n_amps) + matrix) > 1e6:
            raise self.fail(f"crosstalk matrix I + C ({source}) is singular", "CRSTLK")
        return matrix, source

    def check_mosaic(self, amps, binning, header, get, *, cube: bool) -> None:
        datasecs = [parse_section(a.datasec) for a in amps]
        detsecs = [parse_section(a.detsec) for a in amps]
        try:
            (rows, cols), _ = mosaic_layout(datasecs, detsecs, binning)
        except ValueError as exc:
            raise self.fail(f"DATASEC/DETSEC: {exc}", "DETSEC") from None
        trimsec = self.section(get("TRIMSEC"), "TRIMSEC", "")
        if trimsec is None:
            return
        if cube and not _fits(trimsec, rows, cols):
            scaled = _unbinned_to_binned(trimsec, binning)
            if scaled is not None and _fits(scaled, rows, cols):
                header["TRIMSEC"] = (str(scaled), f"binned; header had {trimsec} unbinned")
                trimsec = scaled
        if trimsec.x_flipped or trimsec.y_flipped or not _fits(trimsec, rows, cols):
            raise self.fail(
                f"TRIMSEC {trimsec} does not lie inside the {cols}x{rows} mosaic", "TRIMSEC"
            )

    def check_single_trim(self, amp: AmpImage, get) -> None:
        trimsec = self.section(get("TRIMSEC"), "TRIMSEC", "")
        if trimsec is None:
            return
        datasec = parse_section(amp.datasec)
        if trimsec.x_flipped or trimsec.y_flipped or not _inside(trimsec, datasec):
            raise self.fail(f"TRIMSEC {trimsec} does not lie inside DATASEC {datasec}", "TRIMSEC")


def _hdu_label(hdu, amp: int) -> str:
    name = hdu.header.get("EXTNAME")
    return f"{amp}, {name}" if name else str(amp)


def _bounds(s: Section) -> tuple[int, int, int, int]:
    return min(s.x1, s.x2), max(s.x1, s.x2), min(s.y1, s.y2), max(s.y1, s.y2)


def _overlap(a: Section, b: Section) -> bool:
    ax1, ax2, ay1, ay2 = _bounds(a)
    bx1, bx2, by1, by2 = _bounds(b)
    return ax1 <= bx2 and bx1 <= ax2 and ay1 <= by2 and by1 <= ay2


def _inside(inner: Section, outer: Section) -> bool:
    ix1, ix2, iy1, iy2 = _bounds(inner)
    ox1, ox2, oy1, oy2 = _bounds(outer)
    return ox1 <= ix1 and ix2 <= ox2 and oy1 <= iy1 and iy2 <= oy2


def _fits(section: Section, rows: int, cols: int) -> bool:
    return _inside(section, Section(1, cols, 1, rows))


def _unbinned_to_binned(section: Section, binning: tuple[int, int]) -> Section | None:
    xb, yb = binning
    if (xb, yb) == (1, 1):
        return None
    x1, x2, y1, y2 = _bounds(section)
    if (x1 - 1) % xb or x2 % xb or (y1 - 1) % yb or y2 % yb:
        return None
    return Section((x1 - 1) // xb + 1, x2 // xb, (y1 - 1) // yb + 1, y2 // yb)


def _derived_cube_sections(n_amps, ny, nx, binning, detector_px):
    """Per-amplifier sections of a legacy cube without numbered section keywords, or None."""
    xb, yb = binning
    hx, hy = detector_px[0] // 2 // xb, detector_px[1] // 2 // yb
    if n_amps != 4 or nx < hx or ny < hy:
        return None
    s_x, s_y = 2 * hx * xb, 2 * hy * yb  # detector size, unbinned
    half_x, half_y = hx * xb, hy * yb
    detsecs = (
        Section(1, half_x, s_y, half_y + 1),
        Section(1, half_x, 1, half_y),
        Section(s_x, half_x + 1, 1, half_y),
        Section(s_x, half_x + 1, s_y, half_y + 1),
    )
    n_over = nx - hx
    out = []
    for amp in range(1, 5):
        y1 = 2 if (ny > hy and amp in (1, 4)) else 1
        datasec = Section(1, hx, y1, y1 + hy - 1)
        biassec = None
        if n_over >= 4:
            biassec = Section(hx + 1 + n_over // 4, nx, y1, y1 + hy - 1)
        out.append({"DATASEC": datasec, "BIASSEC": biassec, "DETSEC": detsecs[amp - 1]})
    return out
