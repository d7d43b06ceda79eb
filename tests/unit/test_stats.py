"""Robust statistics kernels: known answers, edge cases and equality with a slow reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pylcogt.stats import (
    FLAG_NO_VALID_INPUT,
    RSTD_PER_MAD,
    ClippedMean,
    StackBand,
    StackWorkspace,
    clip_stack_band,
    robust_std,
    sigma_clipped_mean,
)


# --- the obvious, slow reference ----------------------------------------------------------
def reference_stack(values, masks=None, errs=None, *, k=3.0):
    """Per-pixel loop straight from the definitions (float64, numpy's median)."""
    n_frames, rows, cols = values.shape
    mean = np.full((rows, cols), np.nan, np.float32)
    err = np.full((rows, cols), np.nan, np.float32)
    bpm = np.zeros((rows, cols), np.uint8)
    n_kept = np.zeros((rows, cols), np.uint16)
    for r in range(rows):
        for c in range(cols):
            x = values[:, r, c].astype(np.float64)
            valid = np.isfinite(x)
            if masks is not None:
                valid &= masks[:, r, c] == 0
            if errs is not None:
                e = errs[:, r, c].astype(np.float64)
                valid &= np.isfinite(e)
            if not valid.any():
                bpm[r, c] = 1
                continue
            med = np.median(x[valid])
            mad = np.median(np.abs(x[valid] - med))
            keep = valid & (np.abs(x - med) <= k * (1.4826 * mad))
            n = int(keep.sum())
            n_kept[r, c] = n
            if n == 0:
                bpm[r, c] = 1
                continue
            mean[r, c] = x[keep].sum() / n
            if errs is not None:
                err[r, c] = np.sqrt((e[keep] ** 2).sum()) / n
    return mean, (err if errs is not None else None), bpm, n_kept


def assert_matches_reference(values, masks=None, errs=None, *, k=3.0):
    got = clip_stack_band(values, masks, errs, k=k)
    mean, err, bpm, n_kept = reference_stack(values, masks, errs, k=k)
    np.testing.assert_array_equal(got.n_kept, n_kept)
    np.testing.assert_array_equal(got.bpm, bpm)
    np.testing.assert_array_equal(got.mean, mean)  # NaN where nothing kept, in both
    if errs is None:
        assert got.err is None
    else:
        np.testing.assert_allclose(got.err, err, rtol=2e-7, atol=0)
        np.testing.assert_array_equal(np.isnan(got.err), np.isnan(err))
    return got


# --- robust_std and sigma_clipped_mean ----------------------------------------------------
def test_robust_std_known_answer():
    # median 3, |x - 3| = 2 1 0 1 97 -> MAD 1
    assert robust_std(np.array([1, 2, 3, 4, 100], np.float32)) == pytest.approx(1.4826, abs=0)
    assert RSTD_PER_MAD == 1.4826


def test_robust_std_of_gaussian_is_sigma():
    rng = np.random.default_rng(1)
    data = rng.normal(50, 4, 200_000).astype(np.float32)
    data[:2000] = 1e6  # 1% outliers barely move it
    assert robust_std(data) == pytest.approx(4, rel=0.02)


def test_robust_std_ignores_masked_and_non_finite_and_is_nan_when_empty():
    data = np.array([1, 2, 3, 4, 100, np.nan, np.inf, -np.inf, 5e9], np.float32)
    mask = np.zeros(data.shape, bool)
    mask[-1] = True
    assert robust_std(data, mask) == pytest.approx(1.4826, abs=0)
    assert math.isnan(robust_std(np.array([np.nan, 1.0]), np.array([0, 1])))
    with pytest.raises(ValueError, match="mask shape"):
        robust_std(data, mask[:3])


def test_sigma_clipped_mean_known_answer():
    # median 3, MAD 1, rstd 1.4826, 3.5 rstd = 5.19: 100 goes, the rest stay
    got = sigma_clipped_mean(np.array([1, 2, 3, 4, 100], np.float32))
    assert got == ClippedMean(mean=2.5, rstd=1.4826, median=3.0, n_used=4)


def test_sigma_clipped_mean_default_k_is_3_5_and_the_bound_is_kept():
    # median 0 and MAD 1 (deviations 0 1 1 1 1 b b): the bound is k * 1.4826 exactly
    bound = 3.5 * (1.4826 * 1.0)
    data = np.array([0, 1, -1, 1, -1, bound, -np.nextafter(bound, np.inf)], np.float64)
    got = sigma_clipped_mean(data)
    assert got.n_used == 6  # +bound kept, the value just beyond -bound rejected
    assert got.mean == pytest.approx(bound / 6)
    assert sigma_clipped_mean(data, k=3.0).n_used == 5


def test_sigma_clipped_mean_rejects_outliers_of_a_gaussian_bias_frame():
    rng = np.random.default_rng(2)
    frame = rng.normal(1000, 7, (512, 512)).astype(np.float32)
    hits = rng.random(frame.shape) < 0.01
    frame[hits] += rng.uniform(200, 5000, hits.sum()).astype(np.float32)
    got = sigma_clipped_mean(frame)
    assert got.mean == pytest.approx(1000, abs=0.05)
    assert got.rstd == pytest.approx(7, rel=0.02)
    assert frame.size * 0.985 < got.n_used < frame.size * 0.99  # hits + 0.05% Gaussian tails
    assert np.mean(frame) > 1010  # the plain mean would not do


def test_sigma_clipped_mean_mask_and_non_finite():
    data = np.array([[1, 2, 3], [4, 1e9, np.nan]], np.float32)
    mask = np.array([[0, 0, 0], [0, 1, 0]], np.uint8)
    got = sigma_clipped_mean(data, mask)
    assert got.n_used == 4 and got.mean == 2.5 and got.median == 2.5


def test_sigma_clipped_mean_mad_zero_keeps_only_the_median_value():
    got = sigma_clipped_mean(np.array([5, 5, 5, 6, 4], np.float32))
    assert got == ClippedMean(5.0, 0.0, 5.0, 3)


def test_sigma_clipped_mean_of_nothing_is_nan():
    got = sigma_clipped_mean(np.full(4, np.nan, np.float32))
    assert math.isnan(got.mean) and math.isnan(got.rstd) and got.n_used == 0


@pytest.mark.parametrize("k", [0, -1, math.inf, math.nan, "3"])
def test_k_must_be_positive_and_finite(k):
    with pytest.raises(ValueError, match="k must be a positive finite number"):
        sigma_clipped_mean(np.ones(3), k=k)
    with pytest.raises(ValueError, match="k must be a positive finite number"):
        clip_stack_band(np.ones((3, 1, 1), np.float32), k=k)


# --- the stack kernel: known answers ------------------------------------------------------
def synthetic_stack(n_frames, shape=(40, 50), *, sigma=7.0, seed=3):
    """Bias-like stack: level 1000 + structure, Gaussian read noise, cosmic rays, hot pixels."""
    rng = np.random.default_rng(seed)
    truth = (1000 + np.linspace(-5, 5, shape[1])[None, :] * np.ones((shape[0], 1))).astype(
        np.float32
    )
    hot = rng.random(shape) < 0.01
    truth[hot] += 800  # hot pixels: in every frame, so kept
    values = truth + rng.normal(0, sigma, (n_frames, *shape)).astype(np.float32)
    cosmics = rng.random(values.shape) < 0.01
    values[cosmics] += rng.uniform(100, 20_000, cosmics.sum()).astype(np.float32)
    return values, truth, cosmics


def test_stack_rejects_cosmic_rays_and_noise_scales_as_sigma_over_sqrt_n():
    sigma = 7.0
    residual_rms = {}
    for n_frames in (16, 64):
        values, truth, cosmics = synthetic_stack(n_frames, sigma=sigma)
        got = clip_stack_band(values)
        residual = got.mean - truth
        # every cosmic ray rejected: no pixel pulled up by one
        assert np.abs(residual).max() < 6 * sigma / np.sqrt(n_frames)
        assert (got.n_kept <= n_frames - cosmics.sum(axis=0)).all()
        assert got.n_kept.mean() > 0.95 * n_frames and (got.bpm == 0).all()
        residual_rms[n_frames] = residual.std()
        # clipping a Gaussian at 3 rstd costs ~1% more noise than the plain mean
        assert residual.std() == pytest.approx(sigma / np.sqrt(n_frames), rel=0.08)
    assert residual_rms[16] / residual_rms[64] == pytest.approx(2, rel=0.1)


def test_stack_error_from_err_planes():
    # errors 7 everywhere but 14 in frame 0, which no pixel rejects (no outliers there):
    # err = sqrt(14**2 + (n - 1) * 7**2) / n
    values, _, cosmics = synthetic_stack(9, (6, 7))
    values[0] = np.median(values, axis=0)
    errs = np.full(values.shape, 7.0, np.float32)
    errs[0] = 14.0
    got = clip_stack_band(values, errs=errs)
    n = got.n_kept.astype(np.float64)
    np.testing.assert_allclose(got.err, np.sqrt(14.0**2 + (n - 1) * 7.0**2) / n, rtol=1e-6)
    assert (got.n_kept < 9).any()  # some cosmic rays were rejected along the way
    assert got.err.dtype == np.float32 and got.n_kept.dtype == np.uint16


# --- the stack kernel: equality with the reference, edge cases ----------------------------
@pytest.mark.parametrize("n_frames", [1, 2, 3, 4, 5, 8, 31, 64])
def test_stack_equals_reference_on_random_data(n_frames):
    rng = np.random.default_rng(n_frames)
    values = rng.normal(0, 1, (n_frames, 9, 11)).astype(np.float32)
    values[rng.random(values.shape) < 0.05] *= 50  # outliers
    errs = rng.uniform(0.5, 2, values.shape).astype(np.float32)
    assert_matches_reference(values)
    assert_matches_reference(values, errs=errs)
    assert_matches_reference(values, errs=errs, k=2.0)


@pytest.mark.parametrize("n_frames", [2, 3, 6, 7, 20])
def test_stack_equals_reference_on_integer_data_with_ties(n_frames):
    # few distinct values: ties at the median, MAD == 0 in many pixels, values at the bound
    rng = np.random.default_rng(100 + n_frames)
    values = rng.integers(0, 4, (n_frames, 12, 13)).astype(np.float32)
    values[rng.random(values.shape) < 0.1] = 1000
    got = assert_matches_reference(values, errs=np.ones_like(values))
    assert (got.n_kept >= 1).all()  # with k=3 something is always kept


def test_stack_equals_reference_with_masks_nan_inf_and_bad_errors():
    rng = np.random.default_rng(7)
    values = rng.normal(100, 3, (10, 15, 16)).astype(np.float32)
    masks = (rng.random(values.shape) < 0.3).astype(np.uint8) * 2  # any nonzero flag masks
    values[rng.random(values.shape) < 0.05] = np.nan
    values[rng.random(values.shape) < 0.02] = np.inf
    values[rng.random(values.shape) < 0.02] = -np.inf
    errs = rng.uniform(1, 2, values.shape).astype(np.float32)
    errs[rng.random(values.shape) < 0.05] = np.nan
    masks[:, 0, 0] = 1  # all masked
    values[:, 0, 1] = np.nan  # all NaN
    values[:, 0, 2] = 1e30  # masked except one frame (below)
    masks[:, 0, 2] = 1
    masks[4, 0, 2] = 0
    errs[4, 0, 2] = 1.0
    got = assert_matches_reference(values, masks, errs)
    assert got.bpm[0, 0] == got.bpm[0, 1] == FLAG_NO_VALID_INPUT
    assert np.isnan(got.mean[0, 0]) and np.isnan(got.err[0, 1]) and got.n_kept[0, 0] == 0
    assert got.mean[0, 2] == np.float32(1e30) and got.n_kept[0, 2] == 1
    assert_matches_reference(values, masks.astype(bool))
    assert_matches_reference(values, masks.astype(np.int16))


def test_even_count_median_is_the_mean_of_the_middle_two():
    # median (2 + 4) / 2 = 3, |x - 3| = 3 1 1 97 -> MAD (1 + 3) / 2 = 2, bound 8.9: 100 goes
    values = np.array([0, 2, 4, 100], np.float32).reshape(4, 1, 1)
    got = clip_stack_band(values)
    assert got.n_kept[0, 0] == 3 and got.mean[0, 0] == 2


def _bound_exactly_at(x: float, mad: float) -> float:
    """A k for which k * (1.4826 * mad) == x exactly (in float64)."""
    k = x / (1.4826 * mad)
    for _ in range(50):
        product = k * (1.4826 * mad)
        if product == x:
            return k
        k = np.nextafter(k, np.inf if product < x else -np.inf)
    raise AssertionError("no exact k found")


def test_value_exactly_at_the_bound_is_kept():
    # median 0, MAD 1 (deviations 0 1 1 1 1 ...), then one value at +bound and one just past
    bound = np.float32(5.5)
    k = _bound_exactly_at(float(bound), 1.0)
    beyond = np.nextafter(bound, np.float32(np.inf))
    column = np.array([0, 1, -1, 1, -1, 0, 0, bound, -beyond], np.float32)
    got = clip_stack_band(column.reshape(-1, 1, 1), k=k)
    assert got.n_kept[0, 0] == 8  # bound kept, -beyond rejected
    assert got.mean[0, 0] == np.float32(bound / 8)
    assert_matches_reference(column.reshape(-1, 1, 1), k=k)


def test_mad_zero_keeps_only_values_equal_to_the_median():
    values = np.array([7, 7, 7, 8, 6], np.float32).reshape(5, 1, 1)
    got = clip_stack_band(values)
    assert got.n_kept[0, 0] == 3 and got.mean[0, 0] == 7


def test_one_and_two_frames_reject_nothing():
    values = np.array([[[1.0, 5.0]], [[1000.0, 5.0]]], np.float32)  # (2, 1, 2)
    got = clip_stack_band(values, errs=np.full_like(values, 2.0))
    np.testing.assert_array_equal(got.n_kept, [[2, 2]])
    np.testing.assert_array_equal(got.mean, [[500.5, 5.0]])
    np.testing.assert_allclose(got.err, [[np.sqrt(8) / 2] * 2])
    single = clip_stack_band(values[:1], errs=np.full_like(values[:1], 2.0))
    np.testing.assert_array_equal(single.mean, values[0])
    np.testing.assert_array_equal(single.err, [[2.0, 2.0]])


def test_tiny_k_can_reject_everything_and_flags_it():
    # even n with distinct middle values: only |x - med| <= k * rstd survive; k tiny -> none
    values = np.array([1, 2], np.float32).reshape(2, 1, 1)
    got = clip_stack_band(values, k=0.1)
    assert got.n_kept[0, 0] == 0 and got.bpm[0, 0] == FLAG_NO_VALID_INPUT
    assert np.isnan(got.mean[0, 0])
    assert_matches_reference(values, k=0.1)


def test_inputs_are_not_modified_and_out_and_workspace_are_used():
    rng = np.random.default_rng(9)
    values = rng.normal(0, 1, (6, 4, 5)).astype(np.float32)
    values[0, 0, 0] = np.nan
    masks = rng.random(values.shape) < 0.2
    errs = np.ones_like(values)
    before = (values.copy(), masks.copy(), errs.copy())
    out = StackBand(
        np.empty((4, 5), np.float32),
        np.empty((4, 5), np.float32),
        np.empty((4, 5), np.uint8),
        np.empty((4, 5), np.uint16),
    )
    workspace = StackWorkspace()
    got = clip_stack_band(values, masks, errs, out=out, workspace=workspace)
    assert got is out
    again = clip_stack_band(values, masks, errs, workspace=workspace)
    for a, b in zip(got, again, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip((values, masks, errs), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_non_contiguous_and_float64_inputs():
    rng = np.random.default_rng(10)
    big = rng.normal(0, 1, (8, 10, 12))
    view = big[:, ::2, 1::2]  # float64, strided
    assert_matches_reference(view.astype(np.float32))
    got = clip_stack_band(view)
    np.testing.assert_array_equal(got.mean, clip_stack_band(view.astype(np.float32)).mean)


def test_planes_spaced_apart_are_read_in_place():
    # the stacker's band buffers: each plane C-contiguous, planes a padded stride apart
    rng = np.random.default_rng(11)
    n_frames, rows, cols, stride = 6, 5, 7, 5 * 7 + 13
    buffer = rng.normal(0, 1, n_frames * stride).astype(np.float32)
    values = np.lib.stride_tricks.as_strided(
        buffer, shape=(n_frames, rows, cols), strides=(stride * 4, cols * 4, 4)
    )
    masks = np.zeros((n_frames, rows, cols), bool)
    masks[2, 1, 1] = True
    got = assert_matches_reference(values, masks, np.ones(values.shape, np.float32))
    assert got.n_kept[1, 1] <= n_frames - 1


def test_stack_argument_checks():
    values = np.zeros((3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="must be 3-D"):
        clip_stack_band(values[0])
    with pytest.raises(ValueError, match="cannot stack zero frames"):
        clip_stack_band(values[:0])
    with pytest.raises(ValueError, match="masks shape"):
        clip_stack_band(values, masks=np.zeros((3, 2, 3), bool))
    with pytest.raises(ValueError, match="errs shape"):
        clip_stack_band(values, errs=np.zeros((2, 2, 2), np.float32))
    out = StackBand(*(np.empty((2, 2), t) for t in (np.float32, np.float32, np.uint8, np.uint16)))
    with pytest.raises(ValueError, match="out.err must be an array exactly when errs"):
        clip_stack_band(values, out=out)
