"""Job files on both stores: streamed in and out without a known length, a failed upload
stores nothing, and a user prefix deletes every object of that user only."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from innera.errors import PayloadTooLarge
from innera.storage import LocalStorage, S3Storage, Storage
from innera.storage.keys import InvalidKey, job_file_key, object_key, user_prefix
from innera.storage.s3 import PART_BYTES
from tests.fixtures.s3 import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Bucket

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "objects")
        return
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    yield S3Storage(bucket=bucket.name, endpoint=bucket.endpoint, region=REGION,
                    access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY)


async def chunks(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def read_all(store: Storage, key: str) -> bytes:
    return b"".join([c async for c in store.get_stream(key)])


@pytest.mark.parametrize("size", [0, 1000, PART_BYTES * 2 + 12345])
async def test_a_stream_of_unknown_length_round_trips(store: Storage, size: int) -> None:
    data = os.urandom(size)
    key = job_file_key(str(uuid.uuid4()), "exports", str(uuid.uuid4()))
    assert await store.put_stream(key, chunks(data), content_type="application/zip") == size
    assert await store.head(key) == size
    assert await read_all(store, key) == data


async def test_past_the_limit_nothing_is_stored(store: Storage) -> None:
    key = job_file_key(str(uuid.uuid4()), "imports", str(uuid.uuid4()))
    with pytest.raises(PayloadTooLarge):
        await store.put_stream(key, chunks(os.urandom(PART_BYTES + 10)),
                               content_type="application/octet-stream", max_bytes=PART_BYTES)
    assert await store.head(key) is None
    with pytest.raises(FileNotFoundError):
        await read_all(store, key)


async def test_a_user_prefix_deletes_everything_of_that_user_only(store: Storage) -> None:
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    keys = {
        who: [object_key(who, str(uuid.uuid4()), str(uuid.uuid4())),
              job_file_key(who, "exports", str(uuid.uuid4())),
              job_file_key(who, "imports", str(uuid.uuid4()))]
        for who in (alice, bob)
    }
    for key in keys[alice] + keys[bob]:
        await store.put_stream(key, chunks(b"x" * 10), content_type="text/plain")
    assert await store.delete_prefix(user_prefix(alice)) == 3
    assert [await store.head(k) for k in keys[alice]] == [None, None, None]
    assert [await store.head(k) for k in keys[bob]] == [10, 10, 10]
    assert await store.delete_prefix(user_prefix(alice)) == 0
    await store.check_health()  # the store's root is still usable


def test_keys_are_validated() -> None:
    user, job = str(uuid.uuid4()), str(uuid.uuid4())
    assert job_file_key(user.upper(), "exports", job) == f"{user}/exports/{job}"
    for bad in [("x", "exports", job), (user, "../etc", job), (user, "exports", "..")]:
        with pytest.raises(InvalidKey):
            job_file_key(*bad)
    with pytest.raises(InvalidKey):
        user_prefix("..")
