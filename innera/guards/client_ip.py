"""The client's IP address, with ``TRUST_PROXY`` trusted reverse proxies in front of us.

Each proxy appends the address it received the request from to X-Forwarded-For, so with N
trusted proxies the client is the entry N hops from the right of ``X-Forwarded-For + [peer]``;
everything further left was written by the client and is ignored.
"""

from __future__ import annotations

import ipaddress

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
