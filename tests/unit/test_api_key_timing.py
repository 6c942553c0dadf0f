"""API key checks are timing-safe: the presented key is hashed and compared with *every*
configured hash by ``hmac.compare_digest``, whether it matches the first, the last or none."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest

import service.api.auth as auth
from service.api.auth import KeyRing
from service.api.errors import Unauthorized
from service.settings import ApiKey, ApiSettings

SECRETS = [f"secret-number-{i}" for i in range(5)]


def _ring() -> KeyRing:
    keys = tuple(
        ApiKey(name=f"k{i}", sha256=hashlib.sha256(s.encode()).hexdigest(), scopes=("admin",))
        for i, s in enumerate(SECRETS)
    )
    return KeyRing(ApiSettings(keys=keys))


class _Counting:
    """Stands in for the ``hmac`` module inside auth.py and records every comparison."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []

    def compare_digest(self, a: Any, b: Any) -> bool:
        self.calls.append((a, b))
        return hmac.compare_digest(a, b)


@pytest.mark.parametrize(
    ("presented", "expected"),
    [(SECRETS[0], "k0"), (SECRETS[-1], "k4"), ("secret-number-", None), ("x" * 500, None)],
)
def test_every_configured_hash_is_compared_in_constant_time(
    presented: str, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = _Counting()
    monkeypatch.setattr(auth, "hmac", counting)
    ring = _ring()
    if expected is None:
        with pytest.raises(Unauthorized):
            ring.authenticate(presented)
    else:
        assert ring.authenticate(presented).name == expected
    assert len(counting.calls) == len(SECRETS), "no early exit on a match"
    digest = hashlib.sha256(presented.encode()).digest()
    # what is compared are fixed-length digests, never the key itself or a prefix of it
    assert all(a == digest and len(b) == 32 for a, b in counting.calls)


def test_no_plain_comparison_of_keys_in_the_auth_module() -> None:
    source = Path(auth.__file__).read_text(encoding="utf-8")
    assert "compare_digest(" in source
    for forbidden in ("presented ==", "== presented", "digest ==", "== digest", ".startswith("):
        assert forbidden not in source, forbidden
