"""The gateway's scoped bearer tokens (pure logic): parsing ``API_TOKENS`` and
the check each scoped route makes."""

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from gateway.auth import BARE_TOKEN_SCOPES, SCOPES, parse_tokens
from gateway.auth import authorize as check
from gateway.exceptions import Forbidden, Unauthorized, error_for

RW = frozenset({"read", "write"})


def request(authorization=None):
    headers = {} if authorization is None else {"Authorization": authorization}
    return Request(EnvironBuilder(method="POST", path="/person", headers=headers).get_environ())


@pytest.mark.parametrize(
    "value, parsed",
    [
        (None, []),
        ("", []),
        ("  ", []),
        ("a", [("a", RW)]),
        ("a, b ,,c", [("a", RW), ("b", RW), ("c", RW)]),
        (["a", "b"], [("a", RW), ("b", RW)]),
        ("r:read", [("r", {"read"})]),
        ("w:write, adm:admin", [("w", {"write"}), ("adm", {"admin"})]),
        ("all:read+write+admin", [("all", set(SCOPES))]),
        (" x : read + admin ", [("x", {"read", "admin"})]),
    ],
)
def test_parse_tokens(value, parsed):
    assert [(t.secret.decode(), set(t.scopes)) for t in parse_tokens(value)] == [(s, set(sc)) for s, sc in parsed]


def test_a_bare_token_reads_and_writes_as_before_scopes():
    assert BARE_TOKEN_SCOPES == {"read", "write"}


@pytest.mark.parametrize("value", ["a:reed", "a:read+root", ":read", "a:", "a:read+"])
def test_an_unknown_scope_or_empty_token_stops_the_gateway_at_start(value):
    with pytest.raises(ValueError, match="API_TOKENS"):
        parse_tokens(value)


def test_a_token_is_named_by_a_hash_never_by_itself():
    (token,) = parse_tokens("s3cret-token:admin")
    assert token.name.startswith("token-") and "s3cret" not in token.name
    assert token.name == parse_tokens("s3cret-token")[0].name  # the same token, the same name


def test_no_tokens_or_an_open_route_means_no_check():
    assert check(request(), (), "write") is None
    assert check(request(), parse_tokens("a"), None) is None


@pytest.mark.parametrize("authorization", ["Bearer a", "bearer b", "Bearer   a  "])
def test_a_configured_token_with_the_scope_passes(authorization):
    token = check(request(authorization), parse_tokens("a,b"), "write")
    assert token.secret.decode() == authorization.split()[-1]


@pytest.mark.parametrize(
    "authorization, invalid",
    [
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Bearer ", False),
        ("Basic YTpi", False),
        ("Bearer c", True),
        ("Bearer ab", True),
        ("Bearer A", True),
        ("Bearer a:read", True),
    ],
)
def test_anything_else_is_refused_with_a_challenge(authorization, invalid):
    with pytest.raises(Unauthorized) as refused:
        check(request(authorization), parse_tokens("a,b:read"), "read")
    ((name, challenge),) = refused.value.headers
    assert name == "WWW-Authenticate" and challenge.startswith('Bearer realm="gateway"')
    assert ('error="invalid_token"' in challenge) is invalid
    assert error_for(refused.value)[:2] == (401, "UNAUTHORIZED")


@pytest.mark.parametrize(
    "token, scope, allowed",
    [
        ("bare", "read", True),
        ("bare", "write", True),
        ("bare", "admin", False),
        ("reader", "read", True),
        ("reader", "write", False),
        ("reader", "admin", False),
        ("writer", "read", False),
        ("writer", "write", True),
        ("admin", "admin", True),
        ("admin", "read", False),
        ("all", "admin", True),
    ],
)
def test_a_known_token_without_the_scope_is_forbidden(token, scope, allowed):
    tokens = parse_tokens("bare, reader:read, writer:write, admin:admin, all:read+write+admin")
    if allowed:
        assert check(request(f"Bearer {token}"), tokens, scope).secret == token.encode()
    else:
        with pytest.raises(Forbidden) as refused:
            check(request(f"Bearer {token}"), tokens, scope)
        assert error_for(refused.value)[:2] == (403, "FORBIDDEN")
        assert scope in str(refused.value)
