"""innera/compat/werkzeug.py: the installed Werkzeug is one it was written for, and every
internal it relies on is still there with the shape used."""

from __future__ import annotations

import inspect
from contextvars import ContextVar
from types import SimpleNamespace

import pytest
from werkzeug.datastructures import Headers
from werkzeug.local import LocalProxy

from innera.compat import werkzeug as compat


def test_the_installed_version_is_supported() -> None:
    compat.SUPPORTED.check()


def test_headers_keep_their_pairs_in_a_list_named_list() -> None:
    headers = Headers([("A", "1"), ("B", "2")])
    assert headers._list == [("A", "1"), ("B", "2")]
    headers._list.append(("C", "3"))
    assert headers.get("c") == "3"  # werkzeug reads the list itself


def test_request_headers_are_filled_and_extended_in_one_step() -> None:
    pairs = [("Host", "x"), ("X-Many", "1")]
    headers = compat.RequestHeaders.from_pairs(pairs)
    assert isinstance(headers, Headers)
    assert headers.getlist("x-many") == ["1"] and "HOST" in headers
    compat.extend_headers(headers, [("X-Many", "2"), ("Vary", "Origin")])
    assert headers.getlist("x-many") == ["1", "2"] and headers["vary"] == "Origin"
    assert list(headers.items()) == [("Host", "x"), ("X-Many", "1"), ("X-Many", "2"),
                                     ("Vary", "Origin")]


def test_a_local_proxy_hands_out_the_function_behind_it() -> None:
    var: ContextVar[SimpleNamespace] = ContextVar("var")
    proxy = LocalProxy(var, "item", unbound_message="unbound")
    target = compat.proxy_target(proxy)
    assert "_get_current_object" in LocalProxy.__slots__
    assert not inspect.signature(target).parameters
    with pytest.raises(RuntimeError, match="unbound"):
        target()
    token = var.set(SimpleNamespace(item="here"))
    try:
        assert target() == "here"
    finally:
        var.reset(token)


def test_anything_but_a_local_proxy_is_refused() -> None:
    with pytest.raises(TypeError):
        compat.proxy_target(object())
