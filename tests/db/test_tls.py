"""Verified TLS to a PostgreSQL whose certificate comes from a private CA (RDS, Cloud SQL):
DB_SSL_ROOT_CERT names the bundle, ``system`` (the default) is the operating system's trust
store, ``?sslrootcert=`` in the URL wins; a refused certificate stops start-up with OpenSSL's
reason and the variable to change (``tests/fixtures/tls_postgres.py`` runs the server, which
accepts TLS connections only).

Issue 17: production verified TLS with no way to name the CA; libpq looked for
``~/.postgresql/root.crt`` and the managed PostgreSQL could not be reached."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio

from innera.config import load_settings
from innera.db.tls import system_ca_bundle
from innera.errors import DatabaseUnavailable
from innera.process import open_database
from tests.fixtures.accounts import signup
from tests.fixtures.server import server_environ, start_server
from tests.fixtures.tls_postgres import TlsPostgres
from tests.test_cli import run_cli

PROD = {
    "INNERA_ENV": "production",
    "REDIS_URL": "redis://127.0.0.1:6379/15",
    "JWT_SECRET": "x" * 40,
    "INNERA_MEK": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "DB_POOL_MIN": "1",
    "DB_CONNECTION_TIMEOUT_MS": "3000",
}


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        assert len(exc.exceptions) == 1, exc
        exc = exc.exceptions[0]
    return exc


async def _open(environ: dict[str, str]) -> list[Any]:
    """Open the database as ``innera serve`` does (pool, then migrations) and read what the
    server says of this connection's TLS."""
    async with AsyncExitStack() as stack:
        pool = await open_database(stack, load_settings(environ), migrations=True)
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return list(await cur.fetchall())


async def test_verified_tls_with_the_providers_ca_migrates_and_serves(
    nursery: trio.Nursery, tls_postgres: TlsPostgres, tls_database_url: str, redis_url: str,
    tmp_path: Path, http_server: str,
) -> None:
    """verify-full against DB_SSL_ROOT_CERT: the migrations (on DATABASE_MIGRATION_URL, a
    connection of their own) and the pool connect, and requests are served over TLS."""
    env = server_environ(tls_database_url, redis_url, tmp_path / "data", DB_SSL="true",
                         DB_SSL_ROOT_CERT=str(tls_postgres.ca_file),
                         DATABASE_MIGRATION_URL=tls_database_url)
    srv = await start_server(nursery, load_settings(env))
    async with srv.client:
        account = await signup(srv.client)
        r = await srv.client.get("/v1/me", headers=account.auth)
        assert r.status_code == 200, r.text
        r = await srv.client.post("/v1/entries", headers=account.auth, json={"body": "hello"})
        assert r.status_code == 201, r.text
        async with srv.services.db.connection() as conn:
            cur = await conn.execute(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert await cur.fetchone() == (True,)
    await srv.stop()


def test_a_certificate_from_another_ca_stops_start_up_naming_the_problem_and_the_variable(
    tls_postgres: TlsPostgres, tls_database_url: str, tmp_path: Path,
) -> None:
    out = run_cli("serve", env={
        "DATABASE_URL": tls_database_url, "REDIS_URL": "redis://127.0.0.1:6379/15",
        "INNERA_DATA_DIR": str(tmp_path), "HOST": "127.0.0.1", "PORT": "0",
        "DB_SSL": "true", "DB_SSL_ROOT_CERT": str(tls_postgres.other_ca_file),
        "DB_CONNECTION_TIMEOUT_MS": "3000"})
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "innera serve failed" in text and "DatabaseUnavailable" in text
    assert "certificate verify failed" in text
    assert "unable to get local issuer certificate" in text  # OpenSSL's reason
    assert f"DB_SSL_ROOT_CERT={tls_postgres.other_ca_file}" in text
    assert "Traceback" not in text


def test_the_production_default_trusts_the_system_store_which_refuses_a_private_ca(
    tls_database_url: str, tmp_path: Path,
) -> None:
    """The issue's set-up (production, no TLS setting): libpq is no longer sent looking for
    ~/.postgresql/root.crt; the system's bundle is used, it does not hold the private CA,
    and ``innera migrate`` says so, naming DB_SSL_ROOT_CERT."""
    bundle = system_ca_bundle()
    assert bundle is not None, "this machine has no CA bundle (ca-certificates)"
    out = run_cli("migrate", env={**PROD, "DATABASE_URL": tls_database_url,
                                  "INNERA_DATA_DIR": str(tmp_path)})
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "certificate verify failed" in text
    assert "unable to get local issuer certificate" in text
    assert f"DB_SSL_ROOT_CERT=system ({bundle})" in text
    assert "root.crt" not in text and "Traceback" not in text


async def test_sslrootcert_in_the_url_wins_over_db_ssl_root_cert(
    tls_postgres: TlsPostgres, tls_database_url: str,
) -> None:
    env = {**PROD, "DB_SSL_ROOT_CERT": str(tls_postgres.other_ca_file)}
    right = f"{tls_database_url}?sslrootcert={tls_postgres.ca_file}"
    assert await _open({**env, "DATABASE_URL": right}) == [(True,)]

    with pytest.raises(BaseException) as info:  # an exception group around it
        await _open({**env, "DATABASE_URL": f"{tls_database_url}?sslrootcert=system"})
    error = _leaf(info.value)
    assert isinstance(error, DatabaseUnavailable)
    assert f"?sslrootcert=system in DATABASE_URL ({system_ca_bundle()})" in str(error)
    assert "certificate verify failed" in str(error)


async def test_encrypting_without_verifying_ignores_the_default_trust_store(
    tls_database_url: str,
) -> None:
    """DB_SSL_REJECT_UNAUTHORIZED=false (sslmode=require) still reaches a private-CA server:
    a bundle handed to libpq under ``require`` would turn verification back on."""
    env = {**PROD, "DATABASE_URL": tls_database_url, "DB_SSL_REJECT_UNAUTHORIZED": "false"}
    assert await _open(env) == [(True,)]


async def test_system_is_what_the_operating_systems_openssl_trusts(
    tls_postgres: TlsPostgres, tls_database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``system`` accepts a server the system's OpenSSL trusts: here through SSL_CERT_FILE,
    OpenSSL's own override of the system bundle, naming the private CA."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_postgres.ca_file))
    assert await _open({**PROD, "DATABASE_URL": tls_database_url}) == [(True,)]
