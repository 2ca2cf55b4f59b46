"""What every PostgreSQL connection innera opens is given, from ``settings.db``: the pool's
(DATABASE_URL), the migrations' (DATABASE_MIGRATION_URL, else the pool), and those of the
CLI commands, which open the same pool.

- libpq parameters: the connect timeout, TCP keepalives, ``sslmode`` (unless the URL has
  one) and, when TLS is verified, ``sslrootcert`` (:mod:`innera.db.tls`: DB_SSL_ROOT_CERT,
  ``system`` resolved to the operating system's bundle, unless the URL has its own);
- ``prepare_threshold=None`` with DB_PREPARED_STATEMENTS=false: psycopg prepares a query
  server-side after 5 runs, and behind PgBouncer in transaction mode the next transaction
  may run on another server connection, where the prepared statement does not exist;
- the start-up error: a refused certificate is explained with OpenSSL's reason, the bundle
  it was checked against and the variable that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from innera.config import DatabaseSettings
from innera.db import tls
from innera.db.connection import TrioConnection
from innera.errors import DatabaseUnavailable

__all__ = ["ConnectOptions", "connect_options"]


@dataclass(frozen=True)
class ConnectOptions:
    """How to open connections to one URL. ``variable`` names where the URL comes from and
    ``root_cert_source`` where the CA bundle does (``None``: TLS not verified), for
    messages."""

    url: str
    variable: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    root_cert: str | None = None
    root_cert_source: str | None = None

    async def connect(self) -> TrioConnection[Any]:
        """A connection of its own (autocommit), outside any pool. A failure raises
        :class:`DatabaseUnavailable` with :meth:`explain`'s reason."""
        try:
            return await TrioConnection.connect(self.url, autocommit=True, **self.kwargs)
        except psycopg.Error as exc:
            raise DatabaseUnavailable(
                f"Cannot connect to PostgreSQL ({self.variable}): {await self.explain(exc)}"
            ) from exc

    async def explain(self, error: psycopg.Error) -> str:
        """libpq's message, and for a refused certificate: OpenSSL's reason, the bundle
        it was checked against, and what to change."""
        text = str(error).strip()
        if self.root_cert is not None and tls.is_certificate_refusal(error):
            problem = await tls.certificate_problem(self.url, self.root_cert)
            reason = f" ({problem})" if problem else ""
            fix = ("fix ?sslrootcert= in " + self.variable if self.root_cert_source and
                   self.root_cert_source.startswith("?") else
                   "set DB_SSL_ROOT_CERT to the CA bundle of your PostgreSQL provider "
                   "(RDS: global-bundle.pem, Cloud SQL: the instance's server-ca.pem)")
            return (f"{text}: the server's certificate was refused{reason} when checked "
                    f"against {self.root_cert_source}; {fix}")
        if "does not match host name" in text:
            return (f"{text} (sslmode=verify-full: the host in {self.variable} must be a name "
                    "the server's certificate lists)")
        return text


def connect_options(db: DatabaseSettings, url: str, variable: str = "DATABASE_URL"
                    ) -> ConnectOptions:
    """The options of connections to ``url`` (named ``variable`` in messages). Raises
    :class:`DatabaseUnavailable` if ``system`` is to be used and the system has no bundle."""
    kwargs: dict[str, Any] = {
        "connect_timeout": max(1, round(db.connection_timeout_s)),
        "application_name": "innera",
        # a PostgreSQL that vanishes from the network (no RST) is detected in about 30 s
        # instead of the kernel's default of hours: keepalives while idle, and a bound on
        # unacknowledged sends while a query is on the wire.
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
        "keepalives_count": 3, "tcp_user_timeout": 30_000,
    }
    if not db.prepared_statements:
        kwargs["prepare_threshold"] = None
    try:
        url_mode, url_root = tls.url_tls_params(url)
    except ValueError:  # libpq will say what is wrong with it when connecting
        url_mode = url_root = None
    if db.sslmode and url_mode is None:
        kwargs["sslmode"] = db.sslmode
    if (url_mode or db.sslmode) not in tls.VERIFIED_MODES:
        return ConnectOptions(url, variable, kwargs)
    # Verified: libpq must be handed a bundle (its default, ~/.postgresql/root.crt, is in
    # no image). Only then: under sslmode=require a bundle would turn verification on.
    root = url_root or db.ssl_root_cert
    source = f"?sslrootcert={root} in {variable}" if url_root else f"DB_SSL_ROOT_CERT={root}"
    if root == tls.SYSTEM:
        bundle = tls.system_ca_bundle()
        if bundle is None:
            raise DatabaseUnavailable(
                f"{source}: the operating system has no CA bundle (install ca-certificates, "
                "or set SSL_CERT_FILE or DB_SSL_ROOT_CERT to a bundle file)")
        root, source = str(bundle), f"{source} ({bundle})"
    kwargs["sslrootcert"] = root
    return ConnectOptions(url, variable, kwargs, root, source)
