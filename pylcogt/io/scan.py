"""Fast structural scan of a FITS file for ingest: every header, no pixels.

:func:`scan_fits` reads each HDU's header blocks, parses them with
:meth:`astropy.io.fits.Header.fromstring` and checks that the data each header declares is
present in the file, without reading (plain files) or keeping (gzip) any data bytes. A file that
passes can be opened by astropy without a "file may have been truncated" surprise later; a file
that fails raises :class:`~pylcogt.errors.UnprocessableFrameError` naming the file, the fault and
what to do about it.

**Formats**

- Plain FITS (``.fits``, ``.fit``, ``.fts``) and tile-compressed FITS (``.fits.fz``, which is
  plain FITS structure: the compressed image is a BINTABLE with ``ZIMAGE = T`` whose heap is
  counted by ``PCOUNT``). Only header blocks are read; data is skipped with the file size.
- Gzip-compressed FITS (``.fits.gz``): the stream is decompressed and the data discarded in
  1 MiB chunks. The whole stream is always decompressed, so the CRC and length in the gzip
  trailer are checked; a truncated or corrupt gzip stream is an incomplete file. Several
  concatenated gzip members form one stream and zero bytes after the last member are ignored
  (Python's gzip rules); any other bytes after it make the file corrupt.

The format is recognised by content (gzip magic bytes), as astropy does, not by file name.

**Rules (decisions)**

- The declared data size is ``|BITPIX|/8 * GCOUNT * (PCOUNT + NAXIS1*...*NAXISn)`` (0 when
  ``NAXIS = 0``; ``NAXIS1`` is left out of the product for random groups), and the data *padded
  to a multiple of 2880 bytes* must be in the file, as the standard says and as astropy checks.
  ``PCOUNT``/``GCOUNT`` default to 0/1 when absent (as astropy does); ``BITPIX``, ``NAXIS`` and
  every ``NAXISn`` are required, must be integers, and may not be negative.
- A header ends at the first card, on an 80-byte boundary, whose first three bytes are ``END``
  followed by blanks or by a character that cannot continue a keyword (astropy's rule). Header
  bytes must be printable ASCII (FITS requirement; astropy cannot write anything else back).
  Card values are parsed lazily, as astropy does: ingest reads only the keywords it needs, and
  a malformed card elsewhere fails the frame when the pipeline reads it (measured: parsing every
  card made the scan twice as slow as astropy's own ``fits.open``). Warnings astropy itself
  emits while parsing are not intercepted.
- After the last complete HDU: nothing more is fine; bytes starting with ``XTENSION=`` are
  parsed as a further HDU (so a truncated extension is detected); anything else (zero padding,
  a short partial block, other junk) is accepted and recorded nowhere, as astropy tolerates it.
  ``stream_size`` still counts those bytes.
- ``shape`` is ``()`` whenever the HDU holds no data elements (``NAXIS = 0`` or an axis of
  length 0; astropy would report e.g. ``(0, 0)``). Images give ``NAXISn`` reversed, compressed
  images ``ZNAXISn`` reversed, tables ``(NAXIS2,)`` (the row count, like astropy's
  ``hdu.data.shape``), random groups ``(GCOUNT, NAXISn, ..., NAXIS2)``.
- ``kind``: HDU 0 is ``'primary'`` unless it holds random groups (``'other'``); extensions are
  ``'image'`` (IMAGE), ``'compressed_image'`` (BINTABLE with ``ZIMAGE = T``), ``'bintable'``
  (BINTABLE or the old A3DTABLE), ``'table'`` (ASCII TABLE), and ``'other'`` for any other
  XTENSION.
- A missing, unreadable or non-regular file is also reported as ``UnprocessableFrameError``;
  other operating-system errors while reading (EIO, a vanished NFS handle) propagate as
  ``OSError``, since they say nothing about the frame's bytes.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import os
import re
import stat
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from astropy.io.fits import Card, Header

from pylcogt.errors import UnprocessableFrameError

__all__ = ["HduInfo", "FitsScan", "scan_fits", "sha256_file"]

BLOCK_SIZE = 2880
CARD_SIZE = 80
_CHUNK_SIZE = 1 << 20  # gzip discard chunk and sha256 read chunk

_RECOPY = "re-copy the file from the archive"
_REFETCH = "the file is malformed: fetch a good copy from the archive or remove it from ingest"

_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_COMPRESSION_MAGIC = {
    b"BZh": "bzip2",
    b"PK\x03\x04": "zip",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x1f\x9d": "Unix compress (.Z)",
}

_VALID_BITPIX = (8, 16, 32, 64, -32, -64)
_MAX_NAXIS = 999
_NON_TEXT = re.compile(rb"[^\x20-\x7e]")
# The character after "END" and optional blanks that astropy accepts as closing the header.
_KEYWORD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass(frozen=True)
class HduInfo:
    """What one HDU's header declares and where its data lies.

    ``data_offset`` is the byte offset of the data in the (decompressed) FITS stream,
    ``data_size`` the declared data size without the padding to 2880 bytes, and
    ``header_offset`` the offset of the header's first card.
    """

    index: int
    header: Header
    kind: str
    data_offset: int
    data_size: int
    shape: tuple[int, ...]
    extname: str | None
    header_offset: int

    def image_header(self) -> Header:
        """The header of the image this HDU holds.

        For ``'compressed_image'`` a new header of the *uncompressed* image (what astropy's
        ``CompImageHDU.header`` shows); for every other kind the stored header itself (not a
        copy).
        """
        if self.kind != "compressed_image":
            return self.header
        return _uncompressed_image_header(self.header)


@dataclass(frozen=True)
class FitsScan:
    """The structure of one FITS file, as found by :func:`scan_fits`.

    ``compression`` is ``'gz'`` for a gzip file (whatever it contains), else ``'fz'`` when any
    HDU is a tile-compressed image, else ``'none'``.
    """

    path: Path
    hdus: tuple[HduInfo, ...]
    compression: str
    file_size: int
    stream_size: int


# --------------------------------------------------------------------------------------------
# Byte sources: a plain file (seek past data) or a gzip stream (decompress and discard data).
# --------------------------------------------------------------------------------------------


class _PlainSource:
    """Reads header blocks from a regular file and skips data with the file size."""

    def __init__(self, fileobj: BinaryIO, size: int):
        self._file = fileobj
        self._size = size
        self.pos = 0

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes from the current position; fewer only at the end of the file."""
        if self.pos >= self._size:
            return b""
        self._file.seek(self.pos)
        parts = []
        want = min(n, self._size - self.pos)
        while want:
            chunk = self._file.read(want)
            if not chunk:
                break
            parts.append(chunk)
            want -= len(chunk)
        data = b"".join(parts)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        """Move ``n`` bytes on without reading them; returns how many the file really had."""
        moved = max(0, min(n, self._size - self.pos))
        self.pos += moved
        return moved

    def drain(self) -> None:
        self.pos = max(self.pos, self._size)


class _GzipSource:
    """Decompresses a gzip stream; data bytes are decompressed into a scratch buffer."""

    def __init__(self, fileobj: BinaryIO):
        self._gz = gzip.GzipFile(fileobj=fileobj, mode="rb")
        self._scratch = memoryview(bytearray(_CHUNK_SIZE))
        self.pos = 0

    def read(self, n: int) -> bytes:
        data = self._gz.read(n)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        remaining = n
        while remaining > 0:
            got = self._gz.readinto(self._scratch[: min(_CHUNK_SIZE, remaining)])
            if not got:
                break
            remaining -= got
            self.pos += got
        return n - remaining

    def drain(self) -> None:
        """Decompress to the end, so the gzip trailer (CRC-32 and length) is checked."""
        while True:
            got = self._gz.readinto(self._scratch)
            if not got:
                return
            self.pos += got


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


def scan_fits(path: str | os.PathLike) -> FitsScan:
    """Read every header of a FITS file and check that all declared data is present.

    Raises :class:`~pylcogt.errors.UnprocessableFrameError` (with ``path`` set, and ``keyword``
    when one keyword is at fault) for an empty, non-FITS, truncated or malformed file.
    """
    path = Path(path)
    with _open_checked(path) as (fileobj, file_size):
        if file_size == 0:
            _fail(path, f"{path.name} is empty (0 bytes); {_RECOPY}")
        magic = fileobj.read(6)
        fileobj.seek(0)
        if magic.startswith(_GZIP_MAGIC):
            return _scan_gzip(path, fileobj, file_size)
        for prefix, name in _OTHER_COMPRESSION_MAGIC.items():
            if magic.startswith(prefix):
                _fail(
                    path,
                    f"{path.name} is not a FITS file: it is {name}-compressed, and only plain, "
                    f"tile-compressed (.fz) and gzip-compressed FITS are supported; decompress "
                    f"it (or recompress it with gzip or fpack) before ingesting",
                )
        source = _PlainSource(fileobj, file_size)
        hdus = _scan_hdus(path, source, gzipped=False)
        compression = "fz" if any(h.kind == "compressed_image" for h in hdus) else "none"
        return FitsScan(path, hdus, compression, file_size, file_size)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes as stored on disk, read in 1 MiB chunks."""
    path = Path(path)
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK_SIZE)
    view = memoryview(buffer)
    with _open_checked(path) as (fileobj, _size):
        while True:
            got = fileobj.readinto(buffer)
            if not got:
                break
            digest.update(view[:got])
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------


@contextmanager
def _open_checked(path: Path) -> Iterator[tuple[BinaryIO, int]]:
    """Open a regular file unbuffered for reading; problems become UnprocessableFrameError.

    The file type is checked before opening, so a FIFO or device never blocks the caller.
    """
    missing = f"{path.name} does not exist ({path}); check the path or re-copy the file"
    denied = f"{path.name} cannot be read: permission denied ({path}); fix its permissions"
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        _fail(path, missing)
    except PermissionError:
        _fail(path, denied)
    if stat.S_ISDIR(mode):
        _fail(path, f"{path.name} is a directory, not a FITS file ({path}); remove it from ingest")
    if not stat.S_ISREG(mode):
        _fail(path, f"{path.name} is not a regular file ({path}); remove it from ingest")
    try:
        fileobj = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        _fail(path, missing)
    except PermissionError:
        _fail(path, denied)
    with fileobj:
        yield fileobj, os.fstat(fileobj.fileno()).st_size


def _scan_gzip(path: Path, fileobj: BinaryIO, file_size: int) -> FitsScan:
    source = _GzipSource(fileobj)
    try:
        hdus = _scan_hdus(path, source, gzipped=True)
        source.drain()
    except EOFError as exc:
        _fail(
            path,
            f"{path.name} is a truncated gzip stream: it ends (after at least {source.pos:,} "
            f"decompressed bytes) before the gzip end-of-stream marker ({exc}); {_RECOPY}",
        )
    except (gzip.BadGzipFile, zlib.error) as exc:
        _fail(
            path,
            f"{path.name} is a corrupt gzip stream ({exc}; after at least {source.pos:,} "
            f"decompressed bytes); {_RECOPY}",
        )
    return FitsScan(path, hdus, "gz", file_size, source.pos)


def _scan_hdus(
    path: Path, source: _PlainSource | _GzipSource, *, gzipped: bool
) -> tuple[HduInfo, ...]:
    hdus: list[HduInfo] = []
    while True:
        index = len(hdus)
        header_offset = source.pos
        first = source.read(BLOCK_SIZE)
        if index == 0:
            if not first:
                _fail(path, f"{path.name} is empty after gzip decompression; {_RECOPY}")
            _check_simple(path, first, gzipped)
        elif not first.startswith(b"XTENSION="):
            # End of file, or trailing bytes after the last HDU (zeros, a short partial block
            # or junk): accepted and recorded nowhere, as astropy does. Read a gzip stream to
            # its end so the trailer is checked.
            source.drain()
            return tuple(hdus)
        header_bytes = _read_header_blocks(path, source, first, index, header_offset)
        header = _parse_header(path, header_bytes, index)
        hdu = _describe(path, header, index, header_offset, source.pos)
        padded = _padded(hdu.data_size)
        present = source.skip(padded)
        if present < padded:
            _fail_truncated_data(path, hdu, padded, present, gzipped)
        hdus.append(hdu)


def _check_simple(path: Path, first: bytes, gzipped: bool) -> None:
    card = first[:CARD_SIZE]
    if not card.startswith(b"SIMPLE  ="):
        what = "the decompressed stream" if gzipped else "the file"
        _fail(
            path,
            f"{path.name} is not a FITS file: {what} does not start with "
            f"'SIMPLE  =                    T' (first bytes: {bytes(card[:30])!r}); "
            f"check that it is the intended file and remove it from ingest",
        )
    value = card[10:].split(b"/", 1)[0].strip()
    if value != b"T":
        _fail(
            path,
            f"{path.name} is not a standard FITS file: SIMPLE = {value.decode('ascii', 'replace')}"
            f" (must be T); {_REFETCH}",
            keyword="SIMPLE",
        )


def _read_header_blocks(
    path: Path, source: _PlainSource | _GzipSource, first: bytes, index: int, header_offset: int
) -> bytes:
    """Return the header cards before END; the source is left at the start of the data."""
    blocks = []
    block = first
    while True:
        if len(block) < BLOCK_SIZE:
            end_of_file = header_offset + sum(map(len, blocks)) + len(block)
            _fail(
                path,
                f"{path.name} is truncated: the header of HDU {index} starting at offset "
                f"{header_offset:,} is incomplete (no END card or no full 2880-byte block) and "
                f"the {'stream' if isinstance(source, _GzipSource) else 'file'} ends at "
                f"{end_of_file:,}; {_RECOPY}",
            )
        end = _find_end_card(block)
        text = block if end is None else block[:end]
        bad = _NON_TEXT.search(text)
        if bad is not None:
            card_no = (len(blocks) * BLOCK_SIZE + bad.start()) // CARD_SIZE
            card_start = card_no * CARD_SIZE - len(blocks) * BLOCK_SIZE
            keyword = text[card_start : card_start + 8].decode("ascii", "replace").strip()
            _fail(
                path,
                f"{path.name} has a corrupt header: HDU {index} card {card_no + 1} "
                f"({keyword!r}) contains byte 0x{text[bad.start()]:02x}, which is not printable "
                f"ASCII as FITS requires (a damaged header, or one without END running into "
                f"binary data); {_REFETCH}",
            )
        blocks.append(text)
        if end is not None:
            return b"".join(blocks)
        block = source.read(BLOCK_SIZE)


def _find_end_card(block: bytes) -> int | None:
    """Offset of the END card in a 2880-byte block, or None."""
    start = 0
    while True:
        pos = block.find(b"END", start)
        if pos < 0:
            return None
        if pos % CARD_SIZE == 0:
            rest = block[pos + 3 : pos + CARD_SIZE].lstrip(b" ")
            if not rest or rest[0] not in _KEYWORD_CHARS:
                return pos
        start = pos + 1


def _parse_header(path: Path, header_bytes: bytes, index: int) -> Header:
    text = header_bytes.decode("ascii")
    try:
        header = Header.fromstring(text)
    except Warning:
        raise
    except Exception as exc:
        _fail(
            path,
            f"{path.name} has a header astropy cannot parse: HDU {index}: {exc}; {_REFETCH}",
        )
    return header


def _describe(
    path: Path, header: Header, index: int, header_offset: int, data_offset: int
) -> HduInfo:
    extname = header.get("EXTNAME")
    extname = None if extname is None else str(extname)
    label = f"HDU {index}" if extname is None else f"HDU {index} ({extname})"

    def integer(keyword: str, minimum: int, default: int | None = None) -> int:
        if keyword not in header:
            if default is not None:
                return default
            _fail(
                path,
                f"{path.name} has an incomplete header: {label} has no {keyword} keyword, so the "
                f"size of its data is unknown; {_REFETCH}",
                keyword=keyword,
            )
        value = header[keyword]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            _fail(
                path,
                f"{path.name} has an invalid header: {label} has {keyword} = {value!r}, which "
                f"must be an integer >= {minimum}; {_REFETCH}",
                keyword=keyword,
            )
        return value

    def bitpix(keyword: str) -> int:
        value = integer(keyword, -64)
        if value not in _VALID_BITPIX:
            _fail(
                path,
                f"{path.name} has an invalid header: {label} has {keyword} = {value}, which must "
                f"be one of {', '.join(map(str, _VALID_BITPIX))}; {_REFETCH}",
                keyword=keyword,
            )
        return value

    def axes(prefix: str) -> list[int]:
        naxis = integer(prefix, 0)
        if naxis > _MAX_NAXIS:
            _fail(
                path,
                f"{path.name} has an invalid header: {label} has {prefix} = {naxis} (at most "
                f"{_MAX_NAXIS}); {_REFETCH}",
                keyword=prefix,
            )
        return [integer(f"{prefix}{n}", 0) for n in range(1, naxis + 1)]

    bits = bitpix("BITPIX")
    naxes = axes("NAXIS")
    pcount = integer("PCOUNT", 0, 0)
    gcount = integer("GCOUNT", 0, 1)

    xtension = header.get("XTENSION") if index > 0 else None
    xtension = xtension.strip().upper() if isinstance(xtension, str) else xtension
    groups = index == 0 and header.get("GROUPS") is True and naxes[:1] == [0]
    product_axes = naxes[1:] if groups else naxes
    elements = _product(product_axes)
    data_size = abs(bits) // 8 * gcount * (pcount + elements) if naxes else 0

    if groups:
        kind = "other"
        shape = (gcount, *reversed(naxes[1:])) if gcount * elements else ()
    elif index == 0 or xtension == "IMAGE":
        kind = "primary" if index == 0 else "image"
        shape = tuple(reversed(naxes)) if elements and naxes else ()
    elif xtension in ("BINTABLE", "A3DTABLE", "TABLE"):
        if len(naxes) != 2:
            _fail(
                path,
                f"{path.name} has an invalid header: {label} is a {xtension} with NAXIS = "
                f"{len(naxes)} (a table has NAXIS = 2); {_REFETCH}",
                keyword="NAXIS",
            )
        if xtension != "TABLE" and header.get("ZIMAGE") is True:
            kind = "compressed_image"
            bitpix("ZBITPIX")
            image_axes = axes("ZNAXIS")
            shape = tuple(reversed(image_axes)) if image_axes and _product(image_axes) else ()
        else:
            kind = "table" if xtension == "TABLE" else "bintable"
            shape = (naxes[1],) if naxes[1] else ()
    else:
        kind = "other"
        shape = tuple(reversed(naxes)) if elements and naxes else ()

    return HduInfo(
        index=index,
        header=header,
        kind=kind,
        data_offset=data_offset,
        data_size=data_size,
        shape=shape,
        extname=extname,
        header_offset=header_offset,
    )


def _product(values: list[int]) -> int:
    result = 1
    for value in values:
        result *= value
    return result


def _padded(size: int) -> int:
    return -(-size // BLOCK_SIZE) * BLOCK_SIZE


def _fail_truncated_data(
    path: Path, hdu: HduInfo, padded: int, present: int, gzipped: bool
) -> NoReturn:
    label = f"HDU {hdu.index}" if hdu.extname is None else f"HDU {hdu.index} ({hdu.extname})"
    where = "the decompressed stream" if gzipped else "the file"
    _fail(
        path,
        f"{path.name} is truncated: {label} declares {hdu.data_size:,} data bytes "
        f"({padded:,} with padding) at offset {hdu.data_offset:,} but {where} ends at "
        f"{hdu.data_offset + present:,}; {_RECOPY}",
    )


def _fail(path: Path, message: str, *, keyword: str | None = None) -> NoReturn:
    raise UnprocessableFrameError(message, path=str(path), keyword=keyword)


# --------------------------------------------------------------------------------------------
# Compressed image header -> uncompressed image header
# --------------------------------------------------------------------------------------------

# Keywords of the BINTABLE that describe the table or the compression, not the image
# (astropy.io.fits.hdu.compressed.header: Header.strip, the table keywords and the
# compression keywords), and the indexed ones as a pattern.
_TABLE_OR_COMPRESSION_KEYWORDS = frozenset(
    {
        "SIMPLE",
        "XTENSION",
        "BITPIX",
        "NAXIS",
        "EXTEND",
        "PCOUNT",
        "GCOUNT",
        "GROUPS",
        "TFIELDS",
        "THEAP",
        "CHECKSUM",
        "DATASUM",
        "ZIMAGE",
        "ZCMPTYPE",
        "ZMASKCMP",
        "ZQUANTIZ",
        "ZDITHER0",
        "ZBLANK",
        "ZSCALE",
        "ZZERO",
        "ZSIMPLE",
        "ZTENSION",
        "ZBITPIX",
        "ZNAXIS",
        "ZEXTEND",
        "ZBLOCKED",
        "ZPCOUNT",
        "ZGCOUNT",
        "ZHECKSUM",
        "ZDATASUM",
        "ZTILE",
        "ZNAME",
        "ZVAL",
    }
)
_INDEXED_TABLE_OR_COMPRESSION = re.compile(
    r"(?:NAXIS|TTYPE|TFORM|TUNIT|TNULL|TSCAL|TZERO|TDISP|TBCOL|TDIM|TCTYP|TCUNI|TCRPX|TCRVL"
    r"|TCDLT|TRPOS|ZNAXIS|ZTILE|ZNAME|ZVAL)[1-9][0-9]*"
)


def _is_table_or_compression_keyword(keyword: str) -> bool:
    keyword = keyword.upper()
    return (
        keyword in _TABLE_OR_COMPRESSION_KEYWORDS
        or _INDEXED_TABLE_OR_COMPRESSION.fullmatch(keyword) is not None
    )


def _uncompressed_image_header(table: Header) -> Header:
    """The image header a tile-compressed BINTABLE header stands for (FITS tiled image
    compression convention, as astropy's ``CompImageHDU.header`` builds it).

    ``Z`` keywords become the image's mandatory keywords (``ZSIMPLE``/``ZTENSION`` ->
    ``SIMPLE``/``XTENSION``, ``ZBITPIX`` -> ``BITPIX``, ``ZNAXISn`` -> ``NAXISn``, ``ZPCOUNT``/
    ``ZGCOUNT`` -> ``PCOUNT``/``GCOUNT``, ``ZEXTEND`` -> ``EXTEND``), ``ZBLOCKED``/``ZHECKSUM``/
    ``ZDATASUM`` -> ``BLOCKED``/``CHECKSUM``/``DATASUM`` at the end, and ``ZBLANK`` (as a
    keyword) -> ``BLANK`` for integer images. Table and compression keywords are dropped, as
    are the table's ``CHECKSUM``/``DATASUM``, ``BSCALE``/``BZERO`` equal to 0 and the default
    ``EXTNAME = 'COMPRESSED_IMAGE'``; every other card is kept in its stored order (differences
    from astropy: astropy moves ``BSCALE``/``BZERO`` and ``EXTEND`` to the end, and invents a
    ``BLANK`` when there is only a ``ZBLANK`` column).
    """
    comments = table.comments

    def card(keyword: str, source: str, default=None) -> Card:
        if source in table:
            return Card(keyword, table[source], comments[source])
        return Card(keyword, default)

    primary = "ZSIMPLE" in table
    if primary:
        cards = [card("SIMPLE", "ZSIMPLE")]
    else:  # astropy also writes IMAGE whatever ZTENSION says
        cards = [Card("XTENSION", "IMAGE", comments["ZTENSION"] if "ZTENSION" in table else "")]
    cards.append(card("BITPIX", "ZBITPIX"))
    cards.append(card("NAXIS", "ZNAXIS"))
    naxis = table["ZNAXIS"]
    cards.extend(card(f"NAXIS{n}", f"ZNAXIS{n}") for n in range(1, naxis + 1))
    if not primary:
        cards.append(card("PCOUNT", "ZPCOUNT", 0))
        cards.append(card("GCOUNT", "ZGCOUNT", 1))
    if "ZEXTEND" in table:
        cards.append(card("EXTEND", "ZEXTEND"))

    has_blank = False
    for stored in table.cards:
        keyword = stored.keyword.upper()
        if _is_table_or_compression_keyword(keyword):
            continue
        if keyword in ("BSCALE", "BZERO") and not stored.value:
            continue
        if keyword == "EXTNAME" and stored.value == "COMPRESSED_IMAGE":
            continue
        has_blank = has_blank or keyword == "BLANK"
        cards.append(copy.copy(stored))

    if table["ZBITPIX"] > 0 and not has_blank and "ZBLANK" in table:
        cards.append(card("BLANK", "ZBLANK"))
    for keyword, source in (("BLOCKED", "ZBLOCKED"), ("CHECKSUM", "ZHECKSUM")):
        if source in table:
            cards.append(card(keyword, source))
    if "ZDATASUM" in table:
        cards.append(card("DATASUM", "ZDATASUM"))
    return Header(cards)
