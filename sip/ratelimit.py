"""Per-source request rate limit: one token bucket per source address, in a bounded table.

Kamailio's `pike` idea in a few lines: each source may send `burst` requests at once and
`rate_per_s` a second after that; a flood from one address is refused without touching
anyone else's budget. The table keeps at most `max_sources` buckets and forgets the least
recently seen one first (a forgotten source simply starts again with a full bucket), so
spoofed source addresses cannot grow memory. Every call is O(1).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class SourceRateLimiter:
    """Token buckets keyed by source IP: `allow(ip)` spends one token or says no."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        max_sources: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s!r}")
        if not burst >= 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        if max_sources < 1:
            raise ValueError(f"max_sources must be >= 1, got {max_sources!r}")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.max_sources = max_sources
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def allow(self, source_ip: str) -> bool:
        """Spend one token of `source_ip`'s bucket; False when it is empty."""
        now = self._clock()
        bucket = self._buckets.get(source_ip)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._buckets.popitem(last=False)
            bucket = _Bucket(self.burst, now)
            self._buckets[source_ip] = bucket
        else:
            self._buckets.move_to_end(source_ip)
            elapsed = now - bucket.stamp
            if elapsed > 0:
                bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate_per_s)
                bucket.stamp = now
        # The epsilon absorbs float error from many small refills (0.1 + ... != 1.0).
        if bucket.tokens >= 1.0 - 1e-9:
            bucket.tokens -= 1.0
            return True
        return False

    def __len__(self) -> int:
        """How many sources the table holds now."""
        return len(self._buckets)
