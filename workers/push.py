"""The push-notification worker (queue ``push-notifications``): sends each notification to
every device of its user through the provider ``PUSH_PROVIDER`` names (see
``workers/push_providers.py`` for the requests and how answers are read).

Two kinds of jobs, told apart by their payload:

- ``push:<notificationId>`` ``{notification_id}`` — enqueued by
  :func:`innera.notifications.enqueue_push` once the notification is committed (not at all
  when ``PUSH_PROVIDER=none``). Its handler *fans out*: one job per device the user has now.
- ``push:<notificationId>:<deviceId>`` ``{notification_id, device_id}`` — one delivery, with
  retries of its own, so a device that failed never makes the others receive it twice.

A delivery:

1. skipped when the device is already in ``push:sent:<notificationId>`` (a Redis hash of the
   devices that received it, kept :data:`SENT_TTL_S`): a fan-out that runs again (crash, lost
   lease, partial failure, ``innera jobs retry``) re-enqueues device jobs the queue had already
   finished, and those must not send again;
2. reads the device and the notification, joined on the user: a device removed, a token
   that moved to another account (the row then has a new id), or a notification deleted
   with its account → the job completes doing nothing;
3. POSTs to the provider, bounded by ``PUSH_TIMEOUT_S``; the whole delivery job is bounded by
   ``PUSH_TIMEOUT_S`` + :data:`STEP_MARGIN_S`, the fan-out by :data:`FANOUT_TIMEOUT_S`;
4. by outcome:

   - sent → ``innera_push_notifications_sent_total`` +1, the device goes into the sent hash;
   - unregistered token → the device row is deleted if it still holds that token,
     ``innera_push_notifications_failed_total`` +1 (not delivered), the job completes;
   - rejected (a 4xx, an error ticket) → failed +1 and :class:`PermanentJobError`: the job is
     dead-lettered at once (``innera jobs failed push-notifications``), never retried;
   - provider unavailable (429, 5xx, timeout, network) → raised: the queue retries with its
     backoff (``Retry-After`` is in the error text; the queue has no per-failure delay). On
     the last attempt (8 for this queue) failed +1 before raising.

Delivery stays at-least-once: a crash between the provider's answer and the sent hash, or an
answer lost to a timeout, sends again on the retry.

HTTP client: one ``httpx.AsyncClient`` per delivery job, opened and closed inside the job
(``async with``), so no connection outlives the task that owns it and nothing needs closing
at shutdown; ``make_handler`` runs outside any async context that could close a shared client.
The cost is a new connection (and TLS handshake) per push. The TLS context is built once in
``make_handler``: building it loads the CA bundle (~15 ms of blocking work per client
otherwise). ``trust_env`` is off: proxies and CA files come from nowhere but ``config.py``.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import trio

from innera.notifications.push_jobs import PUSH_JOBS, PUSH_QUEUE
from innera.notifications.push_targets import (
    devices_of_notification,
    forget_device,
    push_target,
)
from innera.queue.jobs import Job, JobQueue, PermanentJobError
from innera.queue.worker import Handler, JobContext
from innera.redis import UNAVAILABLE_ERRORS
from workers.push_providers import (
    Outcome,
    PushMessage,
    PushProvider,
    make_provider,
)

if TYPE_CHECKING:
    from coredis.commands import Script

    from innera.services import Services

__all__ = [
    "FANOUT_TIMEOUT_S",
    "QUEUE",
    "SENT_TTL_S",
    "STEP_MARGIN_S",
    "device_job_id",
    "make_handler",
    "sent_key",
]

log = logging.getLogger("innera.workers.push")

QUEUE = PUSH_QUEUE
#: bound on a fan-out job (one query, one enqueue per device)
FANOUT_TIMEOUT_S = 30.0
#: a delivery job's bound besides the provider request: its database and Redis steps
STEP_MARGIN_S = 15.0
#: how long the "already sent" record of a notification is kept (dead-lettered jobs are kept
#: 7 days too, and may be retried by hand until then)
SENT_TTL_S = 7 * 86_400
#: bound on recording a sent push (shielded: the push went out, the record should too)
MARK_TIMEOUT_S = 2.0

# KEYS[1] push:sent:<notificationId>; ARGV: device id, TTL
_MARK_SENT = """
redis.call('HSET', KEYS[1], ARGV[1], '1')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def device_job_id(notification_id: str, device_id: str) -> str:
    return f"push:{notification_id}:{device_id}"


def sent_key(notification_id: str) -> str:
    return f"push:sent:{notification_id}"


def _uuid(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise PermanentJobError(f"payload field {key} is not a UUID: {value!r}") from None


class LeaseLost(Exception):
    """The job went to another worker before the push was sent: send nothing."""


class _PushHandler:
    def __init__(self, svc: Services, provider: PushProvider) -> None:
        self.svc = svc
        self.provider = provider
        self.queue = JobQueue(svc.redis, QUEUE, attempts=PUSH_JOBS.attempts)
        self.mark_script: Script[str] = svc.redis.client.register_script(_MARK_SENT)
        # Built once: loading the CA bundle blocks for ~15 ms.
        self.ssl_context = httpx.create_ssl_context(trust_env=False)

    async def __call__(self, job: Job, ctx: JobContext) -> None:
        notification_id = _uuid(job.payload, "notification_id")
        if notification_id is None:
            raise PermanentJobError("payload has no notification_id")
        device_id = _uuid(job.payload, "device_id")
        if device_id is None:
            await self.fan_out(notification_id)
            return
        try:
            await self.deliver(notification_id, device_id, ctx)
        except PermanentJobError:
            raise  # counted where it was raised
        except Exception as exc:
            if job.attempt >= job.max_attempts:
                self.svc.metrics.push_failed.labels(reason="unreachable").inc()
                log.warning("push %s: device %s not reached after %d attempts: %s",
                            notification_id, device_id, job.attempt, exc)
            raise

    # ---------------------------------------------------------------- fan-out

    async def fan_out(self, notification_id: str) -> None:
        with trio.fail_after(FANOUT_TIMEOUT_S):
            devices = await devices_of_notification(self.svc.db, notification_id)
            for device_id in devices:
                await self.queue.enqueue(
                    {"notification_id": notification_id, "device_id": device_id},
                    job_id=device_job_id(notification_id, device_id))
        log.info("push %s: %d device job(s) enqueued", notification_id, len(devices))

    # ---------------------------------------------------------------- delivery

    async def deliver(self, notification_id: str, device_id: str, ctx: JobContext) -> None:
        provider = self.provider
        with trio.fail_after(provider.timeout_s + STEP_MARGIN_S):
            if await self.svc.redis.client.hexists(sent_key(notification_id), device_id):
                log.info("push %s: device %s already has it", notification_id, device_id)
                return
            message = await self._message(notification_id, device_id)
            if message is None:
                log.info("push %s: device %s or the notification is gone; nothing to send",
                         notification_id, device_id)
                return
            if ctx.lease_lost:
                raise LeaseLost("lease lost before sending")
            async with httpx.AsyncClient(
                    verify=self.ssl_context, trust_env=False, follow_redirects=False,
                    timeout=httpx.Timeout(provider.timeout_s)) as client:
                delivery = await provider.send(client, message)

            metrics = self.svc.metrics
            if delivery.outcome is Outcome.SENT:
                metrics.push_sent.inc()
                await self._mark_sent(notification_id, device_id)
                log.info("push %s: sent to device %s via %s", notification_id, device_id,
                         provider.name)
            elif delivery.outcome is Outcome.UNREGISTERED:
                metrics.push_failed.labels(reason="unregistered").inc()
                removed = await self._forget(device_id, message.token)
                log.info("push %s: %s says device %s is unregistered (%s); device %s",
                         notification_id, provider.name, device_id, delivery.detail,
                         "removed" if removed else "already gone or re-registered")
            else:
                metrics.push_failed.labels(reason="rejected").inc()
                log.warning("push %s: %s rejected it for device %s: %s", notification_id,
                            provider.name, device_id, delivery.detail)
                raise PermanentJobError(delivery.detail)

    async def _message(self, notification_id: str, device_id: str) -> PushMessage | None:
        """What the device is to receive; None when it or the notification is gone, or the
        device is no longer the notification's user's."""
        target = await push_target(self.svc.db, notification_id, device_id)
        if target is None:
            return None
        data = dict(target.data)
        data.update(notificationId=notification_id, kind=target.kind)
        return PushMessage(token=target.push_token, platform=target.platform,
                           title=target.title, body=target.body, data=data)

    async def _forget(self, device_id: str, token: str) -> bool:
        """Delete the device if it still holds ``token`` (it may have moved meanwhile)."""
        return await forget_device(self.svc.db, device_id, token)

    async def _mark_sent(self, notification_id: str, device_id: str) -> None:
        redis = self.svc.redis
        try:
            with trio.move_on_after(MARK_TIMEOUT_S) as scope:
                scope.shield = True
                await self.mark_script(keys=[sent_key(notification_id)],
                                       args=[device_id, SENT_TTL_S])
            if scope.cancelled_caught:
                raise TimeoutError(f"no reply within {MARK_TIMEOUT_S:g} s")
        except UNAVAILABLE_ERRORS as exc:
            redis.record_error(exc)
            log.warning("push %s: sent to device %s but not recorded (a rerun may send it "
                        "again): %s", notification_id, device_id, exc)


async def _push_off(job: Job, ctx: JobContext) -> None:
    log.info("push job %s dropped: PUSH_PROVIDER=none", job.id)


def make_handler(svc: Services) -> Handler:
    """The ``push-notifications`` handler for ``svc.settings.push.provider`` (with ``none``,
    jobs enqueued before the switch complete without sending)."""
    provider = make_provider(svc.settings.push)
    if provider is None:
        return _push_off
    return _PushHandler(svc, provider)
