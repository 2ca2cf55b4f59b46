"""Shared test set-up. Every test gets real services of its own:

- ``tests/fixtures/postgres.py``: a fresh, migrated PostgreSQL database per test;
- ``tests/fixtures/redis.py``: a private, flushed Redis keyspace per test;
- ``tests/fixtures/server.py``: the real server on a real socket (in-process or subprocess);
- ``tests/fixtures/tls_postgres.py``: a PostgreSQL of their own speaking TLS only, with a
  certificate from a private CA; ``tests/fixtures/pgbouncer.py``: PgBouncer in transaction
  mode in front of the shared PostgreSQL;
- ``tests/fixtures/s3.py``, ``tests/fixtures/kms.py``: moto's server for S3 and AWS KMS;
- ``tests/fixtures/repository.py``: nothing outside the repository is read.
"""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.redis",
    "tests.fixtures.server",
    "tests.fixtures.proxy",
    "tests.fixtures.s3",
    "tests.fixtures.kms",
    "tests.fixtures.push_provider",
    "tests.fixtures.tls_postgres",
    "tests.fixtures.pgbouncer",
    "tests.fixtures.sentry_collector",
    "tests.fixtures.repository",
]
