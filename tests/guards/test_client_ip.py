"""client_ip: which address a request counts as, with and without trusted proxies."""

from __future__ import annotations

import pytest

from innera.guards.client_ip import client_ip, rate_limit_client

PEER = "10.0.0.9"  # the (last) proxy, or the client itself without proxies

CASES = [
    # (peer, X-Forwarded-For, trust_proxy, expected)
    # No trusted proxy: the socket peer, whatever the header says.
    ("203.0.113.5", None, 0, "203.0.113.5"),
    ("203.0.113.5", "1.1.1.1", 0, "203.0.113.5"),
    ("203.0.113.5", ["1.1.1.1, 2.2.2.2", "3.3.3.3"], 0, "203.0.113.5"),
    ("203.0.113.5", "garbage", 0, "203.0.113.5"),
    # One proxy: the last entry it appended; spoofed entries to its left are ignored.
    (PEER, "198.51.100.7", 1, "198.51.100.7"),
    (PEER, "6.6.6.6, 198.51.100.7", 1, "198.51.100.7"),
    (PEER, ["6.6.6.6", "198.51.100.7"], 1, "198.51.100.7"),  # several headers
    (PEER, " 6.6.6.6 ,\t198.51.100.7 ", 1, "198.51.100.7"),  # whitespace
    (PEER, "6.6.6.6,,198.51.100.7,", 1, "198.51.100.7"),  # empty entries
    (PEER, None, 1, PEER),  # no header: the peer
    (PEER, "", 1, PEER),
    (PEER, [], 1, PEER),
    # Two proxies: the client's address as the outer proxy saw it.
    (PEER, "6.6.6.6, 198.51.100.7, 172.16.0.2", 2, "198.51.100.7"),
    (PEER, ["6.6.6.6, 198.51.100.7", "172.16.0.2"], 2, "198.51.100.7"),
    # Header shorter than the proxy chain: the leftmost entry.
    (PEER, "198.51.100.7", 2, "198.51.100.7"),
    (PEER, "198.51.100.7", 5, "198.51.100.7"),
    # Invalid entry at the chosen position: the peer; invalid entries elsewhere don't matter.
    (PEER, "not-an-ip", 1, PEER),
    (PEER, "unknown", 1, PEER),
    (PEER, "6.6.6.6, 999.1.1.1", 1, PEER),
    (PEER, "1.2.3.4:99999", 1, PEER),
    (PEER, "[::1", 1, PEER),
    (PEER, "[::1]x", 1, PEER),
    (PEER, "garbage, 198.51.100.7", 1, "198.51.100.7"),
    (PEER, "1.2.3.4:abc", 1, PEER),
    # Ports and brackets are stripped.
    (PEER, "198.51.100.7:5678", 1, "198.51.100.7"),
    (PEER, "[2001:db8::1]:443", 1, "2001:db8::1"),
    (PEER, "[2001:db8::1]", 1, "2001:db8::1"),
    # IPv6 is compressed; IPv4-mapped IPv6 becomes IPv4.
    (PEER, "2001:0DB8:0000:0000:0000:0000:0000:0001", 1, "2001:db8::1"),
    (PEER, "::ffff:198.51.100.7", 1, "198.51.100.7"),
    (PEER, "[::ffff:198.51.100.7]:80", 1, "198.51.100.7"),
    ("::ffff:203.0.113.5", None, 0, "203.0.113.5"),
    ("2001:db8:0:0::5", "1.1.1.1", 0, "2001:db8::5"),
    ("[2001:db8::5]:1234", None, 0, "2001:db8::5"),
    ("203.0.113.5:4321", None, 0, "203.0.113.5"),
    # IPv6 peer behind an IPv4 client, and the other way round.
    ("fd00::1", "198.51.100.7", 1, "198.51.100.7"),
    (PEER, "2001:db8::7", 1, "2001:db8::7"),
    # Unknown peer.
    (None, None, 0, "unknown"),
    ("", "1.1.1.1", 0, "unknown"),
    (None, "198.51.100.7", 1, "198.51.100.7"),
    (None, "bogus", 1, "unknown"),
]


@pytest.mark.parametrize(("peer", "forwarded_for", "trust_proxy", "expected"), CASES)
def test_client_ip(
    peer: str | None, forwarded_for: list[str] | str | None, trust_proxy: int, expected: str
) -> None:
    assert client_ip(peer, forwarded_for, trust_proxy) == expected


def test_spoofing_changes_nothing_without_trusted_proxies() -> None:
    for spoof in ("1.1.1.1", "127.0.0.1", "::1", "1.1.1.1, 2.2.2.2", ["a", "b"]):
        assert client_ip("203.0.113.5", spoof, 0) == "203.0.113.5"


def test_spoofing_changes_nothing_behind_one_proxy() -> None:
    # The proxy appends the real client (198.51.100.7) to whatever the client sent.
    for spoof in ("1.1.1.1", "127.0.0.1, ::1", "x" * 1000):
        assert client_ip(PEER, f"{spoof}, 198.51.100.7", 1) == "198.51.100.7"


@pytest.mark.parametrize(("ip", "key"), [
    # IPv4 and unknown peers count as they are
    ("203.0.113.5", "203.0.113.5"),
    ("127.0.0.1", "127.0.0.1"),
    ("unknown", "unknown"),
    # IPv6 counts by its /64: a subscriber's whole prefix is one client
    ("2001:db8:1:2::a", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("2001:db8::1", "2001:db8::/64"),
    ("::1", "::/64"),
    ("fe80::1:2:3:4", "fe80::/64"),
    # IPv4-mapped IPv6 is the IPv4 address (client_ip already returns it so)
    ("::ffff:198.51.100.7", "198.51.100.7"),
    # not an address (a peer string client_ip could not parse): unchanged
    ("not:an:address", "not:an:address"),
])
def test_rate_limit_client_keys_ipv6_by_its_64(ip: str, key: str) -> None:
    assert rate_limit_client(ip) == key


def test_addresses_of_one_64_share_a_rate_limit_key_after_client_ip() -> None:
    keys = {rate_limit_client(client_ip(PEER, forwarded, 1))
            for forwarded in ("2001:0db8:0001:0002:0000:0000:0000:000a", "[2001:db8:1:2::b]:443",
                              "2001:db8:1:2:8000::1")}
    assert keys == {"2001:db8:1:2::/64"}
    assert rate_limit_client(client_ip(PEER, "[::ffff:198.51.100.7]:80", 1)) == "198.51.100.7"
