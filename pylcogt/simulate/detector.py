"""Fixed per-camera detector maps: bias structure, dark current, hot pixels, bad columns, flats.

All maps cover the light-sensitive array (the Sinistro mosaic, or the SBIG/Spectral DATASEC) in
final orientation, numpy ``[row, col]`` 0-indexed; truth lists use 1-indexed FITS ``x, y`` of the
final (mosaicked / trimmed) frame. Units: bias structure ADU, dark current e-/s per (binned) pixel,
flat response dimensionless (mean 1 over the central 25% of the final frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pylcogt.simulate.cameras import CameraSpec, Layout

__all__ = ["DetectorModel", "make_detector"]

DARK_MEDIAN = 0.15  # e-/s per pixel
HOT_FRACTION = 5e-4
VIGNETTING = 0.10  # response drops by this at r = 1 (half-width of the frame)
PIXEL_RMS = 0.01


@dataclass
class DetectorModel:
    spec: CameraSpec
    layout: Layout
    bias_structure: np.ndarray  # ADU, float32, light-sensitive array
    dark: np.ndarray  # e-/s, float32
    hot_pixels: list[tuple[int, int, float]]  # final-frame x, y (1-indexed), e-/s
    bad_columns: list[tuple[int, float]]  # final-frame x (1-indexed), flat response
    flat_params: dict
    _base_flat: np.ndarray
    _flats: dict[str, np.ndarray] = field(default_factory=dict)
    _filter_terms: dict[str, tuple[float, float]] = field(default_factory=dict)
    _raw_bias_pattern: list[np.ndarray] | None = None

    def flat(self, filter_name: str) -> np.ndarray:
        """Flat response for a filter (float32, normalised, light-sensitive array)."""
        if filter_name not in self._flats:
            ny, nx = self._base_flat.shape
            ax, ay = self._filter_terms[filter_name]
            gx = np.linspace(-1, 1, nx, dtype=np.float32)
            gy = np.linspace(-1, 1, ny, dtype=np.float32)
            flat = self._base_flat * (1 + ay * gy)[:, None] * (1 + ax * gx)[None, :]
            self._flats[filter_name] = (flat / self._central_mean(flat)).astype(np.float32)
        return self._flats[filter_name]

    def _central_mean(self, image: np.ndarray) -> float:
        final = image[self.layout.trim_slices]
        ny, nx = final.shape
        return float(np.mean(final[ny // 4 : ny // 4 + ny // 2, nx // 4 : nx // 4 + nx // 2]))

    def final(self, image: np.ndarray) -> np.ndarray:
        """The final (trimmed) part of a light-sensitive-array map."""
        return image[self.layout.trim_slices]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Low-frequency random field: a (scale+1)^2 normal grid, bilinearly interpolated."""
    knots = np.arange(scale + 1)
    eye = np.eye(scale + 1)
    wy = np.array([np.interp(np.linspace(0, scale, shape[0]), knots, e) for e in eye]).T
    wx = np.array([np.interp(np.linspace(0, scale, shape[1]), knots, e) for e in eye]).T
    return wy @ rng.standard_normal((scale + 1, scale + 1)) @ wx.T


def make_detector(
    spec: CameraSpec, layout: Layout, rng: np.random.Generator, filters: tuple[str, ...]
) -> DetectorModel:
    n = layout.n
    shape = (n, n)
    tx, ty = layout.trim[0] - 1, layout.trim[2] - 1  # final = array - (tx, ty)
    yy = np.arange(n, dtype=np.float32)[:, None]
    xx = np.arange(n, dtype=np.float32)[None, :]

    # Bias structure (ADU): fixed column pattern + a gentle gradient along the readout.
    columns = rng.normal(0.0, 0.6, n).astype(np.float32)
    columns[rng.choice(n, size=max(1, n // 512), replace=False)] += 3.0
    bias = (columns[None, :] + (1.5 * yy / n) + (0.5 * xx / n)).astype(np.float32)

    # Dark current (e-/s): smooth +-10% variation, 3% pixel scatter, hot pixels.
    smooth = _smooth_noise(rng, shape, 3).astype(np.float32)
    dark = DARK_MEDIAN * (1 + 0.1 * smooth / max(np.abs(smooth).max(), 1e-6))
    dark *= 1 + 0.03 * rng.standard_normal(shape, dtype=np.float32)
    dark = np.clip(dark, 0, None).astype(np.float32)
    final_n = layout.final_shape
    n_hot = max(1, round(HOT_FRACTION * final_n[0] * final_n[1]))
    flat_index = np.sort(rng.choice(final_n[0] * final_n[1], n_hot, replace=False))
    hy, hx = np.divmod(flat_index, final_n[1])
    hot_rate = np.exp(rng.uniform(np.log(5.0), np.log(50.0), n_hot)).astype(np.float32)
    dark[hy + ty, hx + tx] = hot_rate
    hot_pixels = [
        (int(x) + 1, int(y) + 1, round(float(r), 4))
        for x, y, r in zip(hx, hy, hot_rate, strict=True)
    ]

    # Flat response: vignetting + dust donuts + 1% pixel-to-pixel + low bad columns.
    cx, cy = (n - 1) / 2 + 0.03 * n, (n - 1) / 2 - 0.02 * n
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (n / 2) ** 2
    flat = 1 - VIGNETTING * r2
    dust = []
    for _ in range(3):
        dx, dy = rng.uniform(0.15 * n, 0.85 * n, 2)
        radius = max(3.0, 0.008 * n * rng.uniform(0.7, 1.3))
        depth = rng.uniform(0.01, 0.03)
        half = int(np.ceil(2 * radius))
        x0, y0 = max(0, int(dx) - half), max(0, int(dy) - half)
        sl = (slice(y0, int(dy) + half + 1), slice(x0, int(dx) + half + 1))
        d = np.hypot(xx[:, sl[1]] - dx, yy[sl[0], :] - dy)
        flat[sl] *= 1 - depth * np.exp(-0.5 * ((d - radius) / (0.25 * radius)) ** 2)
        dust.append(
            [
                round(float(dx - tx + 1), 2),
                round(float(dy - ty + 1), 2),
                round(radius, 2),
                round(float(depth), 4),
            ]
        )
    flat = flat * (1 + PIXEL_RMS * rng.standard_normal(shape, dtype=np.float32))
    bad = []
    for col in sorted(
        rng.choice(np.arange(final_n[1] // 8, final_n[1] * 7 // 8), 2, replace=False)
    ):
        resp = float(rng.uniform(0.1, 0.3))
        flat[:, col + tx] *= resp
        bad.append((int(col) + 1, round(resp, 4)))
    flat = flat.astype(np.float32)

    model = DetectorModel(
        spec=spec,
        layout=layout,
        bias_structure=bias,
        dark=dark,
        hot_pixels=hot_pixels,
        bad_columns=bad,
        flat_params={},
        _base_flat=flat,
    )
    for name in filters:
        model._filter_terms[name] = tuple(float(v) for v in rng.normal(0.0, 0.01, 2))
    model.flat_params = {
        "vignetting": f"1 - {VIGNETTING} * r^2, r = distance from the optical centre / half-width",
        "optical_centre_xy": [round(cx - tx + 1, 2), round(cy - ty + 1, 2)],
        "pixel_to_pixel_rms": PIXEL_RMS,
        "dust_donuts_x_y_radius_depth": dust,
        "filter_gradients_ax_ay": {
            k: [round(a, 5) for a in v] for k, v in model._filter_terms.items()
        },
        "normalisation": "mean 1 over the central 25% (half width, half height) of the final frame",
    }
    return model
