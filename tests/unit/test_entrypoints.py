"""Each declared kind and event type has its entrypoint, written out (``def
add_income``, ``def on_income_added``): a kind added to contracts.kinds
without its two lines fails here."""

import pytest
from nameko.rpc import Rpc

from contracts.events import EVENT_TYPES, PERSON_EVENTS
from contracts.kinds import KINDS
from person.service import PersonService
from reliable_events.handlers import ReliableEventHandler
from score.service import ScoreService


def entrypoints(cls, name, of_type):
    method = cls.__dict__.get(name)  # written in the class, not made elsewhere
    return [e for e in getattr(method, "nameko_entrypoints", ()) if isinstance(e, of_type)]


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_person_has_an_rpc_method_per_kind(kind):
    assert entrypoints(PersonService, kind.rpc_method, Rpc), f"PersonService.{kind.rpc_method} is missing"


def test_person_has_no_item_method_of_an_undeclared_kind():
    assert {name for name in vars(PersonService) if name.startswith("add_")} == {kind.rpc_method for kind in KINDS}


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_score_has_a_handler_per_event_type(event_type):
    (handler,) = entrypoints(ScoreService, f"on_{event_type}", ReliableEventHandler)
    assert (handler.source, handler.event_type) == (PERSON_EVENTS, event_type)


def test_score_has_no_handler_of_an_undeclared_event_type():
    assert {name for name in vars(ScoreService) if name.startswith("on_")} == {f"on_{t}" for t in EVENT_TYPES}
