"""PUBLIC_URL: every link the API returns is absolute on it (attachment upload and download
URLs of the local store, export download links, the ``Location`` of a new export or import,
also when an idempotent request is replayed). Unset, links stay relative (the attachment,
export and import tests check that).

The server is given a public URL it is not reachable at, as behind a load balancer; the
tests play the load balancer: a link must start with the public URL, and what follows it
must work on the server."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from typing import Any

import pytest
import trio

from tests.fixtures.accounts import Account, signup
from tests.fixtures.server import RunningServer

pytestmark = pytest.mark.timeout(60)

PUBLIC = "https://api.innera.test"


@pytest.fixture
def server_settings(server_settings: dict[str, str]) -> dict[str, str]:
    return {**server_settings, "PUBLIC_URL": PUBLIC + "/"}  # the trailing slash is dropped


def behind_the_balancer(link: str) -> str:
    """The path the load balancer forwards for a public link (which must be absolute)."""
    assert link.startswith(PUBLIC + "/v1/"), link
    return link.removeprefix(PUBLIC)


async def test_attachment_upload_and_download_urls_are_absolute(
        server: RunningServer) -> None:
    alice = await signup(server.client)
    r = await server.client.post("/v1/entries", json={"body": "day"}, headers=alice.auth)
    entry_id = r.json()["id"]
    data = b"\x89PNG\r\n\x1a\n" + b"x" * 100
    r = await server.client.post(f"/v1/entries/{entry_id}/attachments", headers=alice.auth,
                                 json={"filename": "a.png", "contentType": "image/png",
                                       "size": len(data)})
    assert r.status_code == 201, r.text
    created = r.json()
    attachment_id = created["attachment"]["id"]
    assert created["uploadUrl"].startswith(
        f"{PUBLIC}/v1/attachments/local/{alice.id}/{entry_id}/{attachment_id}?")
    put = await server.client.put(behind_the_balancer(created["uploadUrl"]), content=data,
                                  headers=created["uploadHeaders"])
    assert put.status_code == 204, put.text
    r = await server.client.post(f"/v1/attachments/{attachment_id}/complete",
                                 headers=alice.auth)
    assert r.status_code == 200, r.text
    r = await server.client.get(f"/v1/attachments/{attachment_id}", headers=alice.auth)
    download = r.json()["downloadUrl"]
    got = await server.client.get(behind_the_balancer(download))
    assert got.status_code == 200 and got.content == data


async def _wait_completed(server: RunningServer, account: Account, job_id: str
                          ) -> dict[str, Any]:
    with trio.fail_after(30):
        while True:
            job = (await server.client.get(f"/v1/exports/{job_id}", headers=account.auth)
                   ).json()
            assert job["status"] not in ("failed", "expired"), job
            if job["status"] == "completed":
                return job
            await trio.sleep(0.05)


async def test_export_location_and_download_link_are_absolute_also_when_replayed(
        server: RunningServer) -> None:
    alice = await signup(server.client)
    headers = {**alice.auth, "Idempotency-Key": str(uuid.uuid4())}
    first = await server.client.post("/v1/exports", headers=headers)
    assert first.status_code == 202, first.text
    job_id = first.json()["id"]
    assert first.headers["location"] == f"{PUBLIC}/v1/exports/{job_id}"
    replayed = await server.client.post("/v1/exports", headers=headers)
    assert replayed.status_code == 202
    assert replayed.headers["location"] == first.headers["location"]

    r = await server.client.get(behind_the_balancer(first.headers["location"]),
                                headers=alice.auth)
    assert r.status_code == 200 and r.json()["id"] == job_id
    job = await _wait_completed(server, alice, job_id)
    assert job["downloadUrl"].startswith(f"{PUBLIC}/v1/attachments/local/{alice.id}/exports/")
    archive = await server.client.get(behind_the_balancer(job["downloadUrl"]))
    assert archive.status_code == 200, archive.text
    assert zipfile.ZipFile(io.BytesIO(archive.content)).testzip() is None


async def test_import_location_is_absolute(server: RunningServer) -> None:
    alice = await signup(server.client)
    r = await server.client.post("/v1/imports", content=json.dumps([]).encode(),
                                 headers={**alice.auth, "content-type": "application/json"})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"{PUBLIC}/v1/imports/{r.json()['id']}"
    r = await server.client.get(behind_the_balancer(r.headers["location"]), headers=alice.auth)
    assert r.status_code == 200, r.text
