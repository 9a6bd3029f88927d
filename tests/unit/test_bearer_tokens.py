"""The bearer-token check of the gateway's write routes (pure logic)."""

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from gateway.auth import check_bearer, parse_tokens
from gateway.exceptions import Unauthorized, error_for


def request(authorization=None):
    headers = {} if authorization is None else {"Authorization": authorization}
    return Request(EnvironBuilder(method="POST", path="/person", headers=headers).get_environ())


@pytest.mark.parametrize(
    "value, tokens",
    [(None, ()), ("", ()), ("  ", ()), ("a", ("a",)), ("a, b ,,c", ("a", "b", "c")), (["a", "b"], ("a", "b"))],
)
def test_parse_tokens(value, tokens):
    assert parse_tokens(value) == tokens


def test_no_tokens_means_no_check():
    check_bearer(request(), ())


@pytest.mark.parametrize("authorization", ["Bearer a", "bearer b", "Bearer   a  "])
def test_a_configured_token_passes(authorization):
    check_bearer(request(authorization), ("a", "b"))


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
    ],
)
def test_anything_else_is_refused_with_a_challenge(authorization, invalid):
    with pytest.raises(Unauthorized) as refused:
        check_bearer(request(authorization), ("a", "b"))
    ((name, challenge),) = refused.value.headers
    assert name == "WWW-Authenticate" and challenge.startswith('Bearer realm="gateway"')
    assert ('error="invalid_token"' in challenge) is invalid
    assert error_for(refused.value)[:2] == (401, "UNAUTHORIZED")
