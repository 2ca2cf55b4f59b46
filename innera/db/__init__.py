"""PostgreSQL on Trio: a psycopg 3 connection driven by Trio (:mod:`.connection`), a pool
with node-postgres semantics (:mod:`.pool`), health probes and versioned migrations."""

from innera.db.connection import TrioConnection
from innera.db.health import check_db_health, max_connections
from innera.db.migrate import MigrationError, migrate
from innera.db.pool import ConnectionDiscarded, Pool

__all__ = [
    "ConnectionDiscarded",
    "MigrationError",
    "Pool",
    "TrioConnection",
    "check_db_health",
    "max_connections",
    "migrate",
]
