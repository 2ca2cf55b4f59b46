"""Every regular expression that runs on text a client controls stays linear: each is run on
100,000-character inputs built to make a backtracking pattern blow up, and must finish within
50 ms of CPU. A linear pattern takes a few ms here; the quadratic Day One heading pattern
this replaced took 22 s on 60,000 characters, so the bound tells the two apart by orders of
magnitude and does not depend on the machine's speed. (Thread CPU time, not wall time: the
rest of the machine does not count.)

A second test finds every module-level pattern of ``innera`` and ``workers`` and fails when a
new one is neither listed here with its inputs nor named as never seeing client text.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

import innera
import workers
from innera import accounts, ids
from innera.auth import reauth, refresh_tokens
from innera.guards import idempotency
from innera.journal import rules, search
from innera.notifications import inbox
from innera.observability import logging as log_redaction
from innera.observability import sentry
from innera.realtime import event_log
from workers import dayone

N = 100_000
#: CPU time one pathological input may take
BUDGET_S = 0.050

_ASTRAL_MARK = chr(min(search._ASTRAL_MARKS))

#: (module, pattern name, how innera applies it, pathological inputs)
USER_TEXT: list[tuple[Any, str, str, list[str]]] = [
    (accounts, "_EMAIL", "match", [
        "a" * N, "a@" + "a" * (N - 2), "a@" + "a." * (N // 2 - 1), "@" * N,
        "a@" + "." * (N - 3) + "!", "a" * 64 + "@" + "a." * (N // 2 - 40) + "a",
        " " * N]),
    (ids, "_CANONICAL", "fullmatch", ["0" * N, "00000000-" * (N // 9), "-" * N]),
    (reauth, "_TOKEN_RE", "fullmatch", ["A" * N, "A" * 43 + "!" * (N - 43)]),
    (refresh_tokens, "_TOKEN_RE", "fullmatch", ["A" * N, "-" * N]),
    (rules, "_DATE_TIME", "fullmatch", [
        "1" * N, "2024-01-01T00:00" + "0" * (N - 16), "2024-01-01T00:00:00." + "9" * N,
        "2024-01-01T00:00:00+" + "0" * N]),
    (inbox, "_KIND", "match", ["a" * N, "a" + "-" * (N - 1) + "!", "a" + "." * N]),
    (idempotency, "_KEY_RE", "fullmatch", [" " * N, "~" * N + "\x00"]),
    (dayone, "_ESCAPE", "sub", ["\\" * N, "\\!" * (N // 2), "\\a" * (N // 2)]),
    (search, "_MARKS_BMP", "sub", ["\u0301" * N, "a\u0301" * (N // 2), "\u0301a" * (N // 2)]),
    (search, "_MARKS_ASTRAL", "sub", [_ASTRAL_MARK * N, ("a" + _ASTRAL_MARK) * (N // 2)]),
    (search, "_MAY_HAVE_ASTRAL_MARKS", "search", ["a" * N, "😊" * N]),
    (search, "_CHAR_REF", "sub", [
        "&#" * (N // 2), "&#1" * (N // 3), "&#" + "1" * (N - 2), "&#1;" * (N // 4)]),
    (log_redaction, "_NOT_ALNUM", "sub", ["-" * N, "a-" * (N // 2), "é" * N]),
    (sentry, "_TEXT_GAPS", "split", [" " * N, "a " * (N // 2), "\"'<>" * (N // 4)]),
    # ?since= of GET /v1/ws
    (event_log, "_ID", "fullmatch", ["1" * N, "1-" + "1" * N, "1" * 20 + "-" * N, "-1" * (N // 2)]),
]

#: patterns that never see client text, and why
NOT_USER_TEXT = {
    ("innera.db.migrate", "_FILE_RE"): "migration file names shipped with innera",
    ("innera.jobs.kinds", "_TABLE"): "job table names declared in innera's own JobKinds",
    ("innera.crypto.kms", "_KEY_ID"): "INNERA_MEK_KMS_KEY_ID, from the operator's environment",
    ("innera.observability.tracing", "_VARIABLE"):
        "the matched route's rule, declared in innera's blueprints, never the request path",
    ("innera.api.operation", "OPERATION_ID"): "operationIds declared in innera's own routes",
}

#: the parsing steps that replaced a regex on user text: name → (function, inputs)
PARSERS: dict[str, tuple[Callable[[str], Any], list[str]]] = {
    "dayone.split_title": (dayone.split_title, [
        "# a" + " " * 60_000 + "b\nbody", "# a" + " " * N + "b", "#" + " \t" * (N // 2),
        "# " + "#" * N + "\nbody", "# a" + " #" * (N // 2) + "\nbody", "\n" * N]),
    "dayone.heading": (dayone.heading, [
        "# a" + " " * N + "b", "# " + "# " * (N // 2), "# x" + " \t" * (N // 2) + "#"]),
    # Sentry's scrubbing of URLs in free text (messages, transaction names)
    "sentry._scrub_text": (sentry._scrub_text, [
        "/a" * (N // 2) + " ?", "a" * N + "?", "/" * N + " ?", "http://x/" * (N // 9) + "?q=1",
        "/" + "a" * N + "?q=s#" + "f" * 100]),
}


def _cpu_time(fn: Callable[[], Any]) -> float:
    started = time.thread_time()
    fn()
    return time.thread_time() - started


def _apply(pattern: re.Pattern[str], how: str, text: str) -> Callable[[], Any]:
    if how == "sub":
        return lambda: pattern.sub("", text)
    if how == "split":
        return lambda: pattern.split(text)
    return lambda: getattr(pattern, how)(text)


@pytest.mark.parametrize(("module", "name", "how", "inputs"), USER_TEXT,
                         ids=[f"{m.__name__}.{n}" for m, n, _, _ in USER_TEXT])
def test_patterns_on_client_text_are_linear(module: Any, name: str, how: str,
                                            inputs: list[str]) -> None:
    pattern = getattr(module, name)
    for text in inputs:
        assert len(text) >= N - 64, "the input must be about 100,000 characters"
        spent = _cpu_time(_apply(pattern, how, text))
        assert spent < BUDGET_S, (f"{module.__name__}.{name} took {spent * 1000:.0f} ms of "
                                  f"CPU on {text[:12]!r}… ({len(text)} characters)")


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_title_parsing_is_linear(name: str) -> None:
    fn, inputs = PARSERS[name]
    for text in inputs:
        spent = _cpu_time(lambda text=text: fn(text))
        assert spent < BUDGET_S, f"{name} took {spent * 1000:.0f} ms on {text[:12]!r}…"


def _module_patterns() -> set[tuple[str, str]]:
    found = set()
    for package in (innera, workers):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for attr, value in vars(module).items():
                if isinstance(value, re.Pattern) and getattr(value, "pattern", None):
                    found.add((info.name, attr))
    return found


def test_every_pattern_is_listed() -> None:
    listed = {(m.__name__, n) for m, n, _, _ in USER_TEXT} | set(NOT_USER_TEXT)
    unlisted = _module_patterns() - listed
    assert not unlisted, (f"new regular expressions {sorted(unlisted)}: add each to USER_TEXT "
                          "with 100,000-character pathological inputs, or to NOT_USER_TEXT "
                          "saying why no client text reaches it")
