"""Push provider clients (httpx on Trio): one POST per device, and the provider's answer mapped
to a :class:`Delivery` (sent / unregistered token / rejected) or to
:class:`ProviderUnavailable` (try again later).

Every provider, before its own rules:

- 429, 5xx, no answer within ``PUSH_TIMEOUT_S``, a connection or protocol error →
  :class:`ProviderUnavailable` (its ``retry_after_s`` is ``Retry-After`` when given);
- 3xx (redirects are not followed) → rejected.

``expo`` — POST ``[{to, title, body, data}]`` to ``PUSH_URL`` (default
:data:`EXPO_URL`), ``Authorization: Bearer PUSH_ACCESS_TOKEN`` when set. 2xx: the ticket
(``data[0]``, or ``data`` when an object) decides: ``status "ok"`` → sent; ``status "error"``
with ``details.error "DeviceNotRegistered"`` → unregistered; ``"MessageRateExceeded"`` →
unavailable; any other error, an unreadable answer or a 4xx → rejected.

``fcm`` (HTTP v1) — POST ``{"message": {token, notification: {title, body}, data}}`` to
``PUSH_URL`` (``…/v1/projects/PROJECT/messages:send``) with ``Authorization: Bearer``.
FCM ``data`` values must be strings: other JSON values are sent as their JSON text, and the
keys FCM reserves (``from``, ``message_type``, ``collapse_key``, ``google.*``, ``gcm.*``) are
left out. 2xx → sent. An FCM error body whose ``details[].errorCode`` is ``"UNREGISTERED"``,
or whose ``error.status`` is ``"UNREGISTERED"`` / ``"NOT_FOUND"``, → unregistered. A 404
*without* such a body (e.g. a wrong ``PUSH_URL`` answered by a front end) → rejected: a
configuration mistake must not delete every device. Other 4xx → rejected.

``webhook`` — POST ``{token, platform, title, body, data}`` to ``PUSH_URL`` with
``Authorization: Bearer PUSH_ACCESS_TOKEN`` when set. 2xx → sent; 410 Gone → unregistered;
other 4xx → rejected.

Answers are read up to :data:`MAX_ANSWER_BYTES` (the rest is ignored).

Each POST is the Sentry span (op ``http.client``, ``POST <provider>``, with the answer's
status) of the push job's transaction when it is traced (:meth:`PushProvider._post`).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import httpx
import trio

from innera.config import PushSettings
from innera.observability import tracing

__all__ = [
    "EXPO_URL",
    "MAX_ANSWER_BYTES",
    "Answer",
    "Delivery",
    "ExpoProvider",
    "FcmProvider",
    "Outcome",
    "ProviderUnavailable",
    "PushMessage",
    "PushProvider",
    "WebhookProvider",
    "make_provider",
]

EXPO_URL = "https://exp.host/--/api/v2/push/send"
MAX_ANSWER_BYTES = 64 * 1024
_FCM_RESERVED = frozenset({"from", "message_type", "collapse_key"})


class Outcome(StrEnum):
    SENT = "sent"
    #: the provider says the token is dead: the device row is to be deleted
    UNREGISTERED = "unregistered"
    #: a permanent failure for this device (a 4xx, an error ticket): not retried
    REJECTED = "rejected"


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    detail: str = ""


class ProviderUnavailable(Exception):
    """The provider could not take the message now (429, 5xx, timeout, network): retry later.
    ``retry_after_s``: the provider's ``Retry-After``, when it sent one."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class PushMessage:
    """What one device is sent."""

    token: str
    platform: str
    title: str
    body: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        """The body as JSON, ``None`` when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def snippet(self) -> str:
        return self.body[:200].decode("utf-8", "replace")


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` (seconds, or an HTTP date) → seconds from now; None when unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class PushProvider(ABC):
    """One provider: the request for a message and the meaning of its answer."""

    name: str

    def __init__(self, url: str, access_token: str | None, timeout_s: float) -> None:
        self.url = url
        self.access_token = access_token
        self.timeout_s = timeout_s

    @abstractmethod
    def request_body(self, message: PushMessage) -> Any:
        """The JSON document POSTed for ``message``."""

    @abstractmethod
    def interpret(self, answer: Answer) -> Delivery:
        """The outcome of a 2xx or a 4xx other than 429 (may raise ProviderUnavailable)."""

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.access_token:
            headers["authorization"] = f"Bearer {self.access_token}"
        return headers

    async def send(self, client: httpx.AsyncClient, message: PushMessage) -> Delivery:
        """POST ``message`` (bounded by ``timeout_s`` as a whole); raises
        :class:`ProviderUnavailable` when it is worth trying again later. The texts never
        hold the push token (providers echo it in errors; it ends in logs and job errors)."""
        try:
            delivery = await self._send(client, message)
        except ProviderUnavailable as exc:
            raise ProviderUnavailable(_redact(str(exc), message.token),
                                      exc.retry_after_s) from None
        return Delivery(delivery.outcome, _redact(delivery.detail, message.token))

    async def _send(self, client: httpx.AsyncClient, message: PushMessage) -> Delivery:
        answer = await self._post(client, self.request_body(message))
        if answer.status == 429 or answer.status >= 500:
            wait = retry_after_s(answer.headers.get("retry-after"))
            hint = f", Retry-After {wait:g} s" if wait is not None else ""
            raise ProviderUnavailable(
                f"{self.name} answered {answer.status}{hint}: {answer.snippet()}", wait)
        if 300 <= answer.status < 400:
            return Delivery(Outcome.REJECTED, f"{self.name} answered {answer.status} "
                                              "(redirects are not followed)")
        return self.interpret(answer)

    async def _post(self, client: httpx.AsyncClient, document: Any) -> Answer:
        content = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            with tracing.span("http.client", f"POST {self.name}") as span, \
                    trio.fail_after(self.timeout_s):
                async with client.stream("POST", self.url, content=content,
                                         headers=self.headers()) as response:
                    body = await _read_capped(response)
                if span is not None:
                    span.set_http_status(response.status_code)
        except trio.TooSlowError:
            raise ProviderUnavailable(
                f"{self.name}: no answer within {self.timeout_s:g} s") from None
        except httpx.RequestError as exc:  # connect/read/write timeouts, refused, protocol
            raise ProviderUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        return Answer(response.status_code, response.headers, body)


async def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk[: MAX_ANSWER_BYTES - size])
        size += len(chunk)
        if size >= MAX_ANSWER_BYTES:
            break
    return b"".join(chunks)


def _redact(text: str, token: str) -> str:
    return text.replace(token, "[push token]") if token else text


def _error_text(answer: Answer, name: str) -> str:
    return f"{name} answered {answer.status}: {answer.snippet()}"


class ExpoProvider(PushProvider):
    name = "expo"

    def request_body(self, message: PushMessage) -> Any:
        return [{"to": message.token, "title": message.title, "body": message.body,
                 "data": message.data}]

    def interpret(self, answer: Answer) -> Delivery:
        if answer.status >= 400:
            return Delivery(Outcome.REJECTED, _error_text(answer, self.name))
        document = answer.json()
        data = document.get("data") if isinstance(document, dict) else None
        ticket = data[0] if isinstance(data, list) and data else data
        if not isinstance(ticket, dict):
            return Delivery(Outcome.REJECTED,
                            f"expo: no push ticket in the answer: {answer.snippet()}")
        if ticket.get("status") == "ok":
            return Delivery(Outcome.SENT, str(ticket.get("id", "")))
        details = ticket.get("details")
        error = details.get("error") if isinstance(details, dict) else None
        text = f"expo ticket error {error or '?'}: {ticket.get('message', '')}"
        if error == "DeviceNotRegistered":
            return Delivery(Outcome.UNREGISTERED, text)
        if error == "MessageRateExceeded":
            raise ProviderUnavailable(text)
        return Delivery(Outcome.REJECTED, text)


def _fcm_data(data: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        if key in _FCM_RESERVED or key.startswith(("google.", "gcm.")):
            continue
        out[key] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return out


class FcmProvider(PushProvider):
    name = "fcm"

    def request_body(self, message: PushMessage) -> Any:
        return {"message": {"token": message.token,
                            "notification": {"title": message.title, "body": message.body},
                            "data": _fcm_data(message.data)}}

    def interpret(self, answer: Answer) -> Delivery:
        if answer.status < 300:
            document = answer.json()
            name = document.get("name", "") if isinstance(document, dict) else ""
            return Delivery(Outcome.SENT, str(name))
        document = answer.json()
        error = document.get("error") if isinstance(document, dict) else None
        if isinstance(error, dict):
            status = error.get("status")
            codes = {d.get("errorCode") for d in error.get("details") or []
                     if isinstance(d, dict)}
            text = (f"fcm answered {answer.status} {status or ''} "
                    f"{'/'.join(sorted(str(c) for c in codes if c))}: {error.get('message', '')}")
            if "UNREGISTERED" in codes or status in ("UNREGISTERED", "NOT_FOUND"):
                return Delivery(Outcome.UNREGISTERED, text)
            return Delivery(Outcome.REJECTED, text)
        return Delivery(Outcome.REJECTED, _error_text(answer, self.name))


class WebhookProvider(PushProvider):
    name = "webhook"

    def request_body(self, message: PushMessage) -> Any:
        return {"token": message.token, "platform": message.platform, "title": message.title,
                "body": message.body, "data": message.data}

    def interpret(self, answer: Answer) -> Delivery:
        if answer.status < 300:
            return Delivery(Outcome.SENT)
        if answer.status == 410:
            return Delivery(Outcome.UNREGISTERED, _error_text(answer, self.name))
        return Delivery(Outcome.REJECTED, _error_text(answer, self.name))


_PROVIDERS: dict[str, type[PushProvider]] = {
    "expo": ExpoProvider, "fcm": FcmProvider, "webhook": WebhookProvider}


def make_provider(push: PushSettings) -> PushProvider | None:
    """The provider ``PUSH_PROVIDER`` names (None for ``none``)."""
    if push.provider == "none":
        return None
    cls = _PROVIDERS[push.provider]
    url = push.url or (EXPO_URL if cls is ExpoProvider else None)
    if not url:  # config.py refuses this already
        raise ValueError(f"PUSH_URL is required when PUSH_PROVIDER={push.provider}")
    return cls(url, push.access_token, push.timeout_s)
