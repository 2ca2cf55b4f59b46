"""Reading an uploaded import file into validated entries: synchronous, and run only in the
parsing child process (``workers/import_child.py``), which bounds its memory, CPU and time.

The file is a zip (an innera export, else Day One journals: the top-level ``*.json``) or a
JSON document (a Day One journal, or a bare ``innera-export.json``). Everything is bounded
before it is read:

- archives: at most :data:`MAX_MEMBERS` members and :attr:`Limits.max_expanded` bytes
  uncompressed in all (the declared sizes; a member is never read past its declared size,
  and a member lying about it fails its CRC check);
- the JSON documents (innera's, or every Day One journal together): at most
  IMPORT_MAX_BYTES once expanded (``import_too_large``), nested at most
  :data:`innera.json_input.MAX_DEPTH` deep (``too_deep``);
- entries: at most IMPORT_MAX_ENTRIES (``too_many_entries``), each within the entries API's
  lengths (``entry_too_large`` past the body's);
- attachment references (innera exports): at most IMPORT_MAX_ATTACHMENTS, their bytes counted
  per reference; each distinct member is read through once, so a damaged one fails the job
  before anything is stored.
"""

from __future__ import annotations

import json
import lzma
import resource
import sys
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

from innera import json_input
from workers.dayone import looks_like_dayone, parse_dayone
from workers.import_format import (
    EXPAND_FACTOR,
    IMPORT_TOO_LARGE,
    INNERA_JSON,
    TOO_DEEP,
    BadImportFile,
    ImportEntry,
    Limits,
    parse_innera_export,
)

MAX_MEMBERS = 20_000
#: the child writes entries in batches of at most this many, or about this many bytes
BATCH_ENTRIES = 256
BATCH_BYTES = 1024 * 1024
_MiB = 1024 * 1024
READ_CHUNK = 1024 * 1024
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass
class Parsed:
    format: str  # "innera" | "dayone"
    entries: list[ImportEntry]


def parse_upload(file: BinaryIO, limits: Limits) -> Parsed:
    """The uploaded file (seekable, opened in binary) → its validated entries;
    :class:`BadImportFile` otherwise."""
    head = file.read(64)
    file.seek(0)
    if head[:4] in _ZIP_MAGIC:
        return _parse_archive(file, limits)
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if start[:1] in (b"{", b"["):
        doc = load_json(_read_bounded(file, limits.max_bytes, "the file"), "")
        if isinstance(doc, dict) and "format" in doc:
            return Parsed("innera", parse_innera_export(doc, None, prefix="", limits=limits))
        if looks_like_dayone(doc):
            return Parsed("dayone", parse_dayone(doc, max_entries=limits.max_entries))
        raise BadImportFile('not an innera export or a Day One journal (expected a JSON '
                            'object with "entries")')
    if zipfile.is_zipfile(file):  # a zip with something before it
        file.seek(0)
        return _parse_archive(file, limits)
    raise BadImportFile("not a zip or JSON file")


def _read_bounded(file: BinaryIO, maximum: int, what: str) -> bytes:
    data = file.read(maximum + 1)
    if len(data) > maximum:
        raise BadImportFile(f"{what} is larger than IMPORT_MAX_BYTES ({maximum} bytes)",
                            IMPORT_TOO_LARGE)
    return data


def load_json(raw: bytes, name: str) -> Any:
    """A JSON document of the file (bounded depth; UTF-8, a BOM allowed)."""
    prefix = f"{name}: " if name else ""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadImportFile(f"{prefix}not UTF-8 text (byte {exc.start})") from None
    del raw
    try:
        return json_input.loads(text)
    except json_input.JsonTooDeep as exc:
        raise BadImportFile(f"{prefix}the JSON is {exc}", TOO_DEEP) from None
    except json_input.InvalidJsonInput as exc:
        raise BadImportFile(f"{prefix}not valid JSON {exc}") from None


def open_archive(file: BinaryIO, limits: Limits) -> zipfile.ZipFile:
    """A zip whose member count and declared uncompressed total are within the limits."""
    try:
        archive = zipfile.ZipFile(file)
    except Exception as exc:  # zipfile raises many kinds on a damaged directory
        raise BadImportFile(f"not a valid zip archive ({exc})") from None
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        archive.close()
        raise BadImportFile(f"archive: {len(infos)} members, more than the limit of "
                            f"{MAX_MEMBERS}", IMPORT_TOO_LARGE)
    expanded = sum(info.file_size for info in infos)
    if expanded > limits.max_expanded:
        archive.close()
        raise BadImportFile(
            f"archive: expands to {expanded} bytes, more than the limit of "
            f"{limits.max_expanded} ({EXPAND_FACTOR} × IMPORT_MAX_BYTES)", IMPORT_TOO_LARGE)
    return archive


def read_member(archive: zipfile.ZipFile, name: str, *, keep: bool = True) -> bytes:
    """A member's bytes (never more than its declared size; its CRC checked). ``keep``
    False: only check it (read through in chunks, nothing kept)."""
    info = archive.getinfo(name)
    if info.flag_bits & 0x1:
        raise BadImportFile(f"{name}: encrypted archive members are not supported")
    try:
        with archive.open(info) as member:
            if keep:
                return member.read()
            while member.read(READ_CHUNK):
                pass
            return b""
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError,
            ValueError, OSError) as exc:
        raise BadImportFile(f"{name}: damaged archive member ({exc})") from None


def _check_documents(names: list[str], members: dict[str, int], limits: Limits) -> None:
    size = sum(members[name] for name in names)
    if size > limits.max_bytes:
        raise BadImportFile(f"{', '.join(names)[:200]}: expands to {size} bytes of JSON, more "
                            f"than IMPORT_MAX_BYTES ({limits.max_bytes} bytes)",
                            IMPORT_TOO_LARGE)


def _parse_archive(file: BinaryIO, limits: Limits) -> Parsed:
    with open_archive(file, limits) as archive:
        members = {i.filename: i.file_size for i in archive.infolist() if not i.is_dir()}
        if INNERA_JSON in members:
            _check_documents([INNERA_JSON], members, limits)
            doc = load_json(read_member(archive, INNERA_JSON), INNERA_JSON)
            entries = parse_innera_export(doc, members, prefix=INNERA_JSON, limits=limits)
            del doc
            paths = {a.member for entry in entries for a in entry.attachments}
            for path in sorted(paths):  # each distinct member once, however often referenced
                read_member(archive, path, keep=False)
            return Parsed("innera", entries)
        journals = sorted(n for n in members if "/" not in n and n.lower().endswith(".json"))
        if not journals:
            raise BadImportFile(f"archive: holds neither {INNERA_JSON} nor a Day One journal "
                                "(a .json file at the top level)")
        _check_documents(journals, members, limits)
        entries = []
        for name in journals:
            entries += parse_dayone(load_json(read_member(archive, name), name), prefix=name,
                                    max_entries=limits.max_entries - len(entries))
        return Parsed("dayone", entries)


# --- the child process's entry point ---------------------------------------------------


def _encode(entry: ImportEntry) -> dict[str, Any]:
    return {"source": entry.source, "sourceId": entry.source_id, "title": entry.title,
            "body": entry.body, "tags": entry.tags, "mood": entry.mood,
            "occurredAt": entry.occurred_at.isoformat(),
            "attachments": [[a.filename, a.content_type, a.size, a.member]
                            for a in entry.attachments]}


def _write(out: Any, message: dict[str, Any]) -> None:
    out.write(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")


def main(argv: list[str]) -> int:
    """``python -I -m workers.import_parse PATH LIMITS_JSON``: limit this process, parse the
    file, write the result as JSON lines to stdout (see ``workers/import_child.py``)."""
    path, raw = argv[1], json.loads(argv[2])
    memory, cpu_s = int(raw["memory_bytes"]), int(raw["cpu_s"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    limits = Limits(**raw["limits"])
    out = sys.stdout.buffer
    failure: dict[str, str] | None = None
    try:
        with open(path, "rb") as file:
            parsed = parse_upload(file, limits)
    except BadImportFile as exc:
        failure = {"code": exc.code, "message": str(exc)}
    except MemoryError:
        failure = {"code": IMPORT_TOO_LARGE, "message": "parsing the file needs more than "
                   f"IMPORT_PARSE_MEMORY_BYTES ({memory // _MiB} MiB) of memory"}
    # outside the except blocks: the traceback (and what its frames hold) is gone
    if failure is not None:
        _write(out, {"error": failure})
        out.flush()
        return 0
    batch: list[dict[str, Any]] = []
    size = 0
    for entry in parsed.entries:
        encoded = _encode(entry)
        batch.append(encoded)
        size += len(entry.body) + len(entry.title or "") + 200
        if len(batch) >= BATCH_ENTRIES or size >= BATCH_BYTES:
            _write(out, {"entries": batch})
            batch, size = [], 0
    if batch:
        _write(out, {"entries": batch})
    _write(out, {"done": {"format": parsed.format}})
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
