"""The client's IP address, with ``TRUST_PROXY`` trusted reverse proxies in front of us.

Each proxy appends the address it received the request from to X-Forwarded-For, so with N
trusted proxies the client is the entry N hops from the right of ``X-Forwarded-For + [peer]``;
everything further left was written by the client and is ignored.

Rate limits count a client by :func:`rate_limit_client`: an IPv6 client by its /64 (one
subscriber typically gets a whole /64, so its 2^64 addresses count as one client), IPv4 by its
address.

Without ``TRUST_PROXY`` the header is ignored; :class:`UntrustedForwardedFor` logs one warning
the first time a request carries it anyway (a proxy in front of us that we do not trust would
make every client count as the proxy's address).
"""

from __future__ import annotations

import ipaddress
import logging

log = logging.getLogger("innera.guards.client_ip")

UNKNOWN = "unknown"


def client_ip(peer: str | None, forwarded_for: list[str] | str | None, trust_proxy: int) -> str:
    """``peer``: the socket peer's address; ``forwarded_for``: the X-Forwarded-For header
    value(s); ``trust_proxy``: how many reverse proxies in front of us are trusted."""
    peer_ip = _normalise(peer) if peer else None
    if peer_ip is None:
        peer_ip = peer.strip() if peer and peer.strip() else UNKNOWN
    if trust_proxy <= 0 or not forwarded_for:
        return peer_ip
    values = [forwarded_for] if isinstance(forwarded_for, str) else forwarded_for
    entries = [e.strip() for value in values for e in value.split(",") if e.strip()]
    addresses = [*entries, peer_ip]
    chosen = addresses[-(trust_proxy + 1)] if len(addresses) > trust_proxy else addresses[0]
    return _normalise(chosen) or peer_ip


def rate_limit_client(ip: str) -> str:
    """What the per-IP rate limits count ``ip`` (a :func:`client_ip` result) as: an IPv6
    address as its /64 network (``2001:db8:1:2::/64``), an IPv4-mapped IPv6 address as the
    IPv4 address, IPv4 and anything else (``unknown``) unchanged."""
    if ":" not in ip:  # IPv4 or unknown: no parsing on the common path
        return ip
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        prefix = int(address) >> 64 << 64
        return f"{ipaddress.IPv6Address(prefix)}/64"
    return ip


class UntrustedForwardedFor:
    """One warning per process (per app), the first time a request carries X-Forwarded-For
    while ``TRUST_PROXY=0``: the header is ignored, and behind a proxy every client would
    count as the proxy's address."""

    def __init__(self, trust_proxy: int) -> None:
        #: whether a request with the header still has to be reported
        self.pending = trust_proxy <= 0

    def seen(self) -> None:
        """A request carried X-Forwarded-For."""
        if self.pending:
            self.pending = False
            log.warning(
                "a request carried X-Forwarded-For, which is ignored because TRUST_PROXY=0: "
                "every client counts as the socket peer's address. Behind a reverse proxy or "
                "load balancer, set TRUST_PROXY to the number of proxies in front of innera "
                "(logged once)")


def _normalise(value: str) -> str | None:
    """The address in canonical form (IPv6 compressed, IPv4-mapped IPv6 as IPv4), without
    brackets or port; ``None`` when ``value`` is not an IP address."""
    text = value.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        end = text.find("]")
        if end < 0 or (text[end + 1:] and not _is_port(text[end + 1:])):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # v4:port (a bare IPv6 address has at least two colons)
        text, port = text.split(":")
        if not _is_port(":" + port):
            return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _is_port(suffix: str) -> bool:
    digits = suffix[1:]
    return suffix[:1] == ":" and digits.isascii() and digits.isdigit() and int(digits) <= 65535
