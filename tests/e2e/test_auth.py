"""Bearer tokens on the write routes, with API_TOKENS set as the compose file sets it."""

import pytest
import requests

from harness.api import HTTP_TIMEOUT, assert_json_error, person_body, table_counts
from harness.processes import started

pytestmark = pytest.mark.e2e

TOKENS = "first-token,second-token"


@pytest.fixture(scope="module")
def secured(amqp_uri, db_uris, tmp_path_factory):
    with started(amqp_uri, db_uris, tmp_path_factory.mktemp("auth-logs"), API_TOKENS=TOKENS) as running:
        yield running


@pytest.fixture
def api(secured, clean_databases):
    return secured.url


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong-token"), bearer(""), {"Authorization": "Basic Zmlyc3QtdG9rZW4="}, bearer("first-token-x")],
    ids=["none", "wrong", "empty", "basic", "prefix"],
)
def test_a_write_without_a_valid_token_is_401_and_writes_nothing(api, person_engine, headers):
    before = table_counts(person_engine)
    response = requests.post(f"{api}/person", json=person_body(), headers=headers, timeout=HTTP_TIMEOUT)

    assert_json_error(response, 401, "UNAUTHORIZED")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert table_counts(person_engine) == before

    item = requests.post(
        f"{api}/person/52998224725/income", json={"type": "a", "value": 1}, headers=headers, timeout=HTTP_TIMEOUT
    )
    assert_json_error(item, 401, "UNAUTHORIZED")


@pytest.mark.parametrize("token", ["first-token", "second-token"])
def test_each_configured_token_may_write_and_reads_stay_open(api, token):
    created = requests.post(f"{api}/person", json=person_body(), headers=bearer(token), timeout=HTTP_TIMEOUT)
    assert created.status_code == 201, created.text
    item = requests.post(
        f"{api}/person/52998224725/debt", json={"value": 10}, headers=bearer(token), timeout=HTTP_TIMEOUT
    )
    assert item.status_code == 201, item.text

    assert requests.get(f"{api}/person/52998224725", timeout=HTTP_TIMEOUT).status_code == 200
    score = requests.get(f"{api}/52998224725/score", params={"min_sequence": 2}, timeout=HTTP_TIMEOUT)
    assert score.status_code == 200 and score.json()["stale"] is False
    assert requests.get(f"{api}/health", timeout=HTTP_TIMEOUT).status_code == 200
