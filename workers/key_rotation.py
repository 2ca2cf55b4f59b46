"""The ``key-rotation`` queue: re-wraps the data keys of ``key_rotation_jobs`` rows with the
job's target master key version (the work itself is :func:`innera.key_rotation.rewrap_all`).

The job fails at once when this process' master keys (``INNERA_MEK``,
``INNERA_MEK_KMS_KEY_ID``) lack the target version or an old version still wrapping data keys
(nothing is changed then), and at its end when some data
keys did not unwrap (those rows are left as they are; the message gives their count and user
ids). These failures are :class:`~innera.queue.jobs.UserFacingJobError`: the job's row keeps
their message, written by innera for the operator, who reads it in ``innera keys status``
(the job belongs to no user). Data keys left on an old version for another reason
(written meanwhile by an instance lacking the new key) fail the attempt, and the queue
retries it. Progress (the share of data keys on the target version) goes to the job row, the
queue and the gauge ``innera_key_rotation_progress``. A job that stops half-way continues
where it stopped when delivered again: it only selects the data keys still on an old version.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from innera import key_rotation as rotation
from innera.jobs.handlers import JobRun, table_handler
from innera.queue.jobs import UserFacingJobError
from innera.queue.worker import Handler

if TYPE_CHECKING:
    from innera.services import Services

log = logging.getLogger("innera.jobs.key_rotation")


class RotationIncomplete(Exception):
    """Data keys on an old version remain (none failed): the queue retries the job."""


async def rotate_keys(svc: Services, run: JobRun[Services]) -> None:
    """The work of one ``key_rotation_jobs`` row."""
    to_version = int(run.row["to_version"])
    provider = svc.data_keys.provider
    if to_version not in provider.versions:
        raise UserFacingJobError(
            f"master key version {to_version} is not configured in this process' INNERA_MEK "
            f"or INNERA_MEK_KMS_KEY_ID (configured: "
            f"{', '.join(map(str, sorted(provider.versions)))}); nothing was re-wrapped")
    try:
        rotation.check_old_versions(provider.versions, to_version,
                                    await rotation.dek_counts(svc.db))
    except rotation.InvalidRotation as exc:
        raise UserFacingJobError(f"{exc}; nothing was re-wrapped") from None
    batch_size = int(run.payload.get("batch_size") or rotation.BATCH_SIZE)
    batch_size = min(max(batch_size, 1), rotation.MAX_BATCH_SIZE)
    gauge = svc.metrics.key_rotation_progress

    async def progress(fraction: float) -> None:
        gauge.set(fraction)
        await run.progress(fraction)

    started = trio.current_time()
    state = await rotation.rewrap_all(svc.db, provider, to_version, batch_size=batch_size,
                                      progress=progress)
    log.info("key rotation %s: %d data key(s) re-wrapped to master key version %d in %.1f s"
             " (%d did not unwrap)", run.id, state.rewrapped, to_version,
             trio.current_time() - started, len(state.failed))
    if state.failed:
        raise UserFacingJobError(state.failure_message())
    if state.left_behind:
        raise RotationIncomplete(
            f"{state.left_behind} data key(s) are still wrapped by a master key version older "
            f"than {to_version} (written during the rotation by an instance whose master keys "
            f"lack version {to_version}?); the job is retried")
    gauge.set(1.0)


def make_handler(svc: Services) -> Handler:
    async def work(run: JobRun[Services]) -> None:
        await rotate_keys(svc, run)

    return table_handler(svc, rotation.KEY_ROTATION_JOB, work)
