"""Transactions with RFC 3261 §17 timers, on an injectable scheduler so tests control time.

- `InviteServerTransaction`: timers G (non-2xx retransmission), H (give up), I (absorb ACKs).
- `NonInviteServerTransaction`: timer J (absorb request retransmissions).
- `TwoXxRetransmitter`: the UAS core's 2xx retransmission, T1 doubling to T2, until ACK;
  gives up after 64*T1 (§13.3.1.4).
- `NonInviteClientTransaction`: our BYE, timers E (retransmission over UDP) and F (timeout).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, Self

from sip.message import SipRequest, SipResponse

log = logging.getLogger("sip.transaction")


@dataclass(frozen=True)
class TimerConfig:
    """RFC 3261 timer base values, in seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def timeout(self) -> float:
        """64*T1: timers B, F, H, J and the 2xx-without-ACK limit."""
        return 64 * self.t1


class TimerHandle(Protocol):
    """What `Scheduler.call_later` returns."""

    def cancel(self) -> None:
        """Stop the callback from running."""
        ...


class Scheduler(Protocol):
    """A clock and one-shot timers."""

    def now(self) -> float:
        """Seconds on this scheduler's clock."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run `callback` after `delay` seconds."""
        ...


class AsyncioScheduler:
    """The production scheduler: the running loop's clock and `call_later`."""

    def now(self) -> float:
        """The loop's monotonic clock."""
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """`loop.call_later`, with exceptions logged instead of reaching the loop."""
        return asyncio.get_running_loop().call_later(delay, _guarded, callback)


def _guarded(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        log.exception("call_id=- timer callback failed")


class _ManualHandle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualScheduler:
    """A scheduler whose time moves only when `advance` is called (for tests)."""

    def __init__(self) -> None:
        self._now = 0.0
        self._seq = itertools.count()
        self._queue: list[tuple[float, int, _ManualHandle, Callable[[], None]]] = []

    def now(self) -> float:
        """The simulated time."""
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Queue `callback` at now + delay."""
        handle = _ManualHandle()
        heapq.heappush(
            self._queue, (self._now + max(0.0, delay), next(self._seq), handle, callback)
        )
        return handle

    def advance(self, seconds: float) -> None:
        """Move time forward, running every due callback in time order."""
        target = self._now + seconds
        while self._queue and self._queue[0][0] <= target + 1e-9:
            when, _, handle, callback = heapq.heappop(self._queue)
            self._now = max(self._now, when)
            if not handle.cancelled:
                callback()
        self._now = target

    @property
    def pending(self) -> int:
        """Timers not yet run or cancelled."""
        return sum(1 for _, _, h, _ in self._queue if not h.cancelled)


SendResponse = Callable[[SipResponse], None]

InviteServerState = Literal["proceeding", "accepted", "completed", "confirmed", "terminated"]
"""RFC 3261 §17.2.1 states, with RFC 6026's Accepted (a 2xx went out)."""

NonInviteServerState = Literal["trying", "proceeding", "completed", "terminated"]
"""RFC 3261 §17.2.2 states."""


@dataclass(eq=False)
class _ServerTransaction:
    """What both server transactions hold: the request, how responses go out, the timers."""

    request: SipRequest
    send: SendResponse
    scheduler: Scheduler
    timers: TimerConfig
    reliable: bool  # TCP: no retransmissions to absorb or send
    on_terminated: Callable[[Self], None]
    last_response: SipResponse | None = field(default=None, init=False)
    _handles: list[TimerHandle] = field(default_factory=list, init=False)

    def _later(self, delay: float, callback: Callable[[], None]) -> None:
        self._handles.append(self.scheduler.call_later(delay, callback))

    def _cancel_timers(self) -> None:
        for h in self._handles:
            h.cancel()
        self._handles.clear()


@dataclass(eq=False)
class InviteServerTransaction(_ServerTransaction):
    """RFC 3261 §17.2.1 (with RFC 6026's Accepted state for 2xx)."""

    state: InviteServerState = field(default="proceeding", init=False)
    ack_timed_out: bool = field(default=False, init=False)
    _g_interval: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._g_interval = self.timers.t1

    @property
    def final_sent(self) -> bool:
        """True once a final response went out."""
        return self.state != "proceeding"

    def respond(self, response: SipResponse) -> None:
        """Send a response from the TU and move the state machine."""
        if self.state != "proceeding":
            return
        self.last_response = response
        self.send(response)
        if response.status < 200:
            return
        if response.status < 300:
            # Accepted: retransmissions of the 2xx belong to the UAS core (TwoXxRetransmitter).
            self.state = "accepted"
            self._later(self.timers.timeout, self._terminate)
            return
        self.state = "completed"
        if not self.reliable:
            self._later(self._g_interval, self._timer_g)
        self._later(self.timers.timeout, self._timer_h)

    def receive_request(self, request: SipRequest) -> None:
        """A retransmitted INVITE, or the ACK of a non-2xx final response."""
        if request.method == "ACK":
            if self.state == "completed":
                self.state = "confirmed"
                self._cancel_timers()
                self._later(0.0 if self.reliable else self.timers.t4, self._terminate)
            return
        if self.state in ("proceeding", "completed", "accepted") and self.last_response:
            self.send(self.last_response)

    def _timer_g(self) -> None:
        if self.state != "completed" or self.last_response is None:
            return
        self.send(self.last_response)
        self._g_interval = min(2 * self._g_interval, self.timers.t2)
        self._later(self._g_interval, self._timer_g)

    def _timer_h(self) -> None:
        if self.state == "completed":
            self.ack_timed_out = True
            log.info("call_id=%s timer H: no ACK for %s", self.request.call_id, self.last_status)
            self._terminate()

    @property
    def last_status(self) -> int:
        """The status of the last response sent (0 when none)."""
        return self.last_response.status if self.last_response else 0

    def _terminate(self) -> None:
        if self.state == "terminated":
            return
        self.state = "terminated"
        self._cancel_timers()
        self.on_terminated(self)

    def close(self) -> None:
        """Stop every timer (server shutting down)."""
        self._cancel_timers()
        self.state = "terminated"


@dataclass(eq=False)
class NonInviteServerTransaction(_ServerTransaction):
    """RFC 3261 §17.2.2: absorbs retransmissions; timer J keeps it around after the answer."""

    state: NonInviteServerState = field(default="trying", init=False)

    def respond(self, response: SipResponse) -> None:
        """Send a response from the TU."""
        if self.state in ("completed", "terminated"):
            return
        self.last_response = response
        self.send(response)
        if response.status < 200:
            self.state = "proceeding"
            return
        self.state = "completed"
        self._later(0.0 if self.reliable else self.timers.timeout, self._timer_j)

    def receive_request(self, request: SipRequest) -> None:
        """A retransmission: resend the last response, if any."""
        if self.state in ("proceeding", "completed") and self.last_response is not None:
            self.send(self.last_response)

    def _timer_j(self) -> None:
        self.state = "terminated"
        self.on_terminated(self)

    def close(self) -> None:
        """Stop the timer."""
        self._cancel_timers()
        self.state = "terminated"


class TwoXxRetransmitter:
    """Resend a 2xx at T1, 2T1, 4T1 ... capped at T2 until `stop()`; after 64*T1 call
    `on_give_up` (RFC 3261 §13.3.1.4: the session should then be torn down)."""

    def __init__(
        self,
        response: SipResponse,
        send: SendResponse,
        scheduler: Scheduler,
        timers: TimerConfig,
        on_give_up: Callable[[], None],
    ) -> None:
        self.response = response
        self.sent_at: list[float] = []
        self._send = send
        self._scheduler = scheduler
        self._timers = timers
        self._on_give_up = on_give_up
        self._interval = timers.t1
        self._active = True
        self._retransmit = scheduler.call_later(self._interval, self._fire)
        self._give_up = scheduler.call_later(timers.timeout, self._expire)

    @property
    def active(self) -> bool:
        """True until the ACK came or the limit passed."""
        return self._active

    def resend(self) -> None:
        """Send the 2xx again now (a retransmitted INVITE arrived)."""
        if self._active:
            self._send(self.response)

    def _fire(self) -> None:
        if not self._active:
            return
        self.sent_at.append(self._scheduler.now())
        self._send(self.response)
        self._interval = min(2 * self._interval, self._timers.t2)
        self._retransmit = self._scheduler.call_later(self._interval, self._fire)

    def _expire(self) -> None:
        if not self._active:
            return
        self.stop()
        self._on_give_up()

    def stop(self) -> None:
        """The ACK arrived (or the dialog ended): no more retransmissions."""
        self._active = False
        self._retransmit.cancel()
        self._give_up.cancel()


class NonInviteClientTransaction:
    """RFC 3261 §17.1.2: our request (BYE), retransmitted by timer E over UDP, timer F ends
    it. `result` resolves to the final response, or None on timeout/transport error."""

    def __init__(
        self,
        request: SipRequest,
        send: Callable[[SipRequest], None],
        scheduler: Scheduler,
        timers: TimerConfig,
        reliable: bool,
    ) -> None:
        self.request = request
        self.result: asyncio.Future[SipResponse | None] = asyncio.get_running_loop().create_future()
        self.retransmissions = 0
        self._send = send
        self._scheduler = scheduler
        self._timers = timers
        self._interval = timers.t1
        self._handles: list[TimerHandle] = []
        self._send_safely()
        if not reliable:
            self._handles.append(scheduler.call_later(self._interval, self._timer_e))
        self._handles.append(scheduler.call_later(timers.timeout, self._timer_f))

    def _send_safely(self) -> None:
        try:
            self._send(self.request)
        except OSError as exc:
            log.info(
                "call_id=%s cannot send %s: %s", self.request.call_id, self.request.method, exc
            )
            self._finish(None)

    def _timer_e(self) -> None:
        if self.result.done():
            return
        self.retransmissions += 1
        self._send_safely()
        self._interval = min(2 * self._interval, self._timers.t2)
        self._handles.append(self._scheduler.call_later(self._interval, self._timer_e))

    def _timer_f(self) -> None:
        log.info("call_id=%s timer F: no answer to %s", self.request.call_id, self.request.method)
        self._finish(None)

    def receive_response(self, response: SipResponse) -> None:
        """A response matched to this transaction by branch."""
        if response.status >= 200:
            self._finish(response)
        elif self._interval < self._timers.t2:
            self._interval = self._timers.t2  # §17.1.2.2: in Proceeding, retransmit at T2

    def close(self) -> None:
        """Give up now (server shutting down): `result` becomes None."""
        self._finish(None)

    def _finish(self, response: SipResponse | None) -> None:
        for h in self._handles:
            h.cancel()
        self._handles.clear()
        if not self.result.done():
            self.result.set_result(response)
