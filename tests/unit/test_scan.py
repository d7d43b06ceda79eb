"""pylcogt.io.scan: structural FITS scan against astropy, and every way a file can be bad."""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from pylcogt.errors import UnprocessableFrameError
from pylcogt.io.raw_header import read_frame_metadata
from pylcogt.io.scan import FitsScan, HduInfo, scan_fits, sha256_file

BLOCK = 2880
REAL_FRAME = "elp1m008-fa05-20211007-0042-e00.fits"


def padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


# ------------------------------------------------------------------------------------------
# Writers: every test file is made here with astropy.
# ------------------------------------------------------------------------------------------


def uint16_image(shape=(50, 60), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65535, shape, dtype=np.uint16)


def write_single_uint16(path: Path) -> Path:
    hdu = fits.PrimaryHDU(uint16_image((40, 56)))
    hdu.header["OBJECT"] = "M31"
    hdu.header["OBSTYPE"] = "EXPOSE"
    hdu.writeto(path)
    return path


def mef_hdulist(shape=(30, 34)) -> fits.HDUList:
    primary = fits.PrimaryHDU()
    primary.header["OBSTYPE"] = "BIAS"
    for line in range(40):  # make the primary header longer than one block
        primary.header["HISTORY"] = f"made by test_scan, line {line}"
    primary.header["LONGSTR"] = "a long string value," * 8  # CONTINUE cards
    hdus = [primary]
    for amp in range(1, 5):
        image = fits.ImageHDU(uint16_image(shape, seed=amp), name="SCI")
        image.header["EXTVER"] = amp
        image.header["GAIN"] = 1.0 + amp / 10
        hdus.append(image)
    return fits.HDUList(hdus)


def write_mef(path: Path, shape=(30, 34)) -> Path:
    mef_hdulist(shape).writeto(path)
    return path


def write_fz(path: Path) -> Path:
    header = fits.Header()
    header["OBJECT"] = "NGC 300"
    header["COMMENT"] = "a comment card"
    header["HISTORY"] = "a history card"
    header["LONGSTR"] = "continued," * 10
    header["HIERARCH ESO DET CHIP"] = 3
    rice = fits.CompImageHDU(
        uint16_image((70, 90), seed=7), header=header, compression_type="RICE_1", name="SCI"
    )
    floats = np.random.default_rng(3).normal(100.0, 5.0, (33, 41)).astype(np.float32)
    quantized = fits.CompImageHDU(floats, compression_type="GZIP_1", name="ERR")
    fits.HDUList([fits.PrimaryHDU(), rice, quantized]).writeto(path)
    return path


def write_tables(path: Path) -> Path:
    binary = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="flux", format="E", array=np.arange(7, dtype=np.float32)),
            fits.Column(name="vla", format="PJ()", array=[np.arange(i) for i in range(7)]),
        ],
        name="CAT",
    )
    ascii_table = fits.TableHDU.from_columns(
        [fits.Column(name="x", format="F10.3", array=np.arange(4.0))], name="ASC"
    )
    empty = fits.BinTableHDU.from_columns([fits.Column(name="a", format="J")], nrows=0)
    fits.HDUList([fits.PrimaryHDU(), binary, ascii_table, empty]).writeto(path)
    return path


def write_random_groups(path: Path) -> Path:
    data = np.arange(10 * 1 * 2 * 3, dtype=np.float32).reshape(10, 1, 2, 3)
    parameters = np.arange(20, dtype=np.float32).reshape(2, 10)
    groups = fits.GroupData(data, parnames=["u", "v"], pardata=list(parameters), bitpix=-32)
    fits.GroupsHDU(groups).writeto(path)
    return path


# ------------------------------------------------------------------------------------------
# Agreement with astropy
# ------------------------------------------------------------------------------------------


def header_items(header: fits.Header) -> list[tuple[str, object]]:
    return [(card.keyword, card.value) for card in header.cards]


def assert_agrees_with_astropy(scan: FitsScan) -> None:
    with (
        fits.open(scan.path) as hdul,
        fits.open(scan.path, disable_image_compression=True) as raw,
    ):
        names = [row[1] for row in hdul.info(output=False)]
        assert len(scan.hdus) == len(hdul) == len(raw) == len(names)
        for info, hdu, stored in zip(scan.hdus, hdul, raw, strict=True):
            assert isinstance(info, HduInfo)
            assert info.index == hdul.index_of(hdu)
            assert info.header_offset == hdu.fileinfo()["hdrLoc"]
            assert info.data_offset == hdu._data_offset == hdu.fileinfo()["datLoc"]
            assert padded(info.data_size) == hdu._data_size == hdu.fileinfo()["datSpan"]
            assert header_items(info.header) == header_items(stored.header)
            assert info.extname == stored.header.get("EXTNAME")
            if info.extname is not None:
                assert names[info.index] == info.extname
            data = hdu.data
            if info.kind == "other":  # random groups
                assert info.shape == data.data.shape
            elif data is None or data.size == 0:  # astropy may say (0, 0) or (0,)
                assert info.shape == ()
            else:
                assert info.shape == data.shape
            if info.kind in ("primary", "image"):
                assert info.data_size == hdu.size  # bytes
            if info.kind == "compressed_image":
                assert isinstance(hdu, fits.CompImageHDU)
                assert info.shape == hdu.shape
            elif info.kind == "bintable":
                assert type(hdu) is fits.BinTableHDU
            elif info.kind == "table":
                assert type(hdu) is fits.TableHDU
            elif info.kind == "image":
                assert type(hdu) is fits.ImageHDU
            elif info.kind == "primary":
                assert type(hdu) is fits.PrimaryHDU
    assert scan.file_size == scan.path.stat().st_size


def test_single_hdu_uint16(tmp_path):
    scan = scan_fits(write_single_uint16(tmp_path / "single.fits"))
    assert scan.compression == "none"
    assert scan.stream_size == scan.file_size
    (hdu,) = scan.hdus
    assert hdu.kind == "primary"
    assert hdu.shape == (40, 56)
    assert hdu.data_size == 40 * 56 * 2
    assert hdu.header["BITPIX"] == 16 and hdu.header["BZERO"] == 32768
    assert hdu.header["OBJECT"] == "M31"
    assert hdu.extname is None
    assert hdu.image_header() is hdu.header
    assert_agrees_with_astropy(scan)


@pytest.mark.parametrize("suffix", [".fits", ".fit", ".fts"])
def test_mef_empty_primary_and_four_extensions(tmp_path, suffix):
    scan = scan_fits(write_mef(tmp_path / f"mef{suffix}"))
    assert scan.compression == "none"
    assert [h.kind for h in scan.hdus] == ["primary"] + ["image"] * 4
    assert [h.extname for h in scan.hdus] == [None] + ["SCI"] * 4
    assert [h.shape for h in scan.hdus] == [()] + [(30, 34)] * 4
    assert scan.hdus[0].data_size == 0
    assert scan.hdus[0].header["LONGSTR"] == "a long string value," * 8
    assert [h.header["EXTVER"] for h in scan.hdus[1:]] == [1, 2, 3, 4]
    assert scan.file_size == scan.hdus[-1].data_offset + padded(scan.hdus[-1].data_size)
    assert_agrees_with_astropy(scan)


def test_tile_compressed_fz(tmp_path):
    path = write_fz(tmp_path / "frame.fits.fz")
    scan = scan_fits(path)
    assert scan.compression == "fz"
    assert [h.kind for h in scan.hdus] == ["primary", "compressed_image", "compressed_image"]
    assert [h.shape for h in scan.hdus] == [(), (70, 90), (33, 41)]
    assert [h.extname for h in scan.hdus] == [None, "SCI", "ERR"]
    rice = scan.hdus[1]
    # The header as stored is the BINTABLE; its data is the table plus the heap (PCOUNT).
    assert rice.header["XTENSION"] == "BINTABLE" and rice.header["ZIMAGE"] is True
    table_bytes = rice.header["NAXIS1"] * rice.header["NAXIS2"]
    assert rice.data_size == table_bytes + rice.header["PCOUNT"] > table_bytes
    assert_agrees_with_astropy(scan)

    with fits.open(path) as hdul:
        for info in scan.hdus[1:]:
            mine, theirs = info.image_header(), hdul[info.index].header
            assert mine["XTENSION"] == "IMAGE"
            for keyword in ("BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT"):
                assert mine[keyword] == theirs[keyword], keyword
            mandatory = 3 + mine["NAXIS"] + 2
            assert list(mine.keys())[:mandatory] == list(theirs.keys())[:mandatory]
            # Same cards as astropy's CompImageHDU.header (astropy moves BSCALE/BZERO last).
            assert sorted(map(repr, header_items(mine))) == sorted(map(repr, header_items(theirs)))
            assert not any(k.startswith(("Z", "TTYPE", "TFORM", "TFIELDS")) for k in mine)
        rice_header = scan.hdus[1].image_header()
        assert rice_header["BITPIX"] == 16 and rice_header["BZERO"] == 32768
        assert rice_header["ESO DET CHIP"] == 3
        assert rice_header["LONGSTR"] == "continued," * 10
        assert list(rice_header["HISTORY"]) == ["a history card"]
        assert scan.hdus[2].image_header()["BITPIX"] == -32
    # image_header() builds a new header each time and leaves the stored one alone.
    assert rice.image_header() is not rice.image_header()
    assert rice.header["XTENSION"] == "BINTABLE"


def test_compressed_primary_image_header_has_simple(tmp_path):
    header = fits.Header([("SIMPLE", True), ("BITPIX", 16), ("NAXIS", 0), ("OBJECT", "x")])
    image = fits.CompImageHDU(np.zeros((8, 9), np.int16), header=header)
    fits.HDUList([fits.PrimaryHDU(), image]).writeto(tmp_path / "zsimple.fits.fz")
    scan = scan_fits(tmp_path / "zsimple.fits.fz")
    info = scan.hdus[1]
    assert info.header["ZSIMPLE"] is True
    assert info.extname == "COMPRESSED_IMAGE"  # as stored
    mine = info.image_header()
    assert list(mine.keys()) == ["SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "OBJECT"]
    with fits.open(tmp_path / "zsimple.fits.fz") as hdul:
        assert header_items(mine) == header_items(hdul[1].header)


def test_fz_name_without_compressed_image_is_none(tmp_path):
    scan = scan_fits(write_mef(tmp_path / "plain.fits.fz"))
    assert scan.compression == "none"


def test_gzip(tmp_path):
    path = tmp_path / "mef.fits.gz"
    mef_hdulist().writeto(path)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    scan = scan_fits(path)
    assert scan.compression == "gz"
    assert scan.file_size == path.stat().st_size
    with gzip.open(path) as stream:
        assert scan.stream_size == len(stream.read())
    assert [h.shape for h in scan.hdus] == [()] + [(30, 34)] * 4
    assert_agrees_with_astropy(scan)
    # Same structure as the uncompressed file.
    plain = scan_fits(write_mef(tmp_path / "mef.fits"))
    assert [(h.data_offset, h.data_size) for h in plain.hdus] == [
        (h.data_offset, h.data_size) for h in scan.hdus
    ]


def test_gzip_of_a_tile_compressed_file_reports_gz(tmp_path):
    fz = write_fz(tmp_path / "frame.fits.fz")
    gz = tmp_path / "frame.fits.fz.gz"
    gz.write_bytes(gzip.compress(fz.read_bytes()))
    scan = scan_fits(gz)
    assert scan.compression == "gz"
    assert [h.kind for h in scan.hdus] == ["primary", "compressed_image", "compressed_image"]


def test_gzip_multi_member_stream(tmp_path):
    data = write_mef(tmp_path / "mef.fits").read_bytes()
    path = tmp_path / "members.fits.gz"
    path.write_bytes(gzip.compress(data[:10000]) + gzip.compress(data[10000:]))
    assert len(scan_fits(path).hdus) == 5


def test_tables(tmp_path):
    scan = scan_fits(write_tables(tmp_path / "tables.fits"))
    assert [h.kind for h in scan.hdus] == ["primary", "bintable", "table", "bintable"]
    assert [h.shape for h in scan.hdus] == [(), (7,), (4,), ()]
    vla = scan.hdus[1]
    assert vla.header["PCOUNT"] > 0
    assert vla.data_size == vla.header["NAXIS1"] * 7 + vla.header["PCOUNT"]
    assert_agrees_with_astropy(scan)


def test_random_groups(tmp_path):
    scan = scan_fits(write_random_groups(tmp_path / "groups.fits"))
    (info,) = scan.hdus
    assert info.kind == "other"
    assert info.shape == (10, 1, 2, 3)
    assert info.data_size == 4 * 10 * (2 + 1 * 2 * 3)
    assert_agrees_with_astropy(scan)


def test_other_extension_kinds(tmp_path):
    data = write_tables(tmp_path / "tables.fits").read_bytes()
    data = data.replace(b"XTENSION= 'BINTABLE'", b"XTENSION= 'A3DTABLE'", 1)
    mef = write_mef(tmp_path / "mef.fits").read_bytes()
    mef = mef.replace(b"XTENSION= 'IMAGE   '", b"XTENSION= 'FOREIGN '", 1)
    (tmp_path / "a3d.fits").write_bytes(data)
    (tmp_path / "foreign.fits").write_bytes(mef)
    assert scan_fits(tmp_path / "a3d.fits").hdus[1].kind == "bintable"
    foreign = scan_fits(tmp_path / "foreign.fits").hdus
    assert [h.kind for h in foreign] == ["primary", "other", "image", "image", "image"]
    assert foreign[1].shape == (30, 34)


def test_real_lco_frame():
    directory = os.environ.get("PYLCOGT_REAL_DATA")
    if not directory:
        pytest.skip("PYLCOGT_REAL_DATA is not set")
    path = Path(directory) / REAL_FRAME
    scan = scan_fits(path)
    assert scan.compression == "none"
    assert [h.kind for h in scan.hdus] == ["primary"] + ["image"] * 4
    assert [h.extname for h in scan.hdus] == [None] + ["SCI"] * 4
    assert [h.shape for h in scan.hdus] == [()] + [(522, 544)] * 4
    assert len(scan.hdus[0].header) == 237
    assert scan.hdus[0].header["OBSTYPE"] == "EXPOSE"
    assert [h.header["BIASSEC"] for h in scan.hdus[1:]] == ["[520:540,1:512]"] * 4
    assert_agrees_with_astropy(scan)
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------
# Bad files
# ------------------------------------------------------------------------------------------


def truncate(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes()[:size])
    return dst


def replace_card(data: bytes, old_start: bytes, new_card: str) -> bytes:
    pos = data.index(old_start)
    assert pos % 80 == 0
    return data[:pos] + new_card.ljust(80).encode("ascii") + data[pos + 80 :]


def raises_unprocessable(path: Path, match: str) -> UnprocessableFrameError:
    with pytest.raises(UnprocessableFrameError, match=match) as info:
        scan_fits(path)
    assert info.value.path == str(path)
    assert path.name in str(info.value)
    return info.value


@pytest.fixture
def mef(tmp_path) -> Path:
    return write_mef(tmp_path / "good.fits")


def test_truncated_by_one_byte(mef, tmp_path):
    size = mef.stat().st_size
    bad = truncate(mef, tmp_path / "short1.fits", size - 1)
    error = raises_unprocessable(
        bad,
        r"is truncated: HDU 4 \(SCI\) declares 2,040 data bytes \(2,880 with padding\) at "
        rf"offset {size - BLOCK:,} but the file ends at {size - 1:,}; re-copy",
    )
    assert "re-copy the file" in str(error)
    assert error.keyword is None


def test_truncated_by_one_block(tmp_path):
    good = write_mef(tmp_path / "good.fits", shape=(100, 100))
    bad = truncate(good, tmp_path / "short_block.fits", good.stat().st_size - BLOCK)
    raises_unprocessable(bad, r"is truncated: HDU 4 \(SCI\) declares 20,000 data bytes")


def test_truncated_in_the_middle_of_a_header(mef, tmp_path):
    second = scan_fits(mef).hdus[2]
    bad = truncate(mef, tmp_path / "short_header.fits", second.header_offset + 1000)
    raises_unprocessable(bad, r"is truncated: the header of HDU 2 starting at offset")


def test_truncated_at_a_block_boundary_inside_a_header(mef, tmp_path):
    # The primary header spans several blocks; cut after its first complete block.
    assert scan_fits(mef).hdus[0].data_offset > BLOCK
    bad = truncate(mef, tmp_path / "short_primary.fits", BLOCK)
    raises_unprocessable(bad, r"is truncated: the header of HDU 0 ")


def test_truncated_between_hdus_is_not_detectable_but_structure_is_consistent(mef, tmp_path):
    # Cutting exactly at an HDU boundary leaves a valid (shorter) FITS file.
    second = scan_fits(mef).hdus[2]
    cut = truncate(mef, tmp_path / "cut.fits", second.header_offset)
    assert len(scan_fits(cut).hdus) == 2


def test_compressed_file_truncated_inside_its_heap(tmp_path):
    good = write_fz(tmp_path / "good.fits.fz")
    rice = scan_fits(good).hdus[1]
    heap_start = rice.data_offset + rice.header["NAXIS1"] * rice.header["NAXIS2"]
    bad = truncate(good, tmp_path / "short.fits.fz", heap_start + 100)
    raises_unprocessable(bad, r"is truncated: HDU 1 \(SCI\) declares")


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "mef.fits.gz"
    mef_hdulist(shape=(200, 200)).writeto(path)
    bad = truncate(path, tmp_path / "short.fits.gz", path.stat().st_size // 2)
    error = raises_unprocessable(bad, r"is a truncated gzip stream")
    assert "re-copy the file" in str(error)
    # Losing just the 8-byte trailer (CRC and length) is also caught.
    bad = truncate(path, tmp_path / "notrailer.fits.gz", path.stat().st_size - 8)
    raises_unprocessable(bad, r"is a truncated gzip stream")


def test_gzip_with_bad_crc(tmp_path):
    path = tmp_path / "mef.fits.gz"
    mef_hdulist().writeto(path)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # first byte of the CRC-32
    bad = tmp_path / "badcrc.fits.gz"
    bad.write_bytes(bytes(data))
    raises_unprocessable(bad, r"is a corrupt gzip stream \(CRC check failed")


def test_gzip_with_corrupt_deflate_data(tmp_path):
    path = tmp_path / "mef.fits.gz"
    mef_hdulist(shape=(200, 200)).writeto(path)
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 64):
        data[offset] ^= 0x5A
    bad = tmp_path / "corrupt.fits.gz"
    bad.write_bytes(bytes(data))
    raises_unprocessable(bad, r"is a corrupt gzip stream")


def test_gzip_with_junk_after_the_stream(mef, tmp_path):
    bad = tmp_path / "junk.fits.gz"
    bad.write_bytes(gzip.compress(mef.read_bytes()) + b"not gzip at all")
    raises_unprocessable(bad, r"is a corrupt gzip stream \(Not a gzipped file")
    padded = tmp_path / "zeros.fits.gz"
    padded.write_bytes(gzip.compress(mef.read_bytes()) + bytes(512))
    assert len(scan_fits(padded).hdus) == 5


def test_gzip_of_a_truncated_fits_file(mef, tmp_path):
    bad = tmp_path / "short.fits.gz"
    bad.write_bytes(gzip.compress(mef.read_bytes()[:-100]))
    raises_unprocessable(bad, r"is truncated: HDU 4 \(SCI\) declares .* the decompressed stream")


def test_gzip_of_non_fits(tmp_path):
    bad = tmp_path / "text.fits.gz"
    bad.write_bytes(gzip.compress(b"hello world\n" * 1000))
    raises_unprocessable(bad, r"is not a FITS file: the decompressed stream does not start")
    empty = tmp_path / "empty.fits.gz"
    empty.write_bytes(gzip.compress(b""))
    raises_unprocessable(empty, r"is empty after gzip decompression")


def test_not_a_fits_file(tmp_path):
    bad = tmp_path / "notes.fits"
    bad.write_text("This is a text file, not an image.\n" * 200)
    raises_unprocessable(bad, r"is not a FITS file")
    tiny = tmp_path / "tiny.fits"
    tiny.write_bytes(b"SIMP")
    raises_unprocessable(tiny, r"is not a FITS file")


def test_other_compression_is_named(tmp_path):
    bad = tmp_path / "frame.fits.bz2"
    bad.write_bytes(b"BZh91AY&SY" + bytes(100))
    raises_unprocessable(bad, r"is not a FITS file: it is bzip2-compressed")


def test_simple_false(mef, tmp_path):
    bad = tmp_path / "simple_f.fits"
    bad.write_bytes(replace_card(mef.read_bytes(), b"SIMPLE  =", "SIMPLE  =                    F"))
    error = raises_unprocessable(bad, r"is not a standard FITS file: SIMPLE = F")
    assert error.keyword == "SIMPLE"


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    raises_unprocessable(empty, r"empty\.fits is empty \(0 bytes\)")


def test_missing_file_and_directory(tmp_path):
    raises_unprocessable(tmp_path / "nowhere.fits", r"does not exist")
    (tmp_path / "dir.fits").mkdir()
    raises_unprocessable(tmp_path / "dir.fits", r"is a directory")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.fits"
    os.mkfifo(fifo)
    raises_unprocessable(fifo, r"is not a regular file")


def test_missing_naxis2(mef, tmp_path):
    data = mef.read_bytes()
    first_ext = scan_fits(mef).hdus[1].header_offset
    head, tail = data[:first_ext], data[first_ext:]
    bad = tmp_path / "no_naxis2.fits"
    bad.write_bytes(head + replace_card(tail, b"NAXIS2  =", "COMMENT NAXIS2 went missing"))
    error = raises_unprocessable(bad, r"HDU 1 \(SCI\) has no NAXIS2 keyword")
    assert error.keyword == "NAXIS2"


def test_missing_compressed_axis_keyword(tmp_path):
    good = write_fz(tmp_path / "good.fits.fz")
    bad = tmp_path / "no_znaxis1.fits.fz"
    bad.write_bytes(replace_card(good.read_bytes(), b"ZNAXIS1 =", "COMMENT gone"))
    error = raises_unprocessable(bad, r"HDU 1 \(SCI\) has no ZNAXIS1 keyword")
    assert error.keyword == "ZNAXIS1"


@pytest.mark.parametrize(
    ("card", "match", "keyword"),
    [
        ("NAXIS1  =                   -5", r"NAXIS1 = -5, which must be an integer >= 0", "NAXIS1"),
        ("NAXIS1  =                 34.0", r"NAXIS1 = 34.0, which must be an integer", "NAXIS1"),
        ("NAXIS1  = 'abc'", r"NAXIS1 = 'abc', which must be an integer", "NAXIS1"),
        ("BITPIX  =                   12", r"BITPIX = 12, which must be one of 8, 16", "BITPIX"),
        ("NAXIS   =                 1000", r"NAXIS = 1000 \(at most 999\)", "NAXIS"),
        ("PCOUNT  =                   -1", r"PCOUNT = -1, which must be an integer >= 0", "PCOUNT"),
    ],
)
def test_absurd_structural_values(mef, tmp_path, card, match, keyword):
    data = mef.read_bytes()
    first_ext = scan_fits(mef).hdus[1].header_offset
    bad = tmp_path / "absurd.fits"
    bad.write_bytes(data[:first_ext] + replace_card(data[first_ext:], card[:9].encode(), card))
    error = raises_unprocessable(bad, match)
    assert error.keyword == keyword


def test_huge_declared_size_is_truncation(mef, tmp_path):
    data = mef.read_bytes()
    first_ext = scan_fits(mef).hdus[1].header_offset
    huge = "NAXIS1  =          10000000000"
    bad = tmp_path / "huge.fits"
    bad.write_bytes(data[:first_ext] + replace_card(data[first_ext:], b"NAXIS1  =", huge))
    raises_unprocessable(bad, r"is truncated: HDU 1 \(SCI\) declares 600,000,000,000 data bytes")


def test_unparsable_card_fails_when_read(mef, tmp_path):
    """Card values are parsed lazily (as astropy does): the scan passes, reading the card fails."""
    bad = tmp_path / "badcard.fits"
    bad.write_bytes(replace_card(mef.read_bytes(), b"OBSTYPE =", "OBSTYPE = 'unterminated"))
    scan = scan_fits(bad)
    with pytest.raises(
        UnprocessableFrameError, match=r"header 0 card 'OBSTYPE' cannot be parsed"
    ) as info:
        read_frame_metadata(scan)
    assert info.value.keyword == "OBSTYPE"


def test_non_ascii_header_byte(mef, tmp_path):
    data = mef.read_bytes()
    bad = tmp_path / "latin1.fits"
    bad.write_bytes(data.replace(b"'BIAS    '", b"'BI\xc4S    '", 1))
    raises_unprocessable(bad, r"card \d+ \('OBSTYPE'\) contains byte 0xc4, which is not printable")


def test_header_without_end(tmp_path):
    hdu = fits.PrimaryHDU()
    hdu.header["OBJECT"] = "x"
    path = tmp_path / "noend.fits"
    hdu.writeto(path)
    data = path.read_bytes()
    end = data.index(b"END" + b" " * 77)
    path.write_bytes(data[:end] + b" " * 80 + data[end + 80 :])
    raises_unprocessable(path, r"is truncated: the header of HDU 0 .*\(no END card")


def test_header_without_end_running_into_data(tmp_path):
    path = tmp_path / "noend_data.fits"
    fits.PrimaryHDU(uint16_image((100, 100))).writeto(path)
    data = path.read_bytes()
    end = data.index(b"END" + b" " * 77)
    path.write_bytes(data[:end] + b" " * 80 + data[end + 80 :])
    raises_unprocessable(path, r"has a corrupt header: HDU 0 card \d+ .* not printable ASCII")


# ------------------------------------------------------------------------------------------
# Trailing bytes after the last HDU
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "trailer",
    [bytes(BLOCK), bytes(3 * BLOCK), bytes(100), b" " * 500, b"junk after the end" * 300],
    ids=["zero-block", "zero-blocks", "short-zeros", "short-blanks", "junk"],
)
def test_trailing_bytes_are_accepted_and_ignored(mef, tmp_path, trailer):
    good = scan_fits(mef)
    path = tmp_path / "trailer.fits"
    path.write_bytes(mef.read_bytes() + trailer)
    scan = scan_fits(path)
    assert len(scan.hdus) == 5
    assert [h.data_offset for h in scan.hdus] == [h.data_offset for h in good.hdus]
    assert scan.file_size == scan.stream_size == good.file_size + len(trailer)
    with warnings.catch_warnings():  # astropy warns about the trailer, and agrees on the HDUs
        warnings.simplefilter("ignore")
        with fits.open(path) as hdul:
            assert len(hdul) == 5


def test_trailing_zeros_in_gzip_stream(mef, tmp_path):
    path = tmp_path / "padded.fits.gz"
    path.write_bytes(gzip.compress(mef.read_bytes() + bytes(BLOCK)))
    scan = scan_fits(path)
    assert len(scan.hdus) == 5
    assert scan.stream_size == mef.stat().st_size + BLOCK


def test_trailing_partial_extension_is_truncation(mef, tmp_path):
    path = tmp_path / "partial_ext.fits"
    extension = fits.ImageHDU(uint16_image((10, 10)), name="EXTRA")
    header = extension.header.tostring().encode("ascii")
    path.write_bytes(mef.read_bytes() + header[:500])
    raises_unprocessable(path, r"is truncated: the header of HDU 5 starting at offset")
    # A complete extension header whose data is missing.
    path.write_bytes(mef.read_bytes() + header)
    raises_unprocessable(path, r"is truncated: HDU 5 \(EXTRA\) declares 200 data bytes")


# ------------------------------------------------------------------------------------------
# sha256_file
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, 3 * (1 << 20) + 17])
def test_sha256_file(tmp_path, size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == hashlib.sha256(data).hexdigest()


def test_sha256_file_missing(tmp_path):
    with pytest.raises(UnprocessableFrameError, match="does not exist"):
        sha256_file(tmp_path / "nowhere.fits")
