"""Master encryption keys (MEK) and the key providers that wrap data keys with them.

``INNERA_MEK`` (or the file named by ``INNERA_MEK_FILE``) holds one key as base64 of 32
bytes (version 1), or several as ``VERSION:BASE64`` separated by commas (key rotation
configures the new version beside the old). The highest version wraps new data keys; every
configured version can unwrap. On the embedded default a version-1 key is generated under
``<data_dir>/secrets/mek``; production requires one, unless AWS KMS holds the master key.

The provider is an interface (:class:`KeyProvider`): :class:`LocalKeyProvider` wraps with
AES-256-GCM in process, :class:`innera.crypto.kms.KmsKeyProvider` with AWS KMS
(``INNERA_MEK_KMS_KEY_ID``). Versions are one numbering across providers, so a key rotation
moves data keys from a local key to a KMS key and back like between two local keys;
:class:`KeyProviders` routes each version to the provider that holds it. Each stored data key
records the provider that wrapped it (``user_keys.mek_provider``) beside its version.
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


def generated_mek_path(data_dir: Path) -> Path:
    return data_dir / "secrets" / "mek"


def keyring_source(mek: str | None, mek_file: Path | None, data_dir: Path) -> str:
    """Where :func:`load_keyring` takes the local keys from, for messages."""
    if mek:
        return "INNERA_MEK"
    if mek_file:
        return f"INNERA_MEK_FILE {mek_file}"
    return f"generated in {generated_mek_path(data_dir)}"


def load_keyring(mek: str | None, mek_file: Path | None, data_dir: Path, production: bool
                 ) -> Keyring:
    """From INNERA_MEK / INNERA_MEK_FILE, or (outside production) the generated file."""
    if mek:
        return Keyring(parse_keyring(mek))
    if mek_file:
        return Keyring(parse_keyring(mek_file.read_text()))
    if production:
        raise KeyringError("INNERA_MEK or INNERA_MEK_FILE is required in production")
    text = read_or_create_secret(generated_mek_path(data_dir), generate_keyring_text,
                                 "a master encryption key")
    return Keyring(parse_keyring(text))


def load_keyring_beside_kms(mek: str | None, mek_file: Path | None, data_dir: Path,
                            production: bool) -> Keyring | None:
    """The local keys when AWS KMS holds the current master key: INNERA_MEK /
    INNERA_MEK_FILE (a rotation between local and KMS keys), else, outside production, a key
    the embedded default generated earlier (it still unwraps what it wrapped); nothing is
    ever generated. None when there is none."""
    if mek or mek_file:
        return load_keyring(mek, mek_file, data_dir, production)
    path = generated_mek_path(data_dir)
    if production or not path.is_file():
        return None
    return Keyring(parse_keyring(path.read_text(encoding="ascii")))


async def load_keyring_async(mek: str | None, mek_file: Path | None, data_dir: Path,
                             production: bool, *, beside_kms: bool = False) -> Keyring | None:
    """:func:`load_keyring` (or with ``beside_kms`` :func:`load_keyring_beside_kms`) in a
    thread: file I/O."""
    load = load_keyring_beside_kms if beside_kms else load_keyring
    return await trio.to_thread.run_sync(load, mek, mek_file, data_dir, production)


#: ``user_keys.mek_provider`` of a data key wrapped by a :class:`LocalKeyProvider`
LOCAL = "local"


class KeyProvider(Protocol):
    """Wraps and unwraps data keys with a master key (in process, or a KMS)."""

    @property
    def current_version(self) -> int: ...

    @property
    def versions(self) -> frozenset[int]:
        """Every configured master key version (each can unwrap)."""
        ...

    def provider_name(self, version: int) -> str:
        """What holds master key ``version`` (``local``, ``kms``): stored beside each data
        key it wraps. :class:`UnwrapError` when the version is not configured."""
        ...

    def describe(self, version: int) -> str:
        """Master key ``version`` for operators ("a local key", "AWS KMS key …")."""
        ...

    async def wrap(self, plaintext: bytes, context: bytes, *, version: int | None = None
                   ) -> tuple[int, bytes]:
        """Seal ``plaintext`` with the current master key (or the configured ``version``);
        ``context`` is bound to it. A key service that cannot be used raises
        :class:`~innera.crypto.errors.KeyServiceUnavailable`."""
        ...

    async def unwrap(self, version: int, wrapped: bytes, context: bytes) -> bytes:
        """Open a key wrapped by :meth:`wrap` (any configured version); raise UnwrapError
        when it does not open (wrong key, context or version), or
        :class:`~innera.crypto.errors.KeyServiceUnavailable`."""
        ...


class LocalKeyProvider:
    """AES-256-GCM with the master keys of a :class:`Keyring` (microseconds: on the loop).
    ``source``: where the keys came from, for operators (``INNERA_MEK``, a file)."""

    def __init__(self, keyring: Keyring, source: str | None = None) -> None:
        self.keyring = keyring
        self.source = source

    @property
    def current_version(self) -> int:
        return self.keyring.current_version

    @property
    def versions(self) -> frozenset[int]:
        return frozenset(self.keyring.keys)

    def provider_name(self, version: int) -> str:
        self.keyring.key(version)
        return LOCAL

    def describe(self, version: int) -> str:
        return f"a local key ({self.source})" if self.source else "a local key"

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


class KeyProviders:
    """Several providers, each holding some master key versions (a local keyring and AWS
    KMS keys, side by side during a rotation from one to the other), as one provider: each
    version goes to the provider holding it, and the newest version of all wraps new data
    keys. A version held by two providers is refused (:class:`KeyringError`): a stored data
    key must name exactly one master key."""

    def __init__(self, providers: list[KeyProvider]) -> None:
        self.providers = providers
        self._by_version: dict[int, KeyProvider] = {}
        for provider in providers:
            for version in sorted(provider.versions):
                other = self._by_version.get(version)
                if other is not None:
                    raise KeyringError(
                        f"master key version {version} is configured twice "
                        f"({other.describe(version)} and {provider.describe(version)}): give "
                        f"each master key a version of its own (the newest wraps new data keys)")
                self._by_version[version] = provider
        if not self._by_version:
            raise KeyringError("no master key configured")

    @property
    def current_version(self) -> int:
        return max(self._by_version)

    @property
    def versions(self) -> frozenset[int]:
        return frozenset(self._by_version)

    def _holder(self, version: int) -> KeyProvider:
        try:
            return self._by_version[version]
        except KeyError:
            raise UnwrapError(f"master key version {version} is not configured") from None

    def provider_name(self, version: int) -> str:
        return self._holder(version).provider_name(version)

    def describe(self, version: int) -> str:
        return self._holder(version).describe(version)

    async def wrap(self, plaintext: bytes, context: bytes, *, version: int | None = None
                   ) -> tuple[int, bytes]:
        version = self.current_version if version is None else version
        return await self._holder(version).wrap(plaintext, context, version=version)

    async def unwrap(self, version: int, wrapped: bytes, context: bytes) -> bytes:
        return await self._holder(version).unwrap(version, wrapped, context)
