"""Pure logic of the Hulykvs-compatible API: UUIDs, sizes, tokens and claims, conditions, routes,
the value a Hulykvs client sees in a K2V item, and the [hulykvs_api] config section."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from garagekv.api.hulykvs import auth
from garagekv.api.hulykvs.conditions import Condition, md5_hex, parse_conditions
from garagekv.api.hulykvs.errors import HulyError
from garagekv.api.hulykvs.mapping import check_sizes, decode_segment, workspace_of
from garagekv.api.hulykvs.router import route
from garagekv.api.hulykvs.store import current_value
from garagekv.model.k2v.item import DvvsEntry, K2VItem
from garagekv.util.config import ConfigError, canonical_uuid, parse_config, parse_size

U = "0f1e2d3c-4b5a-4678-9abc-def012345678"
SECRET = "s" * 64


@pytest.mark.parametrize(
    "text",
    [U, U.upper(), U.replace("-", ""), U.replace("-", "").upper(), "{" + U + "}", "urn:uuid:" + U, "URN:UUID:" + U,
     ],
)  # fmt: skip
def test_uuid_spellings(text):
    assert canonical_uuid(text) == U


@pytest.mark.parametrize(
    "text",
    ["", "x", U[:-1], U + "0", U.replace("-", "", 1), "0f1e2d3c4b5a-4678-9abc-def0123456789", "{" + U, U + "}",
     "urn:uuid:{" + U + "}", U.replace("0", "g"), "0f1e-2d3c-4b5a-4678-9abc-def012345678", None, 5,
     # whitespace or control characters around it (str.strip would remove them all)
     " " + U + " ", "\t" + U, U + "\n", "\u3000" + U, U + "\x85", "\x1c" + U],
)  # fmt: skip
def test_not_uuids(text):
    assert canonical_uuid(text) is None


def test_workspace_segment():
    assert workspace_of("%7B" + U + "%7D") == U
    with pytest.raises(HulyError) as e:
        workspace_of("WrongUUID")
    assert e.value.status == 400


@pytest.mark.parametrize(
    "text,n",
    [("2Mb", 2_000_000), ("2MB", 2_000_000), ("2MiB", 2_097_152), ("2mib", 2_097_152), ("512KiB", 524_288),
     ("512Kb", 512_000), ("1000", 1000), (4096, 4096), ("1.5MiB", 1_572_864)],
)  # fmt: skip
def test_sizes(text, n):
    assert parse_size(text) == n


def test_segments_decode_utf8():
    assert decode_segment("a%2Fb%20%C3%A9", "key") == "a/b é"
    with pytest.raises(HulyError):
        decode_segment("%FF", "key")


def test_key_sizes():
    check_sizes(U, "n" * 442, "k" * 479)
    with pytest.raises(HulyError):
        check_sizes(U, "n" * 443, "k")
    with pytest.raises(HulyError):
        check_sizes(U, "n", "k" * 480)
    with pytest.raises(HulyError):
        check_sizes(U, "n", "é" * 240)  # 480 bytes of UTF-8


# ---- tokens ---------------------------------------------------------------------------------------


def _status(header, secret=SECRET) -> int:
    try:
        auth.verify(header, secret)
    except HulyError as e:
        return e.status
    return 200


def _b64(d: bytes) -> str:
    return base64.urlsafe_b64encode(d).rstrip(b"=").decode()


def test_verify_accepts_huly_tokens():
    tok = jwt.encode({"account": U, "workspace": U.upper(), "extra": {"service": "x"}}, SECRET, algorithm="HS256")
    c = auth.verify(f"Bearer {tok}", SECRET)
    assert c == auth.Claims(U, U, {"service": "x"}) and not c.is_system
    assert auth.verify(f"bearer {tok}", SECRET).account == U  # scheme is case-insensitive
    assert auth.verify(f"Bearer {auth.mint(SECRET, auth.SYSTEM_ACCOUNT)}", SECRET).is_system


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer  ", "Basic abc", "Bearer x.y.z", "Bearer abc"],
)
def test_verify_refuses_malformed_headers(header):
    assert _status(header) == 401


def test_verify_refuses_other_algorithms_and_bad_claims():
    none_tok = _b64(b'{"alg":"none"}') + "." + _b64(json.dumps({"account": U}).encode()) + "."
    rs_tok = _b64(b'{"alg":"RS256"}') + "." + _b64(json.dumps({"account": U}).encode()) + "." + _b64(b"x" * 256)
    bad = [
        none_tok,
        rs_tok,
        jwt.encode({"account": U}, SECRET, algorithm="HS512"),
        jwt.encode({"account": U}, "t" * 32, algorithm="HS256"),
        jwt.encode({"account": U, "exp": int(time.time()) - 1}, SECRET, algorithm="HS256"),
        jwt.encode({"account": "nope"}, SECRET, algorithm="HS256"),
        jwt.encode({"workspace": U}, SECRET, algorithm="HS256"),
        jwt.encode({"account": U, "workspace": 7}, SECRET, algorithm="HS256"),
        jwt.encode({"account": U, "extra": ["a"]}, SECRET, algorithm="HS256"),
        jwt.encode({"account": U, "extra": {"a": 1}}, SECRET, algorithm="HS256"),
    ]
    for tok in bad:
        assert _status(f"Bearer {tok}") == 401, tok
    ok = jwt.encode({"account": U, "exp": int(time.time()) + 60, "workspace": None}, SECRET, algorithm="HS256")
    assert _status(f"Bearer {ok}") == 200


class Clock:
    """A settable wall clock for the token cache (PyJWT itself keeps the real one)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def decodes(monkeypatch):
    """How many tokens went through PyJWT (a cache miss each)."""
    calls = []
    real = jwt.decode
    monkeypatch.setattr(auth.jwt, "decode", lambda *a, **kw: calls.append(a[0]) or real(*a, **kw))
    return calls


def _outcome(fn, header):
    try:
        return fn(header)
    except HulyError as e:
        return (e.status, str(e))


def test_cached_token_is_accepted_without_verifying_again(decodes):
    v = auth.TokenVerifier(SECRET)
    tok = jwt.encode({"account": U, "workspace": U, "extra": {"service": "x"}}, SECRET, algorithm="HS256")
    first = v.verify(f"Bearer {tok}")
    assert v.verify(f"bearer  {tok} ") == first == auth.Claims(U, U, {"service": "x"})
    assert decodes == [tok] and len(v) == 1
    other = auth.mint(SECRET, auth.SYSTEM_ACCOUNT)
    assert v.verify(f"Bearer {other}").is_system and len(decodes) == 2 and len(v) == 2


def test_cached_token_expires_at_its_exp(decodes):
    clock = Clock()
    v = auth.TokenVerifier(SECRET, clock=clock)
    exp = int(clock.now) + 60
    tok = jwt.encode({"account": U, "exp": exp}, SECRET, algorithm="HS256")
    assert v.verify(f"Bearer {tok}").account == U
    clock.now = exp - 0.001
    assert v.verify(f"Bearer {tok}").account == U and len(decodes) == 1  # still valid: from the cache
    clock.now = exp  # PyJWT: expired once exp <= now
    assert _outcome(v.verify, f"Bearer {tok}") == (401, "invalid token: expired")
    assert len(v) == 0 and len(decodes) == 1  # refused from the cache, and evicted


def test_cached_token_is_refused_before_its_nbf():
    clock = Clock()
    v = auth.TokenVerifier(SECRET, clock=clock)
    nbf = int(clock.now) - 5
    tok = jwt.encode({"account": U, "nbf": nbf, "iat": nbf}, SECRET, algorithm="HS256")
    assert v.verify(f"Bearer {tok}").account == U and len(v) == 1
    clock.now = nbf - 1  # the clock stepped back: PyJWT would refuse it now
    assert _outcome(v.verify, f"Bearer {tok}") == (401, "invalid token: The token is not yet valid (iat)")
    tok = jwt.encode({"account": U, "nbf": nbf}, SECRET, algorithm="HS256")
    clock.now = time.time()
    v.verify(f"Bearer {tok}")
    clock.now = nbf - 1
    assert _outcome(v.verify, f"Bearer {tok}") == (401, "invalid token: The token is not yet valid (nbf)")
    assert len(v) == 0


def test_tampered_and_refused_tokens_are_not_cached(decodes):
    v = auth.TokenVerifier(SECRET)
    tok = auth.mint(SECRET, U, U)
    v.verify(f"Bearer {tok}")
    head, payload, sig = tok.split(".")
    forged = _b64(json.dumps({"account": auth.SYSTEM_ACCOUNT}).encode())
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    for bad in [f"{head}.{forged}.{sig}", f"{head}.{payload}.{flipped}", auth.mint("t" * 32, U, U)]:
        for _ in range(2):
            assert _outcome(v.verify, f"Bearer {bad}") == (401, "invalid token: bad signature")
    assert len(v) == 1  # only the valid token
    assert v.verify(f"Bearer {tok}") == auth.Claims(U, U)


def test_token_cache_is_a_bounded_lru(decodes):
    v = auth.TokenVerifier(SECRET, maxsize=8)
    toks = [auth.mint(SECRET, U, extra={"n": str(i)}) for i in range(20)]
    for t in toks:
        v.verify(f"Bearer {t}")
    assert len(v) == 8 and len(decodes) == 20
    v.verify(f"Bearer {toks[12]}")  # the oldest cached one, now the most recent
    v.verify(f"Bearer {toks[0]}")  # evicted long ago: verified again, evicts toks[13]
    assert len(decodes) == 21 and len(v) == 8
    v.verify(f"Bearer {toks[12]}")
    assert len(decodes) == 21
    v.verify(f"Bearer {toks[13]}")
    assert len(decodes) == 22 and len(v) == 8
    with pytest.raises(ValueError):
        auth.TokenVerifier(SECRET, maxsize=0)


def test_token_cache_gives_the_uncached_answers():
    none_tok = _b64(b'{"alg":"none"}') + "." + _b64(json.dumps({"account": U}).encode()) + "."
    now = int(time.time())
    headers = [None, "", "Basic abc", "Bearer x.y.z", f"Bearer {none_tok}"] + [
        f"Bearer {jwt.encode(p, key, algorithm=alg)}"
        for p, key, alg in [
            ({"account": U}, SECRET, "HS256"),
            ({"account": U}, SECRET, "HS512"),
            ({"account": U, "workspace": U.upper(), "extra": {"a": "b"}}, SECRET, "HS256"),
            ({"account": U, "exp": now - 1}, SECRET, "HS256"),
            ({"account": U, "exp": now + 60, "nbf": now - 1, "iat": now - 1}, SECRET, "HS256"),
            ({"account": U, "nbf": now + 60}, SECRET, "HS256"),
            ({"account": U, "iat": "soon"}, SECRET, "HS256"),
            ({"account": U, "aud": "x"}, SECRET, "HS256"),
            ({"account": "nope"}, SECRET, "HS256"),
            ({"account": U, "extra": {"a": 1}}, SECRET, "HS256"),
            ({"account": U}, "t" * 32, "HS256"),
        ]
    ]
    v = auth.TokenVerifier(SECRET)
    for h in headers:
        expected = _outcome(lambda x: auth.verify(x, SECRET), h)
        assert _outcome(v.verify, h) == expected, h  # cold
        assert _outcome(v.verify, h) == expected, h  # warm
    assert len(v) == 3  # the three valid tokens


def test_new_secret_gets_a_new_cache():
    from garagekv.api.hulykvs.context import HulyState

    state = HulyState(None, SECRET, U, 1024)  # type: ignore[arg-type]  # no store needed
    tok = auth.mint(SECRET, U, U)
    assert state.verifier.verify(f"Bearer {tok}").account == U
    assert state.verifier is state.verifier and len(state.verifier) == 1
    state.token_secret = "n" * 64
    assert _outcome(state.verifier.verify, f"Bearer {tok}") == (401, "invalid token: bad signature")
    assert state.verifier.verify(f"Bearer {auth.mint(state.token_secret, U)}").account == U


def test_workspace_rules():
    system = auth.Claims(auth.SYSTEM_ACCOUNT)
    other = "11111111-1111-1111-1111-111111111111"
    auth.authorize_v2(system, U)
    auth.authorize_v2(auth.Claims(other, U), U)
    for claims in [auth.Claims(other), auth.Claims(other, other)]:
        with pytest.raises(HulyError) as e:
            auth.authorize_v2(claims, U)
        assert e.value.status == 403
    auth.authorize_v1(system, U)
    auth.authorize_v1(auth.Claims(other), U)
    auth.authorize_v1(auth.Claims(other, U), U)
    auth.authorize_v1(auth.Claims(auth.SYSTEM_ACCOUNT, other), U)
    with pytest.raises(HulyError) as e:
        auth.authorize_v1(auth.Claims(other, other), U)
    assert e.value.status == 403


def test_mint():
    tok = auth.mint(SECRET, U.upper(), U.replace("-", ""), ttl=3600)
    assert jwt.get_unverified_header(tok)["alg"] == "HS256"
    claims = jwt.decode(tok, SECRET, algorithms=["HS256"])
    assert claims["account"] == U and claims["workspace"] == U and claims["exp"] > time.time() + 3000
    assert "exp" not in jwt.decode(auth.mint(SECRET, U), SECRET, algorithms=["HS256"])
    with pytest.raises(HulyError):
        auth.mint(SECRET, "nope")


def test_short_secret_warning():
    assert auth.short_secret_warning("secret") is not None
    assert auth.short_secret_warning("x" * 32) is None


# ---- conditions -----------------------------------------------------------------------------------

MD5 = md5_hex(b"some text")


def test_md5():
    assert MD5 == "552e21cd4cd9918678e3c1a0df491bc3"


@pytest.mark.parametrize(
    "im,inm,expected",
    [(None, None, Condition()), (None, "*", Condition("absent")), (None, " * ", Condition("absent")),
     ("*", None, Condition("exists")), (MD5, None, Condition("md5", MD5)), (MD5.upper(), None, Condition("md5", MD5)),
     (f'"{MD5}"', None, Condition("md5", MD5)), (f' "{MD5}" ', None, Condition("md5", MD5))],
)  # fmt: skip
def test_parse_conditions(im, inm, expected):
    assert parse_conditions(im, inm) == expected


@pytest.mark.parametrize(
    "im,inm",
    [("*", "*"), (MD5, "*"), (None, MD5), (None, ""), ("", None), ("abc", None), ("g" * 32, None), (MD5 + "0", None),
     (f"W/\"{MD5}\"", None), (f'"{MD5}', None), (f"{MD5},{MD5}", None)],
)  # fmt: skip
def test_bad_conditions(im, inm):
    with pytest.raises(HulyError) as e:
        parse_conditions(im, inm)
    assert e.value.status == 400


def test_condition_holds():
    assert Condition().holds(None) and Condition().holds(MD5)
    assert Condition("absent").holds(None) and not Condition("absent").holds(MD5)
    assert Condition("exists").holds(MD5) and not Condition("exists").holds(None)
    assert Condition("md5", MD5).holds(MD5) and not Condition("md5", MD5).holds(None)
    assert not Condition("md5", MD5).holds(md5_hex(b"other"))
    with pytest.raises(HulyError):
        parse_conditions(None, "*", allow_none_match=False)


# ---- routes ---------------------------------------------------------------------------------------


def test_routes():
    assert route("GET", f"/api2/{U}/ns/k").name == "Get"
    assert route("HEAD", f"/api2/{U}/ns/k").name == "Head"
    assert route("GET", f"/api2/{U}/ns").name == "List"
    assert route("POST", "/api/ns/k").name == "V1Post"
    assert route("GET", "/status").name == "Status"
    assert route("GET", f"/api2/{U}/n%2Fs/k%2F").segments == [U, "n%2Fs", "k%2F"]
    for path in ["/", "/api2", f"/api2/{U}", f"/api2/{U}/ns/", f"/api2/{U}//k", "/api/ns/k/x", "/x"]:
        with pytest.raises(HulyError) as e:
            route("GET", path)
        assert e.value.status == 404, path
    for method, path in [("POST", f"/api2/{U}/ns/k"), ("PUT", "/api/ns/k"), ("PUT", f"/api2/{U}/ns")]:
        with pytest.raises(HulyError) as e:
            route(method, path)
        assert e.value.status == 405


# ---- the value of a K2V item ----------------------------------------------------------------------


def _item(entries: dict[int, list[tuple[int, bytes | None]]]) -> K2VItem:
    return K2VItem(b"\0" * 32, "pk", "sk", {n: DvvsEntry(0, vals) for n, vals in entries.items()})


def test_current_value_rules():
    assert current_value(None) is None
    assert current_value(_item({})) is None
    assert current_value(_item({1: [(5, None)]})) is None
    assert current_value(_item({1: [(5, b"a"), (7, b"b")]})) == b"b"
    assert current_value(_item({1: [(5, b"a")], 2: [(9, b"c")]})) == b"c"
    assert current_value(_item({1: [(9, b"a")], 2: [(9, b"c")]})) == b"c"  # tie: highest node id
    assert current_value(_item({3: [(9, b"a")], 2: [(9, b"c")]})) == b"a"
    assert current_value(_item({1: [(5, b"live")], 2: [(9, None)]})) == b"live"  # tombstone hides nothing


# ---- [hulykvs_api] --------------------------------------------------------------------------------

BASE = {"metadata_dir": "/tmp/m", "s3_api": {"s3_region": "garage"}}


def _cfg(section, monkeypatch=None):
    return parse_config({**BASE, "hulykvs_api": section}).hulykvs_api


SECTION = {"api_bind_addr": "127.0.0.1:8094", "token_secret": "secret", "default_workspace_uuid": U.upper()}


ENV_NAMES = (
    "HULY_BIND_HOST", "HULY_BIND_PORT", "HULY_TOKEN_SECRET", "HULY_PAYLOAD_SIZE_LIMIT", "HULY_DEFAULT_WORKSPACE_UUID",
    "HULY_DB_CONNECTION", "HULY_DB_SCHEME", "GARAGEKV_HULY_TOKEN_SECRET",
)  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_config_defaults(clean_env):
    assert parse_config(BASE).hulykvs_api is None
    h = _cfg(SECTION)
    assert (h.api_bind_addr, h.bucket, h.token_secret, h.payload_size_limit, h.default_workspace_uuid) == (
        "127.0.0.1:8094",
        "hulykvs",
        "secret",
        2 * 1024 * 1024,
        U,
    )
    assert h.ignored_env == ()
    assert "secret" not in repr(h)
    assert _cfg({**SECTION, "payload_size_limit": "2Mb"}).payload_size_limit == 2_000_000


def test_config_env_overrides(clean_env):
    clean_env.setenv("HULY_BIND_HOST", "0.0.0.0")
    clean_env.setenv("HULY_BIND_PORT", "9000")
    clean_env.setenv("HULY_TOKEN_SECRET", "from-env")
    clean_env.setenv("HULY_PAYLOAD_SIZE_LIMIT", "512KiB")
    clean_env.setenv("HULY_DEFAULT_WORKSPACE_UUID", "{" + U + "}")
    clean_env.setenv("HULY_DB_CONNECTION", "postgresql://x")
    h = _cfg(SECTION)
    assert (h.api_bind_addr, h.token_secret, h.payload_size_limit, h.default_workspace_uuid) == (
        "0.0.0.0:9000",
        "from-env",
        524_288,
        U,
    )
    assert h.ignored_env == ("HULY_DB_CONNECTION",)
    clean_env.delenv("HULY_BIND_HOST")
    assert _cfg(SECTION).api_bind_addr == "127.0.0.1:9000"
    clean_env.setenv("HULY_BIND_HOST", "::1")
    assert _cfg(SECTION).api_bind_addr == "[::1]:9000"
    # a secret from the environment alone is enough
    assert _cfg({k: v for k, v in SECTION.items() if k != "token_secret"}).token_secret == "from-env"


@pytest.mark.parametrize(
    "change,env,words",
    [({"token_secret": None}, {}, "token_secret"), ({"default_workspace_uuid": "nope"}, {}, "default_workspace_uuid"),
     ({"default_workspace_uuid": None}, {}, "default_workspace_uuid"), ({"payload_size_limit": "lots"}, {}, "payload"),
     ({"payload_size_limit": "8MiB"}, {}, "payload_size_limit"), ({"payload_size_limit": 0}, {}, "payload_size_limit"),
     ({"api_bind_addr": "nowhere"}, {}, "api_bind_addr"), ({"bucket": "Bad_Name"}, {}, "bucket"),
     ({"unknown": 1}, {}, "hulykvs_api.unknown"), ({}, {"HULY_BIND_PORT": "99999"}, "HULY_BIND_PORT"),
     ({}, {"HULY_PAYLOAD_SIZE_LIMIT": "big"}, "HULY_PAYLOAD_SIZE_LIMIT"),
     ({}, {"HULY_DEFAULT_WORKSPACE_UUID": "x"}, "default_workspace_uuid")],
)  # fmt: skip
def test_config_errors(clean_env, change, env, words):
    section = {k: v for k, v in {**SECTION, **change}.items() if v is not None}
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(ConfigError) as e:
        _cfg(section)
    assert words in str(e.value)


def test_metrics_hook():
    from prometheus_client import generate_latest

    from garagekv.admin.metrics import NodeMetrics

    m = NodeMetrics()
    m.observe_hulykvs("Put", 204, 0.01)
    m.observe_hulykvs("Put", 204, 0.02)
    m.observe_hulykvs(None, 404, 0.001)
    text = generate_latest(m.registry).decode()
    assert 'garagekv_api_hulykvs_requests_total{api_endpoint="Put",status_code="204"} 2.0' in text
    assert 'garagekv_api_hulykvs_requests_total{api_endpoint="Unknown",status_code="404"} 1.0' in text
    assert 'garagekv_api_hulykvs_request_duration_seconds_count{api_endpoint="Put"} 2.0' in text
