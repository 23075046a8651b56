"""AddressFilter: CIDR parsing, IPv4/IPv6, mapped addresses, the default allow list."""

from __future__ import annotations

import ipaddress
import re

import pytest

from sip.access import DEFAULT_ALLOW_FROM, AddressFilter


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "127.255.0.9",
        "::1",
        "[::1]",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.20",
        "fd00::1",
        "fc12:3456::9",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
    ],
)
def test_default_admits_loopback_and_private(ip: str) -> None:
    assert AddressFilter.default().allows(ip)


@pytest.mark.parametrize(
    "ip",
    [
        "8.8.8.8",
        "1.1.1.1",
        "172.32.0.1",
        "192.169.0.1",
        "2001:db8::1",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "fe80::1%eth0",
        "",
        "localhost",
        "10.0.0.1:5060",
        "not an ip",
        "999.1.1.1",
    ],
)
def test_default_refuses_public_and_junk(ip: str) -> None:
    assert not AddressFilter.parse(DEFAULT_ALLOW_FROM).allows(ip)


def test_bare_addresses_and_separators() -> None:
    f = AddressFilter.parse(" 203.0.113.7 , 2001:db8::/32\n198.51.100.0/24,,")
    assert f.allows("203.0.113.7")
    assert not f.allows("203.0.113.8")
    assert f.allows("2001:db8:1::5")
    assert f.allows("198.51.100.77")
    assert not f.allows("2001:db9::1")


def test_sequence_and_network_objects() -> None:
    f = AddressFilter(["192.0.2.0/24", ipaddress.ip_network("2001:db8::/48")])
    assert f.allows("192.0.2.9") and f.allows("2001:db8::9")
    assert AddressFilter.parse(["::1"]).allows("::1")


def test_mapped_address_entry_matches_mapped_source_only_via_ipv4() -> None:
    f = AddressFilter.parse("192.0.2.1")
    assert f.allows("::ffff:192.0.2.1")
    assert f.allows("::ffff:c000:201")


def test_zone_id_is_ignored_for_matching() -> None:
    assert AddressFilter.parse("fe80::/10").allows("fe80::1%eth0")


def test_host_bits_are_allowed() -> None:
    assert AddressFilter.parse("192.168.1.7/24").allows("192.168.1.200")


def test_allow_all_and_empty() -> None:
    everyone = AddressFilter.parse("0.0.0.0/0,::/0")
    assert everyone.allows("8.8.8.8") and everyone.allows("2001:db8::1")
    nobody = AddressFilter.parse("")
    assert not nobody.allows("127.0.0.1")


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "banana", "1.2.3", "::1/129", "10.0.0.0/8/8"])
def test_parse_error_names_the_entry(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        AddressFilter.parse(f"127.0.0.1, {bad}, ::1")


def test_repr_lists_networks() -> None:
    assert "10.0.0.0/8" in repr(AddressFilter.default())
