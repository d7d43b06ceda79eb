"""Run the stage chains on a raw frame with the masters given. No database, no files.

Chains by OBSTYPE (a stage runs because it is in the chain):

- science (``EXPOSE``, ``STANDARD``): instrument signature -> bad-pixel mask -> bias -> dark ->
  flat;
- master inputs: ``BIAS``: instrument signature -> level removed; ``DARK``: -> bias -> rate;
  ``SKYFLAT``: -> bias -> dark -> normalised.

The worker (or the CLI) selects and reads the masters and passes them in as :class:`Masters`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from pylcogt.calibrations.prepare import normalise_flat, remove_bias_level, to_dark_rate
from pylcogt.frame import Frame, RawImage
from pylcogt.stages.badpixels import apply_bpm
from pylcogt.stages.bias import subtract_bias
from pylcogt.stages.calibrate import calibrate
from pylcogt.stages.dark import subtract_dark
from pylcogt.stages.flat import divide_flat
from pylcogt.stages.isr import remove_instrument_signature

__all__ = [
    "LoadedMaster",
    "Masters",
    "NEEDED_MASTERS",
    "reduce_science",
    "prepare_master_input",
    "common_master_err",
]


@dataclass(frozen=True)
class LoadedMaster:
    """A master read from disk, with its registry id, the sha256 of its file and its
    calibration status (``provisional`` or ``final``); ``fallback_later``: a flat taken after
    the frame's night because none exists before."""

    frame: Frame
    master_id: int | None = None
    fallback_later: bool = False
    checksum: str | None = None
    calibration_status: str | None = None


@dataclass(frozen=True)
class Masters:
    """The masters for one frame, by role; ``None`` where the chain does not need one."""

    bias: LoadedMaster | None = None
    dark: LoadedMaster | None = None
    flat: LoadedMaster | None = None
    bpm: LoadedMaster | None = None
    extra: dict = field(default_factory=dict)


#: Master types each OBSTYPE's chain needs (BPM is applied when one is registered).
NEEDED_MASTERS: dict[str, tuple[str, ...]] = {
    "BIAS": (),
    "DARK": ("BIAS",),
    "SKYFLAT": ("BIAS", "DARK"),
    "EXPOSE": ("BIAS", "DARK", "SKYFLAT"),
    "STANDARD": ("BIAS", "DARK", "SKYFLAT"),
}


def _require(master: LoadedMaster | None, role: str, frame: Frame) -> LoadedMaster:
    if master is None:
        raise ValueError(f"{frame.name}: the {role} master is required for this chain")
    return master


def _bias_dark(
    frame: Frame, masters: Masters, exptime_s: float, *, dark: bool, master_err: bool = True
) -> Frame:
    if masters.bpm is not None:
        frame = apply_bpm(frame, masters.bpm.frame, master_id=masters.bpm.master_id)
    bias = _require(masters.bias, "bias", frame)
    bias_frame = bias.frame if master_err else replace(bias.frame, err=None)
    frame = subtract_bias(frame, bias_frame, master_id=bias.master_id)
    if dark:
        master = _require(masters.dark, "dark", frame)
        dark_frame = master.frame if master_err else replace(master.frame, err=None)
        frame = subtract_dark(frame, dark_frame, exptime_s=exptime_s, master_id=master.master_id)
    return frame


def reduce_science(raw: RawImage, masters: Masters, *, exptime_s: float) -> Frame:
    """A science frame, fully calibrated (electrons).

    Bias, dark and flat run as one fused pass (:func:`~pylcogt.stages.calibrate.calibrate`)
    when every plane has an ERR, else as the three separate stages; the results are the same.
    """
    frame = remove_instrument_signature(raw)
    if masters.bpm is not None:
        frame = apply_bpm(frame, masters.bpm.frame, master_id=masters.bpm.master_id)
    bias = _require(masters.bias, "bias", frame)
    dark = _require(masters.dark, "dark", frame)
    flat = _require(masters.flat, "flat", frame)
    if all(p.err is not None for p in (frame, bias.frame, dark.frame, flat.frame)):
        return calibrate(
            frame, bias=bias.frame, dark=dark.frame, flat=flat.frame, exptime_s=exptime_s,
            bias_id=bias.master_id, dark_id=dark.master_id, flat_id=flat.master_id,
            fallback_later=flat.fallback_later,
        )  # fmt: skip
    frame = subtract_bias(frame, bias.frame, master_id=bias.master_id)
    frame = subtract_dark(frame, dark.frame, exptime_s=exptime_s, master_id=dark.master_id)
    return divide_flat(
        frame, flat.frame, master_id=flat.master_id, fallback_later=flat.fallback_later
    )


def prepare_master_input(
    raw: RawImage, obstype: str, masters: Masters, *, exptime_s: float, master_err: bool = True
) -> tuple[Frame, float | None]:
    """A frame ready to stack into a master of ``obstype``, and its level (bias: the removed
    level, electrons; flat: the normalisation, electrons; dark: None).

    ``master_err=False`` leaves the ERR of the masters subtracted (bias; dark for flats) out of
    the frame's ERR: every input of one stack carries the same master's error, which averaging
    does not reduce, so the caller adds it once to the stacked ERR
    (:func:`common_master_err`) instead of letting the stack divide it by sqrt(n)."""
    frame = remove_instrument_signature(raw)
    if obstype == "BIAS":
        return remove_bias_level(frame)
    if obstype == "DARK":
        ready = _bias_dark(frame, masters, exptime_s, dark=False, master_err=master_err)
        return to_dark_rate(ready, exptime_s), None
    if obstype == "SKYFLAT":
        return normalise_flat(
            _bias_dark(frame, masters, exptime_s, dark=True, master_err=master_err)
        )
    raise ValueError(f"no master is made from OBSTYPE {obstype!r}")


def common_master_err(
    err: np.ndarray, terms: list[tuple[object, np.ndarray, float]], n_inputs: int
) -> np.ndarray:
    """The stacked ERR (``sqrt(sum err_i^2) / n`` of inputs prepared with ``master_err=False``)
    plus the masters' errors that every input shares: ``terms`` holds one ``(master key, master
    ERR, coefficient)`` per input and master (the key names the master, e.g. its registry id),
    the coefficient being how that master's value enters the input (``1 / EXPTIME`` for the
    bias of a dark rate; ``1 / norm`` for the bias of a flat, ``EXPTIME / norm`` for its dark).
    A shared error enters the mean with the mean of its coefficients: ``sqrt(err^2 + sum_m
    (sum_i c_im / n)^2 ERR_m^2)``. float32, a new array."""
    by_master: dict[object, tuple[np.ndarray, float]] = {}
    for key, master_err, coefficient in terms:
        array, total = by_master.get(key, (master_err, 0.0))
        by_master[key] = (array, total + coefficient)
    variance = np.square(err, dtype=np.float32)
    for array, total in by_master.values():
        variance += np.square(array * np.float32(total / n_inputs), dtype=np.float32)
    return np.sqrt(variance, out=variance)
