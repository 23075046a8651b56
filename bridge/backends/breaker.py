"""A circuit breaker per backend server: skip a failing server at once instead of waiting
out its timeouts, and let one probe request find out when it is back.

closed → (`failures` consecutive failures) → open → (`cooldown_s` later, one request is let
through as the probe) → half-open → probe succeeds → closed, or fails → open again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Consecutive-failure breaker; `on_change(up)` is called whenever `up` flips."""

    def __init__(
        self,
        failures: int = 3,
        cooldown_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.failures = max(1, failures)
        self.cooldown_s = cooldown_s
        self.state: BreakerState = "closed"
        self.consecutive = 0
        self._clock = clock
        self._opened_at = 0.0
        self._on_change = on_change

    @property
    def up(self) -> bool:
        """True while closed: requests flow normally."""
        return self.state == "closed"

    def probe_due(self) -> bool:
        """True when open and the cooldown is over: the next `acquire()` is the probe."""
        return self.state == "open" and self._clock() - self._opened_at >= self.cooldown_s

    def available(self) -> bool:
        """Whether `acquire()` would let a request through now."""
        return self.state == "closed" or self.probe_due()

    def acquire(self) -> bool:
        """Let one request through? Closed: yes. Open with the cooldown over: yes, as the
        one half-open probe. Otherwise (open, or a probe already in flight): no."""
        if self.state == "closed":
            return True
        if self.probe_due():
            self.state = "half_open"
            return True
        return False

    def success(self) -> None:
        """The request went well: close."""
        self.consecutive = 0
        self._set("closed")

    def failure(self) -> None:
        """The request failed (connect error, timeout, 5xx, malformed reply)."""
        self.consecutive += 1
        if self.state == "half_open" or self.consecutive >= self.failures:
            self._opened_at = self._clock()
            self._set("open")

    def release(self) -> None:
        """The request ended without a verdict (cancelled): a probe's slot is freed."""
        if self.state == "half_open":
            self._opened_at = self._clock() - self.cooldown_s
            self.state = "open"

    def _set(self, state: BreakerState) -> None:
        was_up = self.up
        self.state = state
        if self.up != was_up and self._on_change is not None:
            self._on_change(self.up)
