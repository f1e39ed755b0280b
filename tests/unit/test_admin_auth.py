"""Bearer-token checks of the admin API (Garage's rules: every refusal is a 403)."""

from __future__ import annotations

import pytest

from garagekv.admin import auth
from garagekv.admin.auth import TokenAuth, bearer_token
from garagekv.util.errors import AccessDenied


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused(a: TokenAuth, level: str, headers: dict[str, str]) -> str:
    with pytest.raises(AccessDenied) as e:
        a.check(level, headers)
    assert e.value.status == 403 and e.value.code == "AccessDenied"
    return e.value.message


def test_bearer_token_parsing():
    assert bearer_token({}) is None
    assert bearer_token({"Authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"Authorization": "  bearer   abc  "}) == "abc"
    assert bearer_token({"Authorization": "Basic abc"}) == ""
    assert bearer_token({"Authorization": "Bearer"}) == ""


def test_admin_level():
    a = TokenAuth("the-admin-token", None)
    a.check(auth.ADMIN, bearer("the-admin-token"))
    assert refused(a, auth.ADMIN, {}) == auth.MISSING
    assert refused(a, auth.ADMIN, bearer("the-admin-tokem")) == auth.INVALID
    assert refused(a, auth.ADMIN, bearer("the-admin-token-and-more")) == auth.INVALID
    assert refused(a, auth.ADMIN, bearer("")) == auth.INVALID
    assert refused(a, auth.ADMIN, {"Authorization": "Basic the-admin-token"}) == auth.INVALID


def test_admin_disabled_without_token():
    for a in (TokenAuth(None, None), TokenAuth("", "metrics")):
        assert not a.admin_enabled
        assert refused(a, auth.ADMIN, bearer("anything")) == auth.DISABLED
        assert refused(a, auth.ADMIN, {}) == auth.DISABLED


def test_metrics_level():
    TokenAuth("adm", None).check(auth.METRICS, {})  # no metrics token: open
    a = TokenAuth("adm", "met")
    a.check(auth.METRICS, bearer("met"))
    a.check(auth.METRICS, bearer("adm"))  # the admin token is good for metrics too
    assert refused(a, auth.METRICS, {}) == auth.MISSING
    assert refused(a, auth.METRICS, bearer("nope")) == auth.INVALID
    assert refused(a, auth.ADMIN, bearer("met")) == auth.INVALID  # ... but not the other way round
    b = TokenAuth(None, "met")
    b.check(auth.METRICS, bearer("met"))
    assert refused(b, auth.METRICS, bearer("adm")) == auth.INVALID


def test_none_level_needs_nothing():
    TokenAuth("adm", "met").check(auth.NONE, {})


def test_tokens_are_not_kept_in_clear():
    a = TokenAuth("clear-admin-token", "clear-metrics-token")
    assert "clear-admin-token" not in repr(vars(a)) and "clear-metrics-token" not in repr(vars(a))
