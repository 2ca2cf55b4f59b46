"""Push notifications end to end: the real server (with its in-process job workers),
PostgreSQL, Redis, and a push-provider double on loopback (``tests/fixtures/push_provider.py``)
standing in for Expo, FCM or a webhook receiver.

Devices are registered over HTTP; notifications are created with ``create_notification``
(there is no public route creating them), which enqueues the push job."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from innera.config import load_settings
from innera.notifications import create_notification
from innera.queue.jobs import JobQueue, keys
from tests.fixtures.accounts import Account, signup
from tests.fixtures.push_provider import PushProviderDouble, PushRequest, Reply, token_of
from tests.fixtures.server import RunningServer, server_environ, start_server
from tests.test_entries import metric

QUEUE = "push-notifications"
SECRET = "push-provider-secret"
SENT = "innera_push_notifications_sent_total"
FAILED = "innera_push_notifications_failed_total"
REASONS = ("unregistered", "rejected", "unreachable")


async def failed_total(server: RunningServer, *reasons: str) -> float:
    """Push failures on /metrics, summed over ``reasons`` (all by default)."""
    return sum([await metric(server, FAILED, f'reason="{r}"') for r in reasons or REASONS])
WEBHOOK = {"PUSH_PROVIDER": "webhook", "PUSH_URL": "{url}/push", "PUSH_ACCESS_TOKEN": SECRET}


@pytest.fixture
def push_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The PUSH_* variables of the server (``{url}``: the double's address); a test changes
    them with ``@pytest.mark.parametrize("push_env", [...], indirect=True)``."""
    return getattr(request, "param", WEBHOOK)


@pytest.fixture
def server_settings(server_settings: dict[str, str], push_provider: PushProviderDouble,
                    push_env: dict[str, str]) -> dict[str, str]:
    server_settings.update({k: v.format(url=push_provider.url) for k, v in push_env.items()})
    return server_settings


# --- helpers ------------------------------------------------------------------------------


async def register(srv: RunningServer, account: Account, token: str,
                   platform: str = "ios") -> str:
    r = await srv.client.post("/v1/devices", json={"platform": platform, "pushToken": token},
                              headers=account.auth)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


async def listed_devices(srv: RunningServer, account: Account) -> dict[str, str]:
    """id → token of the account's devices, as GET /v1/devices shows them."""
    r = await srv.client.get("/v1/devices", headers=account.auth)
    assert r.status_code == 200, r.text
    return {d["id"]: d["pushToken"] for d in r.json()["items"]}


async def notify(srv: RunningServer, account: Account, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"kind": "entry.reminder", "title": "Time to write",
                              "body": "A minute for today's entry?"}
    fields.update(extra)
    svc = srv.services
    return await create_notification(svc.db, svc.redis, account.id, events=svc.events,
                                     push_provider=svc.settings.push.provider, **fields)


def queue(srv: RunningServer) -> JobQueue:
    return JobQueue(srv.services.redis, QUEUE)


async def wait_status(srv: RunningServer, job_id: str, *statuses: str,
                      timeout_s: float = 15.0) -> str:
    """Poll the queue until job ``job_id`` is in one of ``statuses`` (default: completed)."""
    wanted = statuses or ("completed",)
    info = None
    with trio.move_on_after(timeout_s):
        while True:
            info = await queue(srv).get(job_id)
            if info is not None and info.status in wanted:
                return info.status
            await trio.sleep(0.05)
    raise AssertionError(f"job {job_id} is {info!r}, not {wanted}")


async def settle(srv: RunningServer, notification_id: str, devices: dict[str, str],
                 timeout_s: float = 15.0) -> None:
    """Wait for the fan-out job, then for each device job (device id → wanted status)."""
    await wait_status(srv, f"push:{notification_id}", timeout_s=timeout_s)
    for device_id, status in devices.items():
        await wait_status(srv, f"push:{notification_id}:{device_id}", status,
                          timeout_s=timeout_s)


def per_token(requests: list[PushRequest], key: str = "token") -> Counter[str]:
    return Counter(str(token_of(r, key)) for r in requests)


# --- webhook: delivery, retries, unregistered tokens ---------------------------------------


async def test_each_device_gets_it_once_with_the_bearer_token(
        server: RunningServer, push_provider: PushProviderDouble) -> None:
    alice, bob = await signup(server.client), await signup(server.client)
    phone = await register(server, alice, "tok-alice-phone", "ios")
    tablet = await register(server, alice, "tok-alice-tablet", "android")
    await register(server, bob, "tok-bob", "web")
    sent, failed = await metric(server, SENT), await failed_total(server)

    n = await notify(server, alice, data={"entryId": "e-1", "n": [1, 2]})
    await settle(server, n["id"], {phone: "completed", tablet: "completed"})

    assert per_token(push_provider.requests) == {"tok-alice-phone": 1, "tok-alice-tablet": 1}
    for request in push_provider.requests:
        assert request.method == "POST" and request.path == "/push"
        assert request.headers["authorization"] == f"Bearer {SECRET}"
        assert request.headers["content-type"] == "application/json"
    bodies = sorted((r.json() for r in push_provider.requests), key=lambda b: b["token"])
    data = {"entryId": "e-1", "n": [1, 2], "notificationId": n["id"], "kind": "entry.reminder"}
    assert bodies == [
        {"token": "tok-alice-phone", "platform": "ios", "title": "Time to write",
         "body": "A minute for today's entry?", "data": data},
        {"token": "tok-alice-tablet", "platform": "android", "title": "Time to write",
         "body": "A minute for today's entry?", "data": data},
    ]
    assert await metric(server, SENT) == sent + 2
    assert await failed_total(server) == failed

    # The fan-out runs again (as after a crash before its completion was stored): the
    # device jobs are enqueued again, and send nothing twice.
    await queue(server).enqueue({"notification_id": n["id"]}, job_id=f"push:{n['id']}")
    await settle(server, n["id"], {phone: "completed", tablet: "completed"})
    assert per_token(push_provider.requests) == {"tok-alice-phone": 1, "tok-alice-tablet": 1}
    assert await metric(server, SENT) == sent + 2


@pytest.mark.parametrize("push_env", [{**WEBHOOK, "PUSH_TIMEOUT_S": "0.5"}], indirect=True)
async def test_outages_are_retried_and_each_device_gets_it_once(
        server: RunningServer, push_provider: PushProviderDouble) -> None:
    first_reply = {
        "tok-busy": Reply(503, {"error": "maintenance"}, headers={"retry-after": "1"}),
        "tok-limited": Reply(429, {"error": "slow down"}),
        "tok-slow": Reply(200, delay_s=3),  # answers after PUSH_TIMEOUT_S: a timeout
    }

    def responder(request: PushRequest) -> Reply:
        token = request.json()["token"]
        if len(push_provider.to_token(token)) == 1:
            return first_reply.get(token, Reply())
        return Reply()

    push_provider.responder = responder
    alice = await signup(server.client)
    devices = {await register(server, alice, token): token
               for token in ("tok-fine", "tok-busy", "tok-limited", "tok-slow")}
    sent, failed = await metric(server, SENT), await failed_total(server)
    retried = await metric(server, "innera_jobs_processed_total",
                           f'outcome="retried",queue="{QUEUE}"')

    n = await notify(server, alice)
    await settle(server, n["id"], dict.fromkeys(devices, "completed"))

    assert per_token(push_provider.requests) == {
        "tok-fine": 1, "tok-busy": 2, "tok-limited": 2, "tok-slow": 2}
    assert await metric(server, SENT) == sent + 4
    assert await failed_total(server) == failed
    assert await metric(server, "innera_jobs_processed_total",
                        f'outcome="retried",queue="{QUEUE}"') == retried + 3


async def test_unregistered_tokens_delete_the_device_and_rejections_are_not_retried(
        server: RunningServer, push_provider: PushProviderDouble) -> None:
    replies = {"tok-gone": Reply(410, {"error": "unregistered"}),
               "tok-bad": Reply(400, {"error": "malformed token tok-bad"})}
    push_provider.responder = lambda r: replies.get(r.json()["token"], Reply())
    alice = await signup(server.client)
    fine = await register(server, alice, "tok-fine")
    gone = await register(server, alice, "tok-gone")
    bad = await register(server, alice, "tok-bad")
    sent, failed = await metric(server, SENT), await failed_total(server)
    unregistered = await failed_total(server, "unregistered")

    n = await notify(server, alice)
    await settle(server, n["id"], {fine: "completed", gone: "completed", bad: "failed"})

    assert await listed_devices(server, alice) == {fine: "tok-fine", bad: "tok-bad"}
    assert per_token(push_provider.requests) == {"tok-fine": 1, "tok-gone": 1, "tok-bad": 1}
    info = await queue(server).get(f"push:{n['id']}:{bad}")
    assert info is not None and info.attempts == 1 and "400" in (info.error or "")
    assert "tok-bad" not in (info.error or "")  # the token echoed by the provider is cut out
    assert await metric(server, SENT) == sent + 1
    assert await failed_total(server) == failed + 2
    assert await failed_total(server, "unregistered") == unregistered + 1


async def test_a_token_that_moved_to_another_account_is_not_deleted(
        server: RunningServer, push_provider: PushProviderDouble) -> None:
    release = trio.Event()
    push_provider.responder = lambda _r: Reply(410, hold=release)
    alice, bob = await signup(server.client), await signup(server.client)
    old = await register(server, alice, "tok-shared")

    n = await notify(server, alice)
    await push_provider.wait_for(lambda requests: len(requests) == 1)
    # While the provider answers, the phone signs in to Bob's account: the token moves.
    new = await register(server, bob, "tok-shared")
    assert new != old
    release.set()
    await settle(server, n["id"], {old: "completed"})

    assert await listed_devices(server, bob) == {new: "tok-shared"}
    assert await listed_devices(server, alice) == {}


async def test_gone_notifications_and_devices_complete_without_sending(
        server: RunningServer, push_provider: PushProviderDouble) -> None:
    alice = await signup(server.client)
    n = await notify(server, alice)  # no device yet: nothing to send
    await wait_status(server, f"push:{n['id']}")

    device = await register(server, alice, "tok-removed")
    r = await server.client.delete(f"/v1/devices/{device}", headers=alice.auth)
    assert r.status_code == 204, r.text
    removed_job = await queue(server).enqueue(
        {"notification_id": n["id"], "device_id": device}, job_id=f"push:{n['id']}:{device}")
    unknown = str(uuid.uuid4())  # e.g. deleted with its account
    unknown_job = await queue(server).enqueue({"notification_id": unknown},
                                              job_id=f"push:{unknown}")
    await wait_status(server, removed_job)
    await wait_status(server, unknown_job)
    assert push_provider.requests == []


async def test_a_device_still_unreachable_on_the_last_attempt_counts_as_failed(
        server: RunningServer, push_provider: PushProviderDouble) -> None:
    push_provider.responder = lambda _r: Reply(503, {"error": "down"})
    alice = await signup(server.client)
    n = await notify(server, alice)  # no device yet: the fan-out enqueues nothing
    await wait_status(server, f"push:{n['id']}")
    device = await register(server, alice, "tok-phone")
    failed = await failed_total(server)

    # The device job as the fan-out makes it, with one attempt instead of the queue's 8 (whose
    # backoff would take minutes).
    job_id = await JobQueue(server.services.redis, QUEUE, attempts=1).enqueue(
        {"notification_id": n["id"], "device_id": device}, job_id=f"push:{n['id']}:{device}")
    await wait_status(server, job_id, "failed")

    assert len(push_provider.requests) == 1
    assert await failed_total(server) == failed + 1
    assert await listed_devices(server, alice) == {device: "tok-phone"}


@pytest.mark.parametrize("push_env", [{"PUSH_PROVIDER": "none", "PUSH_URL": "{url}/push"}],
                         indirect=True)
async def test_push_provider_none_sends_nothing(
        server: RunningServer, push_provider: PushProviderDouble) -> None:
    alice = await signup(server.client)
    await register(server, alice, "tok-phone")
    n = await notify(server, alice)

    # No job at all (create_notification returns after the enqueue would have happened).
    assert await queue(server).get(f"push:{n['id']}") is None
    assert await server.services.redis.client.hlen(keys(QUEUE)["meta"]) == 0
    assert push_provider.requests == []
    r = await server.client.get("/v1/notifications", headers=alice.auth)
    assert [item["id"] for item in r.json()["items"]] == [n["id"]]


# --- Expo and FCM request shapes ----------------------------------------------------------


EXPO = {"PUSH_PROVIDER": "expo", "PUSH_URL": "{url}/--/api/v2/push/send",
        "PUSH_ACCESS_TOKEN": SECRET}


@pytest.mark.parametrize("push_env", [EXPO], indirect=True)
async def test_expo_messages_and_tickets(
        server: RunningServer, push_provider: PushProviderDouble) -> None:
    ok_token, gone_token = "ExponentPushToken[ok-1]", "ExponentPushToken[gone-2]"

    def responder(request: PushRequest) -> Reply:
        if request.json()[0]["to"] == gone_token:
            return Reply(200, {"data": [{
                "status": "error", "message": f"{gone_token} is not a registered push token",
                "details": {"error": "DeviceNotRegistered"}}]})
        return Reply(200, {"data": [{"status": "ok", "id": "ticket-1"}]})

    push_provider.responder = responder
    alice = await signup(server.client)
    ok = await register(server, alice, ok_token, "ios")
    gone = await register(server, alice, gone_token, "android")
    sent, failed = await metric(server, SENT), await failed_total(server)

    n = await notify(server, alice, data={"entryId": "e-9"})
    await settle(server, n["id"], {ok: "completed", gone: "completed"})

    assert per_token(push_provider.requests, "to") == {ok_token: 1, gone_token: 1}
    request = push_provider.to_token(ok_token, "to")[0]
    assert request.method == "POST" and request.path == "/--/api/v2/push/send"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.json() == [{
        "to": ok_token, "title": "Time to write", "body": "A minute for today's entry?",
        "data": {"entryId": "e-9", "notificationId": n["id"], "kind": "entry.reminder"}}]
    assert await listed_devices(server, alice) == {ok: ok_token}
    assert await metric(server, SENT) == sent + 1
    assert await failed_total(server) == failed + 1


FCM = {"PUSH_PROVIDER": "fcm", "PUSH_URL": "{url}/v1/projects/innera-test/messages:send",
       "PUSH_ACCESS_TOKEN": SECRET}
FCM_UNREGISTERED = {"error": {
    "code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
    "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                 "errorCode": "UNREGISTERED"}]}}


@pytest.mark.parametrize("push_env", [FCM], indirect=True)
async def test_fcm_messages_and_errors(
        server: RunningServer, push_provider: PushProviderDouble) -> None:
    replies = {
        "fcm-gone": Reply(404, FCM_UNREGISTERED),
        # a 404 that is not FCM's (a wrong PUSH_URL): not a reason to delete devices
        "fcm-nowhere": Reply(404, text="<html><title>Error 404 (Not Found)!!1</title></html>"),
    }
    push_provider.responder = lambda r: replies.get(
        r.json()["message"]["token"], Reply(200, {"name": "projects/innera-test/messages/1"}))
    alice = await signup(server.client)
    ok = await register(server, alice, "fcm-ok", "android")
    gone = await register(server, alice, "fcm-gone", "android")
    nowhere = await register(server, alice, "fcm-nowhere", "web")
    sent, failed = await metric(server, SENT), await failed_total(server)

    n = await notify(server, alice, data={"entryId": "e-3", "count": 2, "tags": ["a"],
                                          "from": "reserved by FCM"})
    await settle(server, n["id"], {ok: "completed", gone: "completed", nowhere: "failed"})

    request = push_provider.to_token("fcm-ok")[0]
    assert request.method == "POST" and request.path == "/v1/projects/innera-test/messages:send"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.json() == {"message": {
        "token": "fcm-ok",
        "notification": {"title": "Time to write", "body": "A minute for today's entry?"},
        "data": {"entryId": "e-3", "count": "2", "tags": '["a"]', "notificationId": n["id"],
                 "kind": "entry.reminder"}}}
    assert per_token(push_provider.requests) == {"fcm-ok": 1, "fcm-gone": 1, "fcm-nowhere": 1}
    assert await listed_devices(server, alice) == {ok: "fcm-ok", nowhere: "fcm-nowhere"}
    assert await metric(server, SENT) == sent + 1
    assert await failed_total(server) == failed + 2


# --- Redis down ---------------------------------------------------------------------------


async def test_redis_down_the_notification_is_still_created(
    nursery: trio.Nursery, database_url: str, private_redis_server: Any, tmp_path: Path,
    push_provider: PushProviderDouble,
) -> None:
    redis = private_redis_server()
    env = {k: v.format(url=push_provider.url) for k, v in WEBHOOK.items()}
    srv = await start_server(nursery, load_settings(
        server_environ(database_url, redis.url, tmp_path, **env)))
    async with srv.client:
        alice = await signup(srv.client)
        await register(srv, alice, "tok-phone")
        errors = await metric(srv, "innera_redis_errors_total")
        redis.stop()

        with trio.fail_after(5):
            n = await notify(srv, alice)  # the enqueue fails: counted, not raised
        r = await srv.client.get("/v1/notifications", headers=alice.auth)
        assert r.status_code == 200, r.text
        assert [item["id"] for item in r.json()["items"]] == [n["id"]]
        assert await metric(srv, "innera_redis_errors_total") > errors
    await srv.stop()
    assert push_provider.requests == []
