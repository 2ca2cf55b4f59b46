"""Entry content sealed with the user's data key: AES-256-GCM, a fresh 96-bit nonce per
write, associated data binding the entry id and the user id, so a ciphertext copied to
another row (or another user) fails to open instead of showing the wrong text.

Layout of a sealed value: ``0x01 | nonce (12) | ciphertext + tag``. The plaintext is the
JSON of the entry's content fields (title, body, tags, mood).
"""

from __future__ import annotations

import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from innera.crypto.data_keys import DataKeys
from innera.crypto.errors import crypto_failed

FORMAT_V1 = 1
NONCE_BYTES = 12


def _aad(user_id: str, entry_id: str) -> bytes:
    return f"innera-entry:v1:{entry_id}:{user_id}".encode()


class EntryCipher:
    """Seals and opens entry content with a data key the caller fetched once (one
    ``DataKeys.get`` per request or per scan, not per entry)."""

    def __init__(self, data_keys: DataKeys) -> None:
        self.data_keys = data_keys
        self.metrics = data_keys.metrics

    def seal_with(self, dek: bytes, user_id: str, entry_id: str, content: dict[str, Any]
                  ) -> bytes:
        try:
            plaintext = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
            nonce = os.urandom(NONCE_BYTES)
            return bytes([FORMAT_V1]) + nonce + AESGCM(dek).encrypt(
                nonce, plaintext, _aad(user_id, entry_id))
        except Exception as exc:
            raise crypto_failed(self.metrics, "encrypt", exc, entry_id=entry_id) from exc

    def open_with(self, dek: bytes, user_id: str, entry_id: str, sealed: bytes
                  ) -> dict[str, Any]:
        """Synchronous (microseconds per KB), for loops such as the search scan."""
        try:
            if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[0] != FORMAT_V1:
                raise ValueError("not a sealed entry (unknown format)")
            nonce, body = sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:]
            return json.loads(AESGCM(dek).decrypt(nonce, body, _aad(user_id, entry_id)))
        except (InvalidTag, ValueError) as exc:
            raise crypto_failed(self.metrics, "decrypt", exc, entry_id=entry_id) from exc
