"""Uploads: bounded, unpacked when gzip, sniffed for their encoding.

The bytes of an import arrive as an iterator of chunks and go straight to
the blob store, so memory stays flat; :func:`limited` stops them past the
size limit. :func:`inspect_upload` then looks at the first bytes: a gzip
upload is unpacked once, in bounded steps, into a second blob that the
slices read (so resuming a slice can seek); a UTF-16/32 file is refused
whole before any line is read; a UTF-8 BOM is noted.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from ipm.domain.errors import InvalidRequest, PayloadTooLarge, Problem
from ipm.domain.ndjson import UnsupportedEncoding, sniff_encoding
from ipm.ports import BlobStore, close_chunks

_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_UNPACK_STEP = 1 << 20


class Inspected(NamedTuple):
    """What :func:`inspect_upload` found."""

    data_key: str
    """The blob the slices read: the upload, or its unpacked copy."""
    gzip: bool
    bom: bool
    data_size: int
    """The bytes of that blob: the slices, once through, must have read
    exactly so many, or it changed after the upload."""


def inspect_upload(blobs: BlobStore, raw_key: str, limit: int, size: int) -> Inspected:
    """Unpack a gzip upload of ``size`` bytes and sniff the text."""
    gzip = head(blobs.read(raw_key)).startswith(_GZIP_MAGIC)
    data_key, data_size = raw_key, size
    if gzip:
        # A UTF-16/32 file inside is refused before it is unpacked whole.
        encoding = sniff_encoding(head(gunzip(blobs.read(raw_key))))
        if encoding is not None:
            raise UnsupportedEncoding(encoding)
        data_key = f"{raw_key}.ndjson"
        unpacked = limited(gunzip(blobs.read(raw_key)), limit, "unpacked, the upload")
        data_size, _ = blobs.write(data_key, unpacked)

    first = head(blobs.read(data_key))
    encoding = sniff_encoding(first)
    if encoding is not None:
        raise UnsupportedEncoding(encoding)

    return Inspected(data_key, gzip, first.startswith(_UTF8_BOM), data_size)


def too_large(limit: int, what: str = "the upload") -> PayloadTooLarge:
    return PayloadTooLarge(f"{what} is larger than {limit:,} bytes")


def limited(
    chunks: Iterable[bytes] | bytes,
    limit: int,
    what: str = "the upload",
    *,
    declared: int | None = None,
) -> Iterator[bytes]:
    """The chunks, raising PayloadTooLarge once more than ``limit`` went by
    (InvalidRequest once more than the ``declared`` size: a body longer
    than its Content-Length is refused as it arrives, not read to the end).

    Bytes given whole are one chunk; a chunk that is not bytes (text, say)
    is refused, so the blob store never writes half an upload of it.
    """
    if isinstance(chunks, bytes | bytearray | memoryview):
        chunks = [bytes(chunks)]
    elif not isinstance(chunks, Iterable) or isinstance(chunks, str):
        raise InvalidRequest(
            "an upload is bytes or an iterable of bytes chunks",
            [Problem("/chunks", "bytes")],
        )
    total = 0
    for chunk in chunks:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise InvalidRequest(
                f"an upload chunk must be bytes, not {type(chunk).__name__}",
                [Problem("/chunks", "bytes")],
            )
        total += len(chunk)
        if declared is not None and total > declared:
            raise InvalidRequest(
                f"the upload has more than the {declared} bytes declared",
                [Problem("/headers/content-length", "differs from the body")],
            )
        if total > limit:
            raise too_large(limit, what)
        yield chunk


def head(chunks: Iterator[bytes], size: int = 4) -> bytes:
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= size:
            break
    close_chunks(chunks)

    return head[:size]


def measure(chunks: Iterable[bytes]) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)

    return size, digest.hexdigest()


def gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Unpack a gzip stream (several members too) in bounded steps.

    Zero bytes after the last member are padding (a tape or block device's,
    which gzip itself ignores); any other bytes there are refused.
    """
    unpacker = zlib.decompressobj(16 + zlib.MAX_WBITS)
    padding = False
    try:
        for chunk in chunks:
            data = chunk
            if padding and data.strip(b"\0"):
                raise _bad_gzip(_TRAILING)
            while data and not padding:
                yield unpacker.decompress(data, _UNPACK_STEP)
                if not unpacker.eof:
                    data = unpacker.unconsumed_tail
                    continue
                # The member ended. What follows it is in unused_data; a
                # member that ended on a call after one stopped at the step
                # leaves the same bytes in unconsumed_tail too, and reading
                # those again looped for ever on the ended member.
                data = unpacker.unused_data
                if data and not data.strip(b"\0"):
                    padding = True
                elif data and data[:1] != b"\x1f":
                    raise _bad_gzip(_TRAILING)
                elif data:
                    unpacker = zlib.decompressobj(16 + zlib.MAX_WBITS)
        yield unpacker.flush()
    except zlib.error:
        raise _bad_gzip(_CUT) from None
    if not unpacker.eof:
        raise _bad_gzip(_CUT)


_CUT = "the upload starts like gzip but is not a whole gzip stream"
_TRAILING = "the upload's gzip stream is followed by bytes that are not gzip"


def _bad_gzip(message: str) -> InvalidRequest:
    return InvalidRequest(message, [Problem("", message)])
