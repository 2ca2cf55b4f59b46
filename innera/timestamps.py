"""The one timestamp format of innera's API: ISO 8601 in UTC, millisecond precision, ``Z``
(``2026-12-04T18:32:29.123Z``). Every resource, event and archive formats its moments with
:func:`iso_utc`, so clients parse one shape everywhere."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_ZERO = timedelta(0)


def iso_utc(moment: datetime) -> str:
    """``moment`` as ISO 8601 in UTC with ``Z``, millisecond precision (naive: taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.utcoffset() != _ZERO:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
