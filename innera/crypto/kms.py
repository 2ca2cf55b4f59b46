"""The master key in AWS KMS: :class:`KmsKeyProvider` wraps data keys with KMS ``Encrypt`` and
unwraps them with ``Decrypt``, the same :class:`~innera.crypto.keyring.KeyProvider` as the
local keyring. The master key never leaves KMS; innera holds only unwrapped data keys, in
memory (``innera.crypto.data_keys``).

``INNERA_MEK_KMS_KEY_ID`` names the key: a key id, key ARN, alias (``alias/…``) or alias ARN,
as version 1, or several as ``VERSION:KEY`` separated by commas (versions are shared with
``INNERA_MEK``: ``INNERA_MEK=1:…`` beside ``INNERA_MEK_KMS_KEY_ID=2:arn:…`` is a rotation
from the local key to KMS). Everything else is the standard AWS environment, read by boto3
itself: credentials (environment, profile, web identity, instance or task role), the region
(``AWS_DEFAULT_REGION`` or the profile's; boto3 does not read ``AWS_REGION``; a key ARN's own
region wins, KMS keys are regional) and other endpoints (``AWS_ENDPOINT_URL_KMS``, or
``AWS_ENDPOINT_URL``; verified with boto3 1.44).

Every wrapped key is bound to its user: the encryption context is ``{"innera": "dek:<user
id>"}`` (the context the local provider binds as associated data). KMS refuses to decrypt it
under another context (``InvalidCiphertextException``), and CloudTrail logs it with each call.
``Decrypt`` names the key it expects (``KeyId``): a ciphertext of another key is refused.

Failures come in two kinds (``innera.crypto.errors``): ``InvalidCiphertextException`` from
Decrypt means the stored key does not match its key or context (moved to another user,
damaged): :class:`~innera.crypto.keyring.UnwrapError`, which the caller turns into 500
``crypto_error``. Every other failure (unreachable, timeout, throttling, the key disabled or
pending deletion, access denied, no credentials, a key id that does not match the
ciphertext's key) means KMS cannot be used now:
:class:`~innera.crypto.errors.KeyServiceUnavailable` (503 ``key_service_unavailable``), after
one log line naming the operation, the key and the AWS error code, and
``innera_key_service_errors_total{operation,code}``.

boto3 is blocking: every call runs in a worker thread behind a limiter (a slow KMS cannot
take every thread), bounded by botocore's connect and read timeouts and by a Trio deadline of
its own, below the deadline an entry read gives its key and rows (10 s), so a KMS that does
not answer is reported as itself, not as the database.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from typing import Any

import trio

from innera.crypto.errors import KeyServiceUnavailable
from innera.crypto.keyring import KeyringError, UnwrapError
from innera.observability.metrics import Metrics

log = logging.getLogger("innera.crypto.kms")

#: ``user_keys.mek_provider`` of a data key wrapped by AWS KMS
KMS = "kms"
#: the encryption context's one key: ``{"innera": "dek:<user id>"}``
CONTEXT_KEY = "innera"
#: KMS is in-region and answers in milliseconds: short timeouts, one retry (botocore's
#: "standard" mode: throttling and transient errors, with backoff)
CONNECT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 2.0
ATTEMPTS = 2
#: the Trio deadline of one call, retries included (below the 10 s of an entry read)
CALL_TIMEOUT_S = 5.0
#: KMS calls in flight at once (threads)
MAX_CONCURRENCY = 16
#: Decrypt's answer when the ciphertext or its encryption context does not match the key
INTEGRITY_CODES = frozenset({"InvalidCiphertextException"})

# A key id (UUID, or mrk-… for a multi-Region key), a key or alias ARN (group "region"), or an
# alias name. Applied to INNERA_MEK_KMS_KEY_ID only (the operator's environment).
_KEY_ID = re.compile(
    r"arn:aws[a-z-]*:kms:(?P<region>[a-z0-9-]+):[0-9]{12}:(?:key|alias)/[A-Za-z0-9/_+=.@-]+"
    r"|alias/[A-Za-z0-9/_-]+"
    r"|mrk-[0-9a-f]{32}"
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_kms_key_ids(text: str) -> dict[int, str]:
    """``"KEY"`` (version 1) or ``"3:KEY,2:KEY"`` → ``{version: key}``; :class:`KeyringError`
    says what is wrong. (A key id never starts with digits and a colon, so ``2:arn:aws:…``
    is unambiguous.)"""
    keys: dict[int, str] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        head, sep, rest = item.partition(":")
        if sep and head.isdigit():
            version, key_id = int(head), rest.strip()
            if version < 1:
                raise KeyringError(f"key version {head!r} is not a positive integer")
        else:
            version, key_id = 1, item
        if not _KEY_ID.fullmatch(key_id):
            raise KeyringError(f"{key_id!r} is not a KMS key id, key ARN, alias name "
                               f"(alias/…) or alias ARN")
        if version in keys:
            raise KeyringError(f"key version {version} is given twice")
        if key_id in keys.values():
            raise KeyringError(f"{key_id} is given for two versions")
        keys[version] = key_id
    if not keys:
        raise KeyringError("no KMS key given")
    return keys


def key_region(key_id: str) -> str | None:
    """The region of a key or alias ARN (None for a key id or alias name: boto3's)."""
    found = _KEY_ID.fullmatch(key_id)
    return found.group("region") if found else None


class KmsKeyProvider:
    """Data keys wrapped by AWS KMS keys, one per master key version. ``clients``: a boto3
    KMS client per version (one per region, shared); :func:`open_kms_provider` makes them."""

    def __init__(self, keys: dict[int, str], clients: dict[int, Any], metrics: Metrics, *,
                 max_concurrency: int = MAX_CONCURRENCY,
                 call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        if not keys:
            raise KeyringError("no KMS key given")
        self.keys = dict(keys)
        self.clients = clients
        self.metrics = metrics
        self.limiter = trio.CapacityLimiter(max_concurrency)
        self.call_timeout_s = call_timeout_s

    @property
    def current_version(self) -> int:
        return max(self.keys)

    @property
    def versions(self) -> frozenset[int]:
        return frozenset(self.keys)

    def key_id(self, version: int) -> str:
        try:
            return self.keys[version]
        except KeyError:
            raise UnwrapError(f"master key version {version} is not configured") from None

    def provider_name(self, version: int) -> str:
        self.key_id(version)
        return KMS

    def describe(self, version: int) -> str:
        return f"AWS KMS key {self.key_id(version)}"

    async def wrap(self, plaintext: bytes, context: bytes, *, version: int | None = None
                   ) -> tuple[int, bytes]:
        version = self.current_version if version is None else version
        found = await self._call("Encrypt", version, Plaintext=plaintext,
                                 EncryptionContext=encryption_context(context))
        return version, bytes(found["CiphertextBlob"])

    async def unwrap(self, version: int, wrapped: bytes, context: bytes) -> bytes:
        found = await self._call("Decrypt", version, CiphertextBlob=wrapped,
                                 EncryptionContext=encryption_context(context))
        return bytes(found["Plaintext"])

    async def _call(self, operation: str, version: int, **params: Any) -> dict[str, Any]:
        """One KMS operation with the key of ``version``, in a worker thread, under the
        deadline; failures sorted into UnwrapError and KeyServiceUnavailable."""
        from botocore.exceptions import BotoCoreError, ClientError

        key_id = self.key_id(version)
        method = getattr(self.clients[version], _METHODS[operation])
        try:
            with trio.fail_after(self.call_timeout_s):
                found: dict[str, Any] = await trio.to_thread.run_sync(
                    partial(method, KeyId=key_id, **params), limiter=self.limiter,
                    abandon_on_cancel=True)
                return found
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "ClientError")
            if operation == "Decrypt" and code in INTEGRITY_CODES:
                raise UnwrapError(
                    f"AWS KMS key {key_id} refused the wrapped key ({code}): the ciphertext "
                    f"or its encryption context does not match") from exc
            raise self._unavailable(operation, key_id, code, str(error.get("Message") or "")
                                    ) from exc
        except BotoCoreError as exc:
            raise self._unavailable(operation, key_id, type(exc).__name__, str(exc)) from exc
        except trio.TooSlowError as exc:
            raise self._unavailable(operation, key_id, "Timeout",
                                    f"no answer within {self.call_timeout_s:g} s") from exc

    def _unavailable(self, operation: str, key_id: str, code: str, message: str
                     ) -> KeyServiceUnavailable:
        self.metrics.key_service_errors.labels(operation=operation, code=code).inc()
        detail = " ".join(message.split())  # one line, whatever the service sent
        log.error("AWS KMS %s with key %s failed: %s%s (key_service_unavailable)",
                  operation, key_id, code, f" ({detail})" if detail else "")
        return KeyServiceUnavailable()


_METHODS = {"Encrypt": "encrypt", "Decrypt": "decrypt"}


def encryption_context(context: bytes) -> dict[str, str]:
    """The KMS encryption context of a provider ``context`` (``b"dek:<user id>"``)."""
    return {CONTEXT_KEY: context.decode("utf-8")}


def make_clients(keys: dict[int, str]) -> dict[int, Any]:
    """A boto3 KMS client per version, one per region (blocking: reads the AWS config files
    and botocore's service model; run it in a thread). The standard AWS environment applies
    (credentials, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_KMS``); a key ARN's region
    wins."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    session = boto3.session.Session()
    config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                    retries={"max_attempts": ATTEMPTS, "mode": "standard"},
                    max_pool_connections=MAX_CONCURRENCY)
    by_region: dict[str | None, Any] = {}
    clients: dict[int, Any] = {}
    for version, key_id in sorted(keys.items()):
        region = key_region(key_id)
        if region not in by_region:
            try:
                by_region[region] = session.client("kms", region_name=region, config=config)
            except BotoCoreError as exc:  # NoRegionError, a broken profile …
                raise KeyringError(
                    f"no AWS KMS client for INNERA_MEK_KMS_KEY_ID key {key_id}: {exc} (set "
                    f"AWS_DEFAULT_REGION, or give the key as a key ARN, which names its "
                    f"region)") from exc
        clients[version] = by_region[region]
    return clients


async def open_kms_provider(keys: dict[int, str], metrics: Metrics) -> KmsKeyProvider:
    """The provider of ``INNERA_MEK_KMS_KEY_ID`` (clients made in a thread). Nothing is
    asked of KMS here: a KMS that is down answers 503 where a key is needed, not a failed
    start."""
    clients = await trio.to_thread.run_sync(make_clients, keys)
    return KmsKeyProvider(keys, clients, metrics)
