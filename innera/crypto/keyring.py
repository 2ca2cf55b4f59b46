"""Master encryption keys (MEK) and the key provider that wraps data keys with them.

``INNERA_MEK`` (or the file named by ``INNERA_MEK_FILE``) holds one key as base64 of 32
bytes (version 1), or several as ``VERSION:BASE64`` separated by commas (key rotation
configures the new version beside the old). The highest version wraps new data keys; every
configured version can unwrap. On the embedded default a version-1 key is generated under
``<data_dir>/secrets/mek``; production requires one.

The provider is an interface: :class:`LocalKeyProvider` wraps with AES-256-GCM in process; a
KMS provider implements the same two coroutines without touching callers.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from innera.local_secrets import read_or_create_secret

KEY_BYTES = 32
NONCE_BYTES = 12


class KeyringError(ValueError):
    """The configured master key material is unusable (the message says why)."""


class UnwrapError(Exception):
    """A wrapped key does not open with the key and associated data given."""


def parse_keyring(text: str) -> dict[int, bytes]:
    """``"BASE64"`` or ``"2:BASE64,1:BASE64"`` → ``{version: key}``."""
    keys: dict[int, bytes] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        version_text, sep, encoded = item.rpartition(":")
        if not sep:
            version_text, encoded = "1", item
        if not version_text.isdigit() or int(version_text) < 1:
            raise KeyringError(f"key version {version_text!r} is not a positive integer")
        version = int(version_text)
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise KeyringError(f"key version {version} is not base64 of {KEY_BYTES} bytes")
        if version in keys:
            raise KeyringError(f"key version {version} is given twice")
        keys[version] = key
    if not keys:
        raise KeyringError("no master key given")
    return keys


@dataclass(frozen=True)
class Keyring:
    keys: dict[int, bytes]

    @property
    def current_version(self) -> int:
        return max(self.keys)

    def key(self, version: int) -> bytes:
        try:
            return self.keys[version]
        except KeyError:
            raise UnwrapError(f"master key version {version} is not configured") from None


def generate_keyring_text() -> str:
    return "1:" + base64.b64encode(os.urandom(KEY_BYTES)).decode()


def load_keyring(mek: str | None, mek_file: Path | None, data_dir: Path, production: bool
                 ) -> Keyring:
    """From INNERA_MEK / INNERA_MEK_FILE, or (outside production) the generated file."""
    if mek:
        return Keyring(parse_keyring(mek))
    if mek_file:
        return Keyring(parse_keyring(mek_file.read_text()))
    if production:
        raise KeyringError("INNERA_MEK or INNERA_MEK_FILE is required in production")
    text = read_or_create_secret(data_dir / "secrets" / "mek", generate_keyring_text,
                                 "a master encryption key")
    return Keyring(parse_keyring(text))


async def load_keyring_async(mek: str | None, mek_file: Path | None, data_dir: Path,
                             production: bool) -> Keyring:
    return await trio.to_thread.run_sync(load_keyring, mek, mek_file, data_dir, production)


class KeyProvider(Protocol):
    """Wraps and unwraps data keys with a master key (in process, or a KMS)."""

    @property
    def current_version(self) -> int: ...

    @property
    def versions(self) -> frozenset[int]:
        """Every configured master key version (each can unwrap)."""
        ...

    async def wrap(self, plaintext: bytes, context: bytes, *, version: int | None = None
                   ) -> tuple[int, bytes]:
        """Seal ``plaintext`` with the current master key (or the configured ``version``);
        ``context`` is bound to it."""
        ...

    async def unwrap(self, version: int, wrapped: bytes, context: bytes) -> bytes:
        """Open a key wrapped by :meth:`wrap` (any configured version); raise UnwrapError."""
        ...


class LocalKeyProvider:
    """AES-256-GCM with the master keys of a :class:`Keyring` (microseconds: on the loop)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    @property
    def current_version(self) -> int:
        return self.keyring.current_version

    @property
    def versions(self) -> frozenset[int]:
        return frozenset(self.keyring.keys)

    async def wrap(self, plaintext: bytes, context: bytes, *, version: int | None = None
                   ) -> tuple[int, bytes]:
        version = self.keyring.current_version if version is None else version
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.keyring.key(version)).encrypt(nonce, plaintext,
                                                           _aad(version, context))
        return version, nonce + sealed

    async def unwrap(self, version: int, wrapped: bytes, context: bytes) -> bytes:
        key = self.keyring.key(version)
        try:
            return AESGCM(key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:],
                                       _aad(version, context))
        except (InvalidTag, ValueError) as exc:
            raise UnwrapError("wrapped key does not open (wrong key, user or version)") from exc


def _aad(version: int, context: bytes) -> bytes:
    return b"innera-mek:v%d:" % version + context
