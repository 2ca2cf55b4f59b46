"""The bounds on the database and Redis calls of notifications and devices."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

from innera.errors import DatabaseUnavailable

#: Bound on each Redis call (cache, push job); past it Redis is treated as unavailable.
REDIS_TIMEOUT_S = 1.0
#: Bound on each database statement of notifications and devices.
DB_TIMEOUT_S = 5.0


@contextmanager
def db_deadline() -> Iterator[None]:
    """Bound the block by :data:`DB_TIMEOUT_S`; past it :class:`DatabaseUnavailable`."""
    try:
        with trio.fail_after(DB_TIMEOUT_S):
            yield
    except trio.TooSlowError:
        raise DatabaseUnavailable(
            f"The database did not answer within {DB_TIMEOUT_S:g} s") from None
