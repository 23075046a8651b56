"""Time-limited TURN credentials, coturn's REST-API scheme (`use-auth-secret`).

The bridge and the TURN server share `TURN_SECRET` (coturn's `static-auth-secret`). The
username is `"<expiry unix time>:<user>"` and the password is
base64(HMAC-SHA1(secret, username)); coturn recomputes it and refuses an expired name, so
credentials handed to a browser stop working by themselves after `ttl_s`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

__all__ = ["turn_credentials"]


def turn_credentials(
    secret: str, *, ttl_s: int = 3600, user: str = "voicebridge", now: float | None = None
) -> tuple[str, str]:
    """(username, credential) valid until `now + ttl_s` (now: Unix time, default the
    wall clock) for a coturn server configured with `static-auth-secret=<secret>`."""
    if not secret:
        raise ValueError("TURN secret is empty")
    if ttl_s <= 0:
        raise ValueError(f"TURN credential ttl_s must be > 0, got {ttl_s!r}")
    if ":" in user:
        raise ValueError(f"TURN user must not contain ':', got {user!r}")
    expiry = int(time.time() if now is None else now) + int(ttl_s)
    username = f"{expiry}:{user}" if user else str(expiry)
    mac = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(mac).decode("ascii")
