"""TURN REST-API credentials (coturn use-auth-secret) against values computed by hand."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from bridge.turn import turn_credentials


def test_matches_hand_computed_value() -> None:
    username, credential = turn_credentials("s3cret", ttl_s=600, user="caller", now=1_700_000_000.7)
    assert username == "1700000600:caller"
    mac = hmac.new(b"s3cret", b"1700000600:caller", hashlib.sha1).digest()
    assert credential == base64.b64encode(mac).decode()
    assert len(base64.b64decode(credential)) == 20


def test_defaults_use_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bridge.turn.time.time", lambda: 1000.0)
    username, _ = turn_credentials("k")
    assert username == "4600:voicebridge"


def test_different_secret_different_credential() -> None:
    assert turn_credentials("a", now=0)[1] != turn_credentials("b", now=0)[1]


@pytest.mark.parametrize(
    "kwargs", [{"secret": ""}, {"secret": "k", "ttl_s": 0}, {"secret": "k", "user": "a:b"}]
)
def test_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        turn_credentials(**kwargs)  # type: ignore[arg-type]
