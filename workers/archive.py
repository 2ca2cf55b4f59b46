"""Streaming ZIP archives: a writer that produces an archive front to back, never seeking
(PKWARE APPNOTE 6.3), and the spools that let it do so in bounded memory.

:class:`ZipWriter` turns members into bytes:

- a *streamed* member (:meth:`~ZipWriter.begin_streamed`) is stored uncompressed; its bytes
  pass through :meth:`~ZipWriter.data` (which counts them and updates the CRC-32), and
  :meth:`~ZipWriter.end` writes a data descriptor with the CRC and sizes (flag bit 3);
- a *known* member (:meth:`~ZipWriter.begin_known`) has its CRC and sizes in its local header
  (e.g. a member deflated ahead into a :class:`DeflatedSpool`), stored or deflated.

Every member's central directory record is handed back by :meth:`~ZipWriter.end`; the caller
keeps them in a :class:`Spool` (a temporary file) and streams them after the last member,
then :meth:`~ZipWriter.end_of_archive`. Nothing grows with the number or the size of members:
memory holds one chunk and the spools' write buffers.

ZIP64 is used where needed: a member whose size (or announced size) reaches 4 GiB gets the
ZIP64 extra field (and an 8-byte data descriptor), a local header offset past 4 GiB gets it
in the central directory, and an archive with 65,535 members or more, or a central directory
past 4 GiB, gets the ZIP64 end records. ``force_zip64`` uses ZIP64 for everything (tests).
Names are UTF-8 (flag bit 11); times are the DOS date/time of the given UTC moment.

The CRC-32 of streamed data runs on the caller's thread (about 7 GB/s: ~40 µs per 256 KiB
chunk); deflating runs in a worker thread (:class:`DeflatedSpool`).
"""

from __future__ import annotations

import struct
import tempfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import trio

STORED = 0
DEFLATED = 8
#: sizes and offsets at or above this need ZIP64
ZIP32_LIMIT = 0xFFFFFFFF
#: member counts at or above this need the ZIP64 end records
ZIP32_COUNT_LIMIT = 0xFFFF

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_DESCRIPTOR32 = struct.Struct("<IIII")
_DESCRIPTOR64 = struct.Struct("<IIQQ")
_ZIP64_EOCD = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_EOCD = struct.Struct("<IHHHHIIH")

_SIG_LOCAL = 0x04034B50
_SIG_CENTRAL = 0x02014B50
_SIG_DESCRIPTOR = 0x08074B50
_SIG_ZIP64_EOCD = 0x06064B50
_SIG_ZIP64_LOCATOR = 0x07064B50
_SIG_EOCD = 0x06054B50

_FLAG_DESCRIPTOR = 0x0008
_FLAG_UTF8 = 0x0800
_VERSION_20 = 20  # deflate, data descriptor
_VERSION_45 = 45  # ZIP64
_MADE_BY = (3 << 8) | _VERSION_45  # Unix, APPNOTE 4.5
_FILE_MODE = 0o100644 << 16

#: bytes per write to a spool's file, and per read back
SPOOL_BUFFER = 256 * 1024
#: longest wait for a spool's file to close (shielded from cancellation)
CLOSE_TIMEOUT_S = 5.0


class ZipError(Exception):
    """The writer was used out of order, or a member broke what its header announced."""


def dos_datetime(moment: datetime) -> tuple[int, int]:
    """``(time, date)`` in MS-DOS format (2-second resolution; clamped to 1980..2107)."""
    year = min(max(moment.year, 1980), 2107)
    if year != moment.year:
        return (0, ((year - 1980) << 9) | (1 << 5) | 1)
    return ((moment.hour << 11) | (moment.minute << 5) | (moment.second // 2),
            ((year - 1980) << 9) | (moment.month << 5) | moment.day)


@dataclass
class _Member:
    name: bytes
    method: int
    time: int
    date: int
    offset: int
    streamed: bool
    zip64: bool  # the local header carries the ZIP64 extra (and the descriptor 8-byte sizes)
    crc: int = 0
    compressed_size: int = 0
    size: int = 0
    written: int = 0  # member data bytes passed through so far


class ZipWriter:
    """The bytes of one ZIP archive, member by member (see the module doc)."""

    def __init__(self, *, force_zip64: bool = False) -> None:
        self.force_zip64 = force_zip64
        #: bytes produced so far (members and their headers; not the central directory)
        self.offset = 0
        #: members ended so far
        self.count = 0
        self._member: _Member | None = None
        self._finished = False

    # --- members ----------------------------------------------------------------------------

    def begin_streamed(self, name: str, modified: datetime, *,
                       expected_size: int | None = None) -> bytes:
        """The local header of a stored member whose bytes follow through :meth:`data`.
        ``expected_size`` (if known) decides whether it needs ZIP64 (unknown: it does)."""
        zip64 = self.force_zip64 or expected_size is None or expected_size >= ZIP32_LIMIT
        return self._begin(name, STORED, modified, streamed=True, zip64=zip64)

    def begin_known(self, name: str, modified: datetime, *, method: int, crc: int,
                    compressed_size: int, size: int) -> bytes:
        """The local header of a member whose ``compressed_size`` bytes (``method``: STORED or
        DEFLATED raw data) follow through :meth:`data`."""
        if method not in (STORED, DEFLATED):
            raise ZipError(f"unsupported compression method {method}")
        zip64 = self.force_zip64 or max(size, compressed_size) >= ZIP32_LIMIT
        header = self._begin(name, method, modified, streamed=False, zip64=zip64, crc=crc,
                             compressed_size=compressed_size, size=size)
        return header

    def data(self, chunk: bytes) -> bytes:
        """Account for ``chunk`` of the current member's data; returns it unchanged."""
        member = self._current()
        member.written += len(chunk)
        if member.streamed:
            member.crc = zlib.crc32(chunk, member.crc)
        elif member.written > member.compressed_size:
            raise ZipError(f"{member.name!r}: more data than the announced "
                           f"{member.compressed_size} bytes")
        self.offset += len(chunk)
        return chunk

    def end(self) -> tuple[bytes, bytes]:
        """End the current member: ``(bytes to write now, its central directory record)``.
        The first is the data descriptor of a streamed member (empty otherwise)."""
        member = self._current()
        self._member = None
        tail = b""
        if member.streamed:
            member.compressed_size = member.size = member.written
            if not member.zip64 and member.size >= ZIP32_LIMIT:
                raise ZipError(f"{member.name!r}: reached 4 GiB without ZIP64 "
                               "(its expected size was too small)")
            fmt = _DESCRIPTOR64 if member.zip64 else _DESCRIPTOR32
            tail = fmt.pack(_SIG_DESCRIPTOR, member.crc, member.compressed_size, member.size)
        elif member.written != member.compressed_size:
            raise ZipError(f"{member.name!r}: {member.written} bytes of data, "
                           f"{member.compressed_size} announced")
        self.offset += len(tail)
        self.count += 1
        return tail, self._central_record(member)

    # --- the end ----------------------------------------------------------------------------

    def end_of_archive(self, central_offset: int, central_size: int) -> bytes:
        """The end records, once the central directory (``central_size`` bytes, written from
        ``central_offset``) has been written after the last member."""
        if self._member is not None:
            raise ZipError("a member is still open")
        if self._finished:
            raise ZipError("the archive is already finished")
        self._finished = True
        count = self.count
        tail = b""
        if (self.force_zip64 or count >= ZIP32_COUNT_LIMIT or central_size >= ZIP32_LIMIT
                or central_offset >= ZIP32_LIMIT):
            zip64_offset = central_offset + central_size
            tail += _ZIP64_EOCD.pack(_SIG_ZIP64_EOCD, _ZIP64_EOCD.size - 12, _MADE_BY,
                                     _VERSION_45, 0, 0, count, count, central_size,
                                     central_offset)
            tail += _ZIP64_LOCATOR.pack(_SIG_ZIP64_LOCATOR, 0, zip64_offset, 1)
            count = min(count, ZIP32_COUNT_LIMIT)
            central_size = min(central_size, ZIP32_LIMIT)
            central_offset = min(central_offset, ZIP32_LIMIT)
        tail += _EOCD.pack(_SIG_EOCD, 0, 0, count, count, central_size, central_offset, 0)
        return tail

    # --- internals --------------------------------------------------------------------------

    def _current(self) -> _Member:
        if self._member is None:
            raise ZipError("no member is open")
        return self._member

    def _begin(self, name: str, method: int, modified: datetime, *, streamed: bool,
               zip64: bool, crc: int = 0, compressed_size: int = 0, size: int = 0) -> bytes:
        if self._member is not None:
            raise ZipError("the previous member is still open")
        if self._finished:
            raise ZipError("the archive is already finished")
        encoded = name.encode("utf-8")
        if not encoded or len(encoded) > 0xFFFF:
            raise ZipError("a member name must have 1..65535 bytes")
        time, date = dos_datetime(modified)
        member = _Member(encoded, method, time, date, self.offset, streamed, zip64, crc,
                         compressed_size, size)
        flags = _FLAG_UTF8 | (_FLAG_DESCRIPTOR if streamed else 0)
        extra = b""
        header_crc, header_csize, header_size = (0, 0, 0) if streamed else (
            crc, compressed_size, size)
        if zip64:
            # both sizes, in the extra field (zero when a data descriptor follows)
            extra = struct.pack("<HHQQ", 1, 16, header_size, header_csize)
            header_csize = header_size = ZIP32_LIMIT
        header = _LOCAL.pack(
            _SIG_LOCAL, _VERSION_45 if zip64 else _VERSION_20, flags, method, time, date,
            header_crc, header_csize, header_size, len(encoded), len(extra)) + encoded + extra
        self._member = member
        self.offset += len(header)
        return header

    def _central_record(self, member: _Member) -> bytes:
        values: list[int] = []
        size, csize, offset = member.size, member.compressed_size, member.offset
        if self.force_zip64 or size >= ZIP32_LIMIT:
            values.append(size)
            size = ZIP32_LIMIT
        if self.force_zip64 or csize >= ZIP32_LIMIT:
            values.append(csize)
            csize = ZIP32_LIMIT
        if self.force_zip64 or offset >= ZIP32_LIMIT:
            values.append(offset)
            offset = ZIP32_LIMIT
        extra = (struct.pack(f"<HH{len(values)}Q", 1, 8 * len(values), *values)
                 if values else b"")
        needed = _VERSION_45 if (values or member.zip64) else _VERSION_20
        flags = _FLAG_UTF8 | (_FLAG_DESCRIPTOR if member.streamed else 0)
        return _CENTRAL.pack(
            _SIG_CENTRAL, _MADE_BY, needed, flags, member.method, member.time, member.date,
            member.crc, csize, size, len(member.name), len(extra), 0, 0, 0, _FILE_MODE,
            offset) + member.name + extra


# --- spools -----------------------------------------------------------------------------------


class Spool:
    """Bytes written now and read back later, from an anonymous temporary file (gone when
    closed, or when the process dies). Writes are buffered up to :data:`SPOOL_BUFFER`; all
    file I/O runs in worker threads. Use ``async with Spool() as spool``."""

    def __init__(self) -> None:
        self._file: Any = None
        self._buffer = bytearray()
        #: bytes written so far
        self.size = 0

    async def __aenter__(self) -> Self:
        self._file = trio.wrap_file(await trio.to_thread.run_sync(tempfile.TemporaryFile))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._buffer = bytearray()
        if self._file is not None:
            file, self._file = self._file, None
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
                await file.aclose()

    async def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= SPOOL_BUFFER:
            await self._flush()

    async def _flush(self) -> None:
        if self._buffer:
            await self._file.write(bytes(self._buffer))
            self._buffer.clear()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Everything written, from the start, in chunks of :data:`SPOOL_BUFFER`."""
        await self._flush()
        await self._file.flush()
        await self._file.seek(0)
        while chunk := await self._file.read(SPOOL_BUFFER):
            yield chunk


class DeflatedSpool:
    """A member deflated ahead of time: bytes fed in are deflated (raw deflate, as in ZIP) in
    a worker thread, :data:`SPOOL_BUFFER` at a time, into a :class:`Spool`; the CRC-32 and
    both sizes are counted, ready for :meth:`ZipWriter.begin_known`."""

    def __init__(self, spool: Spool, *, level: int = 6) -> None:
        self.spool = spool
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._pending = bytearray()
        self.crc = 0
        self.size = 0
        self._closed = False

    @property
    def compressed_size(self) -> int:
        return self.spool.size

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise ZipError("the deflated spool is closed")
        self._pending += data
        if len(self._pending) >= SPOOL_BUFFER:
            await self._deflate(final=False)

    async def close(self) -> None:
        """Deflate what is left and end the deflate stream."""
        if not self._closed:
            self._closed = True
            await self._deflate(final=True)

    async def _deflate(self, *, final: bool) -> None:
        data = bytes(self._pending)
        self._pending.clear()
        out = await trio.to_thread.run_sync(self._deflate_sync, data, final)
        if out:
            await self.spool.write(out)

    def _deflate_sync(self, data: bytes, final: bool) -> bytes:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        out = self._compressor.compress(data)
        return out + self._compressor.flush() if final else out
