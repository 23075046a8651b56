"""What the UAS admits: source filter, digest authentication, request rate and state bounds.

A `SipGuard` is handed to `sip.uas.UserAgentServer`; the router consults it before a
message is parsed (rate, source) and before any state is made for it (bounds). Choices:

* A source outside the allow list gets a stateless `403 Forbidden` to a parseable request,
  sent back to the exact address and port it came from; anything else from it (a response,
  an ACK, a message that does not parse) gets silence. A REGISTER/OPTIONS scan from
  outside so learns nothing but 403.
* A source over its request rate (`SourceRateLimiter`, burst = one second's worth) is
  dropped, over UDP and TCP alike: answering a flood only feeds it, and the peer's own
  retransmissions recover a burst. Drops are counted (`dropped`) and logged once per
  source per `LOG_INTERVAL_S`.
* The state bounds below cap what one source, and everybody together, can make the UAS
  hold; past one a request gets a stateless `503 Service Unavailable` with Retry-After.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from sip.access import AddressFilter
from sip.auth import DigestAuthenticator
from sip.ratelimit import SourceRateLimiter

log = logging.getLogger("sip.uas")

MAX_TRANSACTIONS_PER_SOURCE = 2000
"""Server transactions (INVITE and non-INVITE) one source IP may hold open."""
MAX_TRANSACTIONS = 20000
"""Server transactions all sources together may hold open."""
MAX_UNACKED_INVITES_PER_SOURCE = 200
"""Initial INVITEs of one source IP that have no final response yet or whose 2xx is not
ACKed yet (finding 5: un-ACKed INVITEs each hold a dialog and an RTP port). Not lower:
behind Kamailio every call comes from one address, and `sipp -l 100` at 100 calls/s on a
loaded host can have more than 50 INVITEs waiting at once (a stalled loop reads a burst).
The SIP door lowers it to half of MAX_CONCURRENT_CALLS when that is smaller, so one source's
un-ACKed INVITEs never take every call slot."""
RETRY_AFTER_S = 5
"""Retry-After of our 503s (bounds reached, not accepting calls)."""
LOG_INTERVAL_S = 10.0
"""At most one 'dropped' log line per source per interval."""
_MAX_LOGGED_SOURCES = 1024


@dataclass
class SipGuard:
    """Admission policy of one UAS. Every part is optional: the default admits anyone
    (tests, a UAS behind its own firewall) with only the state bounds."""

    allow: AddressFilter | None = None
    auth: DigestAuthenticator | None = None
    limiter: SourceRateLimiter | None = None
    max_transactions_per_source: int = MAX_TRANSACTIONS_PER_SOURCE
    max_transactions: int = MAX_TRANSACTIONS
    max_unacked_invites_per_source: int = MAX_UNACKED_INVITES_PER_SOURCE
    clock: Callable[[], float] = time.monotonic
    dropped: int = 0
    """Requests dropped over the rate limit since start (for a metric)."""
    refused: int = 0
    """Messages refused because of their source address since start."""
    _notes: OrderedDict[tuple[str, str], tuple[float, int]] = field(default_factory=OrderedDict)

    @classmethod
    def build(
        cls,
        allow_from: str | None = None,
        auth_users: dict[str, str] | None = None,
        realm: str = "voicebridge",
        max_requests_per_s: float | None = None,
        max_unacked_invites_per_source: int = MAX_UNACKED_INVITES_PER_SOURCE,
    ) -> SipGuard:
        """A guard from settings values: an allow list text, users (empty: no digest
        authentication), realm, per-source rate (burst = one second's worth) and the bound
        on one source's un-ACKed INVITEs."""
        return cls(
            max_unacked_invites_per_source=max_unacked_invites_per_source,
            allow=AddressFilter.parse(allow_from) if allow_from is not None else None,
            auth=DigestAuthenticator(realm, auth_users) if auth_users else None,
            limiter=(
                SourceRateLimiter(max_requests_per_s, max(1.0, max_requests_per_s))
                if max_requests_per_s
                else None
            ),
        )

    def admits(self, ip: str) -> bool:
        """True when the allow list (if any) admits `ip`."""
        return self.allow is None or self.allow.allows(ip)

    def within_rate(self, ip: str) -> bool:
        """Spend one request of `ip`'s budget; False (counted, logged sparingly) when over."""
        if self.limiter is None or self.limiter.allow(ip):
            return True
        self.dropped += 1
        self.note(ip, f"over {self.limiter.rate_per_s:g} requests/s: request(s) dropped")
        return False

    def note(self, ip: str, what: str) -> None:
        """Log `what` happened to a request of `ip`, at most once per `LOG_INTERVAL_S` per
        source and kind, with how many times it happened since (no log flood)."""
        key = (ip, what)
        now = self.clock()
        first = key not in self._notes
        since, count = self._notes.pop(key, (now, 0))
        count += 1
        if first or now - since >= LOG_INTERVAL_S:
            log.warning("call_id=- %s %s (%d since the last report)", ip, what, count)
            since, count = now, 0
        self._notes[key] = (since, count)
        while len(self._notes) > _MAX_LOGGED_SOURCES:
            self._notes.popitem(last=False)
