"""RFC 4733 telephone-event: parse/build law and a receiver that reports each digit once."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.dtmf import (
    DtmfError,
    DtmfReceiver,
    TelephoneEvent,
    build_telephone_event,
    parse_telephone_event,
)


@given(st.integers(0, 255), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF))
def test_parse_inverts_build(event: int, end: bool, volume: int, duration: int) -> None:
    assert parse_telephone_event(
        build_telephone_event(event, end, volume, duration)
    ) == TelephoneEvent(event, end, volume, duration)


def test_known_payload() -> None:
    ev = parse_telephone_event(bytes.fromhex("0b 8a 03 20"))
    assert ev == TelephoneEvent(event=11, end=True, volume=10, duration=800)
    assert ev.digit == "#"
    assert parse_telephone_event(build_telephone_event(16, False)).digit is None  # flash


def test_bad_payloads() -> None:
    with pytest.raises(DtmfError):
        parse_telephone_event(b"\x01\x02")
    with pytest.raises(DtmfError):
        build_telephone_event(1, False, volume=64)


def _packets(digits: str, start: int = 1000) -> list[tuple[int, bytes]]:
    """What a phone sends: 3 updates and 3 end-bit retransmissions per digit, 100 ms apart."""
    out = []
    ts = start
    for d in digits:
        out += [(ts, build_telephone_event(d, False, duration=160 * k)) for k in (1, 2, 3)]
        out += [(ts, build_telephone_event(d, True, duration=640))] * 3
        ts = (ts + 800) & 0xFFFFFFFF
    return out


def _receive(packets: list[tuple[int, bytes]]) -> str:
    rx = DtmfReceiver()
    return "".join(d for ts, p in packets if (d := rx.feed(ts, p)) is not None)


def test_each_digit_once_including_repeats_of_the_same_key() -> None:
    assert _receive(_packets("1234#*0011ABCD")) == "1234#*0011ABCD"


def test_timestamp_wrap() -> None:
    assert _receive(_packets("5678", start=0xFFFFFC00)) == "5678"


@given(st.text("0123456789*#ABCD", min_size=1, max_size=8), st.integers(0, 2**32 - 1), st.randoms())
def test_duplicates_reordering_and_loss_within_an_event(
    digits: str, start: int, rnd: random.Random
) -> None:
    packets = _packets(digits, start)
    mangled: list[tuple[int, bytes]] = []
    for i in range(0, len(packets), 6):
        event = packets[i : i + 6]
        kept = [p for p in event if rnd.random() > 0.3] or [event[-1]]
        kept += rnd.sample(kept, k=min(2, len(kept)))  # duplicates
        rnd.shuffle(kept)
        mangled += kept
    assert _receive(mangled) == digits


def test_long_event_segments_are_one_digit() -> None:
    rx = DtmfReceiver()
    first = rx.feed(0, build_telephone_event("5", False, duration=0xFFFF))
    second = rx.feed(0xFFFF, build_telephone_event("5", False, duration=1000))
    third = rx.feed(0xFFFF, build_telephone_event("5", True, duration=2000))
    assert (first, second, third) == ("5", None, None)
    assert rx.feed(0xFFFF + 5000, build_telephone_event("5", False, duration=160)) == "5"
