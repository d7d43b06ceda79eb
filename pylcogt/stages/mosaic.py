"""Put the amplifiers together into one :class:`~pylcogt.frame.Frame`.

Sinistro: each amplifier's DATASEC goes where its DETSEC says
(:func:`pylcogt.sections.mosaic_layout`): DETSEC is in unbinned detector pixels, offset by the
smallest DETSEC start over the amplifiers (sub-frame modes such as ``central_2k_2x2`` start at
1025) and divided by CCDSUM; a DATASEC and DETSEC running in opposite directions flip that
axis. Whatever lies outside DATASEC (serial and parallel overscan, the extra edge row of
amplifiers 1 and 4) is dropped. Cards:
``DATASEC = '[1:nx,1:ny]'`` of the mosaic, the amplifiers' sections as ``DATASECn``,
``DETSECn``, ``BIASSECn``, and ``LTV1 = LTV2 = 0`` (mosaic pixel = detector-mosaic pixel, in
which TRIMSEC is given).

Single-amplifier cameras: the array is cut to DATASEC, no flips. ``LTV1``/``LTV2`` (IRAF:
``image = physical + LTV``) record the offset from raw pixels, in which TRIMSEC is given;
CRPIX1/2 move with the cut.
"""

from __future__ import annotations

import numpy as np

from pylcogt.frame import Frame, RawImage
from pylcogt.sections import mosaic_layout, parse_section

__all__ = ["mosaic_amplifiers"]


def mosaic_amplifiers(raw: RawImage) -> Frame:
    """One image from the amplifiers: sci, err (if made) and bpm; see the module docstring."""
    header = raw.header.copy()
    unit = raw.amps[0].unit
    has_err = all(amp.err is not None for amp in raw.amps)
    if len(raw.amps) == 1:
        amp = raw.amps[0]
        section = parse_section(amp.datasec)
        rows, cols = section.to_slices()
        sci = np.ascontiguousarray(amp.data[rows, cols])
        err = np.ascontiguousarray(amp.err[rows, cols]) if has_err else None
        bpm = np.ascontiguousarray(amp.bpm[rows, cols])
        dx, dy = cols.start, rows.start
        header["DATASEC"] = (f"[1:{sci.shape[1]},1:{sci.shape[0]}]", "cut to raw DATASEC")
        header.add_history(f"Cut to raw DATASEC {section}")
        _shift_reference(header, dx, dy)
        header["LTV1"] = (-dx, "image x = raw x + LTV1")
        header["LTV2"] = (-dy, "image y = raw y + LTV2")
        return Frame(sci=sci, err=err, bpm=bpm, header=header, unit=unit, name=raw.name)

    binning = raw.extra.get("binning") or _ccdsum(header.get("CCDSUM", "1 1"))
    datasecs = [parse_section(amp.datasec) for amp in raw.amps]
    detsecs = [parse_section(amp.detsec) for amp in raw.amps]
    shape, placements = mosaic_layout(datasecs, detsecs, binning)
    sci = np.empty(shape, dtype=np.float32)
    err = np.empty(shape, dtype=np.float32) if has_err else None
    bpm = np.empty(shape, dtype=np.uint8)
    for amp, place in zip(raw.amps, placements, strict=True):
        sci[place.target] = place.oriented(amp.data)
        bpm[place.target] = place.oriented(amp.bpm)
        if err is not None:
            err[place.target] = place.oriented(amp.err)
    for index, amp in enumerate(raw.amps, start=1):
        header[f"DATASEC{index}"] = (amp.datasec, f"raw data section, amplifier {index}")
        header[f"DETSEC{index}"] = (amp.detsec, f"detector section, amplifier {index}")
        header[f"BIASSEC{index}"] = (amp.biassec, f"overscan section, amplifier {index}")
    header["DATASEC"] = (f"[1:{shape[1]},1:{shape[0]}]", "mosaic of the amplifiers' DATASEC")
    header["DETSEC"] = ("UNKNOWN", "see DETSECn")
    header["BIASSEC"] = ("UNKNOWN", "see BIASSECn")
    header["LTV1"] = (0, "image x = mosaic x + LTV1")
    header["LTV2"] = (0, "image y = mosaic y + LTV2")
    header.add_history(f"Mosaicked {len(raw.amps)} amplifiers by DETSEC, binning {binning}")
    return Frame(sci=sci, err=err, bpm=bpm, header=header, unit=unit, name=raw.name)


def _ccdsum(value: str) -> tuple[int, int]:
    x, y = str(value).split()
    return int(x), int(y)


def _shift_reference(header, dx: int, dy: int) -> None:
    """Move CRPIX1/2 by a cut of ``dx``, ``dy`` pixels at the start of each axis."""
    for key, delta in (("CRPIX1", dx), ("CRPIX2", dy)):
        value = header.get(key)
        if delta and isinstance(value, (int, float)) and not isinstance(value, bool):
            header[key] = value - delta
