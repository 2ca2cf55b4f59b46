"""Envelope encryption: master keys, per-user data keys, sealed entry content."""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import pytest

from innera.config import ConfigError, load_settings
from innera.crypto.data_keys import DataKeys
from innera.crypto.entry_cipher import EntryCipher
from innera.crypto.errors import CryptoError
from innera.crypto.keyring import (
    Keyring,
    KeyringError,
    LocalKeyProvider,
    load_keyring,
    parse_keyring,
)
from innera.observability.metrics import Metrics
from tests.fixtures.accounts import signup
from tests.fixtures.server import RunningServer

K1, K2 = os.urandom(32), os.urandom(32)
B1, B2 = base64.b64encode(K1).decode(), base64.b64encode(K2).decode()


def test_keyring_formats() -> None:
    assert parse_keyring(B1) == {1: K1}
    assert parse_keyring(f"2:{B2}, 1:{B1}") == {1: K1, 2: K2}
    assert Keyring(parse_keyring(f"1:{B1},2:{B2}")).current_version == 2
    for bad in ("", "abc", f"0:{B1}", f"x:{B1}", f"1:{B1},1:{B2}",
                "1:" + base64.b64encode(b"short").decode()):
        with pytest.raises(KeyringError):
            parse_keyring(bad)


def test_an_invalid_mek_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"INNERA_MEK": "not-a-key"})
    assert "INNERA_MEK is invalid" in str(info.value)


def test_the_embedded_default_generates_and_keeps_a_mek(tmp_path: Path) -> None:
    first = load_keyring(None, None, tmp_path, production=False)
    again = load_keyring(None, None, tmp_path, production=False)
    assert first == again and first.current_version == 1
    assert (tmp_path / "secrets" / "mek").stat().st_mode & 0o777 == 0o600
    with pytest.raises(KeyringError):
        load_keyring(None, None, tmp_path / "other", production=True)
    mek_file = tmp_path / "mek.txt"
    mek_file.write_text(f"3:{B1}\n")
    assert load_keyring(None, mek_file, tmp_path, production=True).current_version == 3


async def test_wrapped_keys_are_bound_to_user_and_version() -> None:
    provider = LocalKeyProvider(Keyring({1: K1, 2: K2}))
    version, wrapped = await provider.wrap(b"d" * 32, b"dek:alice")
    assert version == 2 and b"d" * 32 not in wrapped
    assert await provider.unwrap(2, wrapped, b"dek:alice") == b"d" * 32
    from innera.crypto.keyring import UnwrapError

    for v, ctx in ((2, b"dek:bob"), (1, b"dek:alice")):
        with pytest.raises(UnwrapError):
            await provider.unwrap(v, wrapped, ctx)
    # an older version stays usable for unwrapping (key rotation)
    v1, w1 = await provider.wrap(b"k" * 32, b"dek:carol", version=1)
    assert await provider.unwrap(v1, w1, b"dek:carol") == b"k" * 32


async def test_signup_stores_only_a_wrapped_data_key(server: RunningServer) -> None:
    account = await signup(server.client)
    async with server.services.db.connection() as conn:
        row = await (await conn.execute(
            "SELECT mek_version, wrapped_dek FROM user_keys WHERE user_id = %s",
            (account.id,))).fetchone()
    assert row is not None and row[0] == 1
    dek = await server.services.data_keys.get(account.id)
    assert len(dek) == 32 and dek not in bytes(row[1])


async def test_sealed_entries_open_only_where_they_were_sealed(server: RunningServer) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    cipher: EntryCipher = server.services.entry_cipher
    entry_a, entry_b = str(uuid.uuid4()), str(uuid.uuid4())
    content = {"title": "Café ☕", "body": "secret-body-7731", "tags": ["t"], "mood": "ok"}
    alice_key = await server.services.data_keys.get(alice.id)
    sealed = cipher.seal_with(alice_key, alice.id, entry_a, content)
    assert b"secret-body-7731" not in sealed
    assert cipher.open_with(alice_key, alice.id, entry_a, sealed) == content
    again = cipher.seal_with(alice_key, alice.id, entry_a, content)
    assert again != sealed  # a fresh nonce every time

    metrics: Metrics = server.services.metrics
    before = metrics.crypto_errors.labels(operation="decrypt")._value.get()
    for user, entry in ((alice.id, entry_b), (bob.id, entry_a)):  # moved row / other user
        with pytest.raises(CryptoError) as info:
            cipher.open_with(await server.services.data_keys.get(user), user, entry, sealed)
        assert info.value.status == 500 and info.value.code == "crypto_error"
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(CryptoError):
        cipher.open_with(alice_key, alice.id, entry_a, tampered)
    assert metrics.crypto_errors.labels(operation="decrypt")._value.get() == before + 3


async def test_a_data_key_that_does_not_unwrap_is_a_counted_crypto_error(
    server: RunningServer,
) -> None:
    account = await signup(server.client)
    other_keys = DataKeys(server.services.db, LocalKeyProvider(Keyring({1: os.urandom(32)})),
                          server.services.metrics)
    before = server.services.metrics.crypto_errors.labels(operation="decrypt")._value.get()
    with pytest.raises(CryptoError):
        await other_keys.get(account.id)
    after = server.services.metrics.crypto_errors.labels(operation="decrypt")._value.get()
    assert after == before + 1
