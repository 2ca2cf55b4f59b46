"""The Quart trims (innera/api/framework.py) answer as Quart does."""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.datastructures import Headers

from innera.api.framework import RequestHeaders, TrimmedQuart

ITEMS = [("Host", "x"), ("Content-Length", "12"), ("X-Many", "1"), ("X-Many", "2"),
         ("X-Bad-Int", "twelve")]


@pytest.mark.parametrize(("args", "kwargs"), [
    (("host",), {}), (("HOST",), {}), (("missing",), {}), (("missing", "d"), {}),
    (("content-length",), {"type": int}), (("x-bad-int", 7), {"type": int}),
    (("x-many",), {}), (("missing",), {"type": int}),
])
def test_request_headers_get_answers_as_werkzeug(args: tuple[Any, ...],
                                                 kwargs: dict[str, Any]) -> None:
    ours = RequestHeaders.from_pairs(list(ITEMS))
    assert ours.get(*args, **kwargs) == Headers(ITEMS).get(*args, **kwargs)


def test_request_headers_membership_answers_as_werkzeug() -> None:
    ours = RequestHeaders.from_pairs(list(ITEMS))
    for key in ("host", "Content-LENGTH", "x-many", "missing", ""):
        assert (key in ours) == (key in Headers(ITEMS))
    assert 3 not in ours


async def test_sync_and_async_hooks_and_views_run_each_request() -> None:
    """ensure_async answers from memory after the first request: sync functions still run
    in a thread each time, async ones are awaited."""
    app = TrimmedQuart("t")
    seen: list[str] = []

    @app.before_request
    def sync_hook() -> None:
        seen.append("sync hook")

    @app.get("/a")
    def sync_view() -> str:
        seen.append("sync view")
        return "a"

    @app.get("/b")
    async def async_view() -> str:
        seen.append("async view")
        return "b"

    client = app.test_client()
    for _ in range(2):
        assert await (await client.get("/a")).get_data(as_text=True) == "a"
        assert await (await client.get("/b")).get_data(as_text=True) == "b"
    assert seen == ["sync hook", "sync view", "sync hook", "async view"] * 2
