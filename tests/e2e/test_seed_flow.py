"""The seed's curl sequence, over HTTP through the gateway, on real processes."""

import json
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e

PAYLOADS = Path(__file__).resolve().parents[2] / "payloads"


def payload(name):
    return json.loads((PAYLOADS / f"new_{name}.json").read_text())


def wait_for_score(api, cpf, expected, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(f"{api}/{cpf}/score", timeout=5)
        if response.status_code == 200 and response.json()["score"] == expected:
            return response.json()
        if time.monotonic() > deadline:
            return response.json()
        time.sleep(0.05)


def test_seed_flow_gives_4970(api):
    created = requests.post(f"{api}/person", json=payload("person"), timeout=5)
    assert created.status_code == 201, created.text
    cpf = created.json()["cpf"]
    assert cpf == "52998224725"
    assert created.headers["Location"] == f"/person/{cpf}"

    for kind in ("income", "asset", "debt"):
        response = requests.post(f"{api}/person/{cpf}/{kind}", json=payload(kind), timeout=5)
        assert response.status_code == 201, response.text

    score = wait_for_score(api, cpf, 4970)
    assert score["score"] == 4970
    assert score["breakdown"] == {"income": 20, "asset": 5000, "debt": -50}

    person = requests.get(f"{api}/person/{cpf}", timeout=5).json()
    assert [i["value"] for i in person["incomes"]] == ["1000.00"]
    assert [a["value"] for a in person["assets"]] == ["100000.00"]
    assert [d["value"] for d in person["debts"]] == ["1000.00"]


def test_person_without_items_scores_zero(api):
    body = {**payload("person"), "cpf": "111.444.777-35"}
    assert requests.post(f"{api}/person", json=body, timeout=5).status_code == 201
    score = wait_for_score(api, "11144477735", 0)
    assert score["score"] == 0
    assert score["breakdown"] == {"income": 0, "asset": 0, "debt": 0}


def test_health_is_ok_with_everything_up(api):
    response = requests.get(f"{api}/health", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["broker"] == "ok"
    assert body["services"]["person"]["database"] == "ok"
    assert body["services"]["score"]["database"] == "ok"
