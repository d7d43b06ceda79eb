"""Turn an expected electron image into raw uint16 readout arrays.

Order of operations (per pixel): expected e- = (sky + stars) * flat + dark * t + cosmic rays;
Poisson noise (skipped for zero-second frames, whose only charge is cosmic rays); + Gaussian read
noise (e-); / gain (e-/ADU) -> ADU; + overscan bias level of the amplifier (ADU) + in the
light-sensitive region only the data offset and the fixed bias structure (ADU); clip at SATURATE
(raw ADU, where saturated pixels stick); Sinistro crosstalk ``raw_j += c_ij (raw_i - level_i)`` at
the same readout position; clip at SATURATE; round; clip to 0..65535; uint16.
"""

from __future__ import annotations

import numpy as np

from pylcogt.simulate.detector import DetectorModel
from pylcogt.simulate.geometry import mosaic_to_amps, sinistro_geometry

__all__ = ["to_readout", "readout"]


def to_readout(det: DetectorModel, image: np.ndarray, *, edge_row: float, fill: float = 0.0):
    """Light-sensitive array -> list of raw readout arrays (light region filled, rest ``fill``)."""
    spec, layout = det.spec, det.layout
    if spec.family == "sinistro":
        return mosaic_to_amps(image, sinistro_geometry(layout.n), edge_row=edge_row, fill=fill)
    if spec.family == "spectral":
        out = np.full(layout.raw_shape, fill, dtype=image.dtype)
        out[:, : layout.n] = image
        return [out]
    return [image]


def _bias_pattern(det: DetectorModel) -> list[np.ndarray]:
    if det._raw_bias_pattern is None:
        pattern = (det.bias_structure + np.float32(det.spec.data_offset)).astype(np.float32)
        det._raw_bias_pattern = to_readout(det, pattern, edge_row=1.0)
    return det._raw_bias_pattern


def readout(
    det: DetectorModel,
    rng: np.random.Generator,
    expected: np.ndarray,
    *,
    poisson: bool,
    bias_levels: tuple[float, ...],
) -> list[np.ndarray]:
    """Raw uint16 arrays (one per amplifier) for an expected-electron light-sensitive image."""
    spec = det.spec
    electrons = to_readout(det, expected, edge_row=0.5)
    patterns = _bias_pattern(det)
    adus = []
    for amp, signal in enumerate(electrons):
        counts = rng.poisson(signal).astype(np.float32) if poisson else signal.astype(np.float32)
        counts += np.float32(spec.read_noise) * rng.standard_normal(counts.shape, dtype=np.float32)
        adu = counts / np.float32(spec.gain[amp]) + np.float32(bias_levels[amp]) + patterns[amp]
        adus.append(np.minimum(adu, np.float32(spec.saturate)))
    if spec.crosstalk is not None:
        source = [a - np.float32(level) for a, level in zip(adus, bias_levels, strict=True)]
        for j, target in enumerate(adus):
            for i, src in enumerate(source):
                c = spec.crosstalk[i][j]
                if i != j and c:
                    target += np.float32(c) * src
            np.minimum(target, np.float32(spec.saturate), out=target)
    return [np.clip(np.rint(a), 0, 65535).astype(np.uint16) for a in adus]
