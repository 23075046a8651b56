"""Source-address access control: one CIDR list decides who may talk to any door.

`ALLOW_FROM` is parsed once into an `AddressFilter`; SIP answers 403 and the HTTP doors
answer 403 to a source it refuses. The default admits only loopback and private ranges,
so a fresh install is not open to the internet. Stdlib only (it lives in `sip/`, which the
HTTP doors may import).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_ALLOW_FROM = "127.0.0.0/8,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
"""Loopback and private ranges (RFC 1918, RFC 4193 unique-local)."""

MAX_ENTRIES = 4096
_SEPARATORS = re.compile(r"[\s,]+")


def _parse_entry(entry: str) -> IPNetwork:
    text = entry.strip()
    if text.startswith("[") and "]" in text:
        # "[::1]" or "[2001:db8::]/32"
        close = text.index("]")
        text = text[1:close] + text[close + 1 :]
    try:
        # strict=False: "192.168.1.7/24" means the /24 that holds it, as in Kamailio.
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"bad address or CIDR in allow list: {entry!r} ({exc})") from None


def _parse_address(ip: str) -> IPAddress | None:
    text = ip.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            # fe80::1%eth0: the zone names an interface, not a different address.
            return ipaddress.IPv6Address(text.split("%", 1)[0])
    return address


class AddressFilter:
    """An allow list of IPv4/IPv6 networks; a source is admitted when any network holds it.

    An empty list admits nobody; `0.0.0.0/0,::/0` admits everybody. IPv4-mapped IPv6
    sources (`::ffff:10.0.0.1`, as a dual-stack socket reports them) match IPv4 entries.
    """

    __slots__ = ("_v4", "_v6", "networks")

    def __init__(self, networks: Iterable[str | IPNetwork]) -> None:
        parsed: list[IPNetwork] = []
        for item in networks:
            if isinstance(item, str):
                if not item.strip():
                    continue
                parsed.append(_parse_entry(item))
            else:
                parsed.append(item)
            if len(parsed) > MAX_ENTRIES:
                raise ValueError(f"allow list has more than {MAX_ENTRIES} entries")
        self.networks: tuple[IPNetwork, ...] = tuple(parsed)
        self._v4 = tuple(n for n in parsed if isinstance(n, ipaddress.IPv4Network))
        self._v6 = tuple(n for n in parsed if isinstance(n, ipaddress.IPv6Network))

    @classmethod
    def parse(cls, text: str | Sequence[str]) -> AddressFilter:
        """Build a filter from `"10.0.0.0/8, ::1 192.168.1.5"` (comma or space separated)
        or a sequence of entries. Raises `ValueError` naming the first bad entry."""
        if isinstance(text, str):
            entries: Iterable[str] = _SEPARATORS.split(text)
        else:
            entries = text
        return cls(entries)

    @classmethod
    def default(cls) -> AddressFilter:
        """The filter for `DEFAULT_ALLOW_FROM`."""
        return cls.parse(DEFAULT_ALLOW_FROM)

    def allows(self, ip: str) -> bool:
        """True when `ip` (an address literal, brackets and zone allowed) is admitted.
        Anything that is not an IP address is refused, never an exception."""
        address = _parse_address(ip)
        if address is None:
            return False
        if isinstance(address, ipaddress.IPv4Address):
            return any(address in net for net in self._v4)
        return any(address in net for net in self._v6)

    def __repr__(self) -> str:
        return f"AddressFilter({','.join(str(n) for n in self.networks)!r})"
