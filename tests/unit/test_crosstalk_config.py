"""Crosstalk coefficients from the instrument configuration, for frames without CRSTLKij."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.errors import ConfigurationError, UnprocessableFrameError
from pylcogt.instruments import crosstalk_lookup, load_crosstalk_table
from pylcogt.io.raw_read import read_raw
from pylcogt.simulate import simulate_night
from pylcogt.stages.isr import remove_instrument_signature

TABLE = """# Camera  Binning Primary_quadrant   Coefficient(Q1,2,3,4)
fa15  1  1  0.0      0.00062  0.0      0.0
fa15  1  2  0.00055  0.0      0.0      0.0
fa15  1  3  0.0      0.0      0.0      0.00060
fa15  1  4  0.0      0.0      0.00058  0.0
"""


def test_table_rows_are_the_receiving_quadrant(tmp_path: Path) -> None:
    path = tmp_path / "xt.txt"
    path.write_text(TABLE)
    matrix = load_crosstalk_table(str(path))[("fa15", 1)]
    # pylcogt's [i, j]: fraction of amplifier i+1 seen in j+1; row 2 of the file says Q1 -> Q2
    assert matrix[0, 1] == 0.00055 and matrix[1, 0] == 0.00062
    assert matrix[2, 3] == 0.00058 and matrix[3, 2] == 0.00060
    lookup = crosstalk_lookup(path)
    assert lookup("FA15", "1 1") is not None and lookup("fa15", "2 2") is None


def test_malformed_table_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("fa15 1 1 0.0 0.1\nfa15 1 two 0.1 0.0\n")
    with pytest.raises(ConfigurationError, match="bad.txt:2"):
        load_crosstalk_table(str(path))


def test_configured_coefficients_replace_missing_header_cards(tmp_path: Path) -> None:
    night = simulate_night(tmp_path / "raw", camera="sinistro", size=128, n_bias=0, n_dark=0,
                           n_flat=0, n_science=1, filters=("rp",))  # fmt: skip
    original = night.files[0]
    stripped = tmp_path / "stripped-e00.fits"
    with fits.open(original) as hdul:
        for key in [k for k in hdul[0].header if k.startswith("CRSTLK")]:
            del hdul[0].header[key]
        hdul.writeto(stripped)
    with pytest.raises(UnprocessableFrameError, match="without crosstalk coefficients"):
        read_raw(stripped)
    table = tmp_path / "xt.txt"
    table.write_text(TABLE)  # the simulator's coefficients, in the table's orientation
    configured = remove_instrument_signature(read_raw(stripped, crosstalk=crosstalk_lookup(table)))
    from_header = remove_instrument_signature(read_raw(original))
    np.testing.assert_allclose(configured.sci, from_header.sci, rtol=1e-6, atol=1e-3)


def test_real_commissioning_table_parses(real_data: Path) -> None:
    table = load_crosstalk_table(str(real_data / "sinistro_crosstalk.coefficients.txt"))
    assert ("fl01", 1) in table
    assert all(m.shape == (4, 4) and np.all(np.diag(m) == 0) for m in table.values())
    assert all(0 <= m.max() < 0.02 for m in table.values())  # fl09 reaches 0.011
