"""The object that carries innera's long-lived dependencies into the app and the workers.

The process (``innera/process.py``) builds it from what the service nursery started; nothing
in innera imports a global client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from innera.accounts import ActiveUsers
from innera.auth.access_tokens import AccessTokens
from innera.auth.active_user_counter import ActiveUserCounter
from innera.auth.passwords import PasswordHasher
from innera.auth.reauth import ReauthTokens
from innera.auth.refresh_tokens import RefreshTokenStore
from innera.config import Settings
from innera.crypto.data_keys import DataKeys
from innera.crypto.entry_cipher import EntryCipher
from innera.db.pool import Pool
from innera.guards.idempotency import Idempotency
from innera.guards.login_attempts import LoginAttempts
from innera.guards.ratelimit import RateLimiter
from innera.journal.entries import EntryReads
from innera.observability.metrics import Metrics
from innera.observability.readiness import SharedCheck
from innera.pagination import CursorCodec
from innera.realtime.event_log import EventLog
from innera.realtime.hub import Hub
from innera.redis import Redis
from innera.storage import Storage


@dataclass
class Lifecycle:
    """Process-wide state the routes need to know about."""

    # set by the first SIGTERM/SIGINT: readiness answers 503 (the drain delay begins)
    shutdown_requested: trio.Event = field(default_factory=trio.Event)
    # set when the drain starts, after SHUTDOWN_DRAIN_DELAY_S: the listeners close
    draining: trio.Event = field(default_factory=trio.Event)


@dataclass
class Services:
    settings: Settings
    db: Pool
    redis: Redis
    storage: Storage
    metrics: Metrics
    hub: Hub
    #: each user's event log and channel: what /v1/ws sends and replays
    events: EventLog
    passwords: PasswordHasher
    access_tokens: AccessTokens
    refresh_tokens: RefreshTokenStore
    reauth: ReauthTokens
    rate_limiter: RateLimiter
    #: per-account sign-in / re-auth failure counters and backoff
    login_attempts: LoginAttempts
    idempotency: Idempotency
    data_keys: DataKeys
    entry_cipher: EntryCipher
    cursors: CursorCodec
    active_users: ActiveUsers
    #: the users authenticated here, batched to Redis for ``innera_active_users`` (run by
    #: ``innera serve``; not the "still active?" check above)
    active_user_counter: ActiveUserCounter
    entry_reads: EntryReads
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    #: The users with a search running (one at a time per account: innera/api/search.py).
    searching: set[str] = field(default_factory=set)
    #: readiness's storage check, shared by the probes of one second (an S3 call each)
    storage_check: SharedCheck = field(default_factory=SharedCheck)
