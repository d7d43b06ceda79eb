"""A stand-in astrometry.net for fault tests: ``solve-field`` and ``query-starkd`` scripts first
on ``PATH`` and an index directory holding one all-sky index header fit for any field size, so
that a ``pylcogt`` command reaches ``solve-field`` without the real installation."""

from __future__ import annotations

import os
from pathlib import Path

from astropy.io import fits

#: What the stub ``solve-field`` prints on stderr before it exits 1 (its last line is the reason).
STDERR_LAST_LINE = "stub solve-field: cannot read index file index-stub.fits"


def stub_astrometry(directory: Path, *, solve_field: str | None = None) -> dict[str, str]:
    """Write the stub into ``directory``; returns the environment variables (``PATH``,
    ``PYLCOGT_INDEX_DIR``) for a command that should use it. ``solve_field``: the body of the
    ``solve-field`` shell script (default: print two lines on stderr and exit 1). Every run is
    recorded as one line in ``directory/solve-field.calls``."""
    bin_dir, index_dir = directory / "bin", directory / "index"
    bin_dir.mkdir(parents=True)
    index_dir.mkdir()
    calls = directory / "solve-field.calls"
    body = solve_field or (f"echo 'reading the sources'\necho 'some warning' >&2\n"
                           f"echo '{STDERR_LAST_LINE}' >&2\nexit 1\n")  # fmt: skip
    _script(bin_dir / "solve-field", f'echo "$*" >> {calls}\n{body}')
    _script(bin_dir / "query-starkd", "exit 0\n")
    # quads of 2" to 6 deg (SCALE_L/U in radians): larger than no field
    header = fits.Header([("INDEXID", 9999), ("ALLSKY", True), ("HEALPIX", -1),
                          ("SCALE_L", 1e-5), ("SCALE_U", 1e-1)])  # fmt: skip
    fits.PrimaryHDU(header=header).writeto(index_dir / "index-stub.fits")
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYLCOGT_INDEX_DIR": str(index_dir)}  # fmt: skip


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
