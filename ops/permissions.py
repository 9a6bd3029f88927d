"""What each service may do on the broker and in PostgreSQL, declared once:
least privilege per service, so credentials that leak from one service cannot
forge or read another's data.

In PostgreSQL (:data:`DATABASES`): person's role may use person's database
only, score's role score's only, and the gateway has no role. A role may read
and write its database's rows, not change its schema (``make migrate`` does
that, as the owner).

Each service logs in as a RabbitMQ user of its own. RabbitMQ checks two kinds
of permission (https://www.rabbitmq.com/docs/access-control):

- per vhost, three regular expressions over resource names: ``configure``
  (declare, delete), ``write`` (publish to an exchange, bind a queue) and
  ``read`` (consume a queue, bind from an exchange);
- per topic exchange, ``write`` and ``read`` expressions over routing keys,
  checked on publish and on bind.

What follows from the grants below, among others: only person may publish to
``person.events`` (score and the gateway have no write on it), and on
Nameko's ``nameko-rpc`` exchange each service may publish only the calls it
makes and replies to calls (whose routing key is the caller's reply queue, a
UUID): the gateway cannot call ``score.rebuild_replica``, and score cannot call
``person.add_income``.

Left open by RabbitMQ's model: ``configure`` on an exchange also allows
deleting it, and a consumer declares the exchange it binds to, so score may
configure ``person.events`` and the gateway ``nameko-rpc`` and ``score.events``.

Example::

    >>> import re
    >>> BROKER_GRANTS["gateway"].topic_permissions()["person.events"]  # (write, read): nothing
    ('^$', '^$')
    >>> calls = BROKER_GRANTS["gateway"].topic_permissions()["nameko-rpc"][0]
    >>> [bool(re.fullmatch(calls, key)) for key in ("person.add_income", "score.rebuild_replica")]
    [True, False]
"""

import re
from dataclasses import dataclass, field

from nameko.rpc import RPC_QUEUE_TEMPLATE, RPC_REPLY_QUEUE_TEMPLATE

from contracts.events import NOTICE_QUEUE_PREFIX, PERSON_EVENTS, REPLICA_ADVANCED, SCORE_NOTICES


def _reply_queues(service: str) -> str:
    """The pattern of a service's RPC reply queues (Nameko's name, and the gateway's)."""
    return re.escape(RPC_REPLY_QUEUE_TEMPLATE.format(service, "")) + ".+"


RPC_EXCHANGE = "nameko-rpc"  # Nameko's default (AMQP_URI's RPC_EXCHANGE config is not set)
DEFAULT_EXCHANGE = "amq.default"  # what RabbitMQ calls "" in permissions
PERSON_EVENTS_EXCHANGE = f"{PERSON_EVENTS.service}.events"
NOTICES_EXCHANGE = f"{SCORE_NOTICES}.events"
NOTICE_QUEUES = re.escape(NOTICE_QUEUE_PREFIX) + ".+"  # the gateway's read-your-writes notices
PERSON_RPC_QUEUE, SCORE_RPC_QUEUE = (RPC_QUEUE_TEMPLATE.format(service) for service in ("person", "score"))
# A reply's routing key is its caller's reply queue id: a UUID, with or
# without dashes (Nameko's listeners, the gateway's).
REPLY_KEY = "[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}"
EVENT_QUEUE = f"evt-{PERSON_EVENTS.service}-.+"

# The RPC calls each service makes, as routing keys (service.method).
GATEWAY_CALLS = (
    "person.write_many",  # its writes: gateway/write_batches.py
    "person.get_person",
    "person.erase_person",
    "person.health",
    "score.get_score",
    "score.health",
)
SCORE_CALLS = ("person.current_state", "person.event_history")
# Person's and score's containers check their health by calling it
# (``ops.ping``, Nameko's standalone proxy, with the service's own credentials).
PING_REPLY_QUEUE = _reply_queues("standalone_rpc_proxy")


def _any_of(patterns) -> str:
    """One anchored expression matching any of ``patterns`` (none: nothing)."""
    return f"^({'|'.join(patterns)})$" if patterns else "^$"


def _names(*names) -> list:
    return [re.escape(name) for name in names]


@dataclass(frozen=True)
class BrokerGrant:
    """One service's permissions in the vhost: resource-name patterns per
    kind of access, and routing-key patterns per topic exchange."""

    configure: list
    write: list
    read: list
    topic_write: dict = field(default_factory=dict)  # exchange -> routing-key patterns
    topic_read: dict = field(default_factory=dict)

    def vhost_permissions(self) -> tuple:
        """``(configure, write, read)`` as ``rabbitmqctl set_permissions`` takes them."""
        return _any_of(self.configure), _any_of(self.write), _any_of(self.read)

    def topic_permissions(self) -> dict:
        """``{exchange: (write, read)}`` as ``rabbitmqctl set_topic_permissions`` takes them;
        every topic exchange the service may touch is listed, so none is left unrestricted."""
        exchanges = set(self.topic_write) | set(self.topic_read)
        return {ex: (_any_of(self.topic_write.get(ex, ())), _any_of(self.topic_read.get(ex, ()))) for ex in exchanges}


BROKER_GRANTS = {
    "person": BrokerGrant(
        configure=[*_names(RPC_EXCHANGE, PERSON_EVENTS_EXCHANGE, PERSON_RPC_QUEUE), PING_REPLY_QUEUE],
        write=[*_names(RPC_EXCHANGE, PERSON_EVENTS_EXCHANGE, PERSON_RPC_QUEUE), PING_REPLY_QUEUE],
        read=[*_names(RPC_EXCHANGE, PERSON_RPC_QUEUE), PING_REPLY_QUEUE],
        topic_write={RPC_EXCHANGE: [REPLY_KEY, *_names("person.health")], PERSON_EVENTS_EXCHANGE: [".+"]},
        topic_read={RPC_EXCHANGE: [re.escape("person.*"), REPLY_KEY]},
    ),
    "score": BrokerGrant(
        configure=[
            *_names(RPC_EXCHANGE, PERSON_EVENTS_EXCHANGE, NOTICES_EXCHANGE, SCORE_RPC_QUEUE),
            _reply_queues("score"),
            PING_REPLY_QUEUE,
            EVENT_QUEUE,
        ],
        # Its retry and dead-letter copies go through the default exchange.
        write=[
            *_names(RPC_EXCHANGE, NOTICES_EXCHANGE, DEFAULT_EXCHANGE, SCORE_RPC_QUEUE),
            _reply_queues("score"),
            PING_REPLY_QUEUE,
            EVENT_QUEUE,
        ],
        read=[
            *_names(RPC_EXCHANGE, PERSON_EVENTS_EXCHANGE, SCORE_RPC_QUEUE),
            _reply_queues("score"),
            PING_REPLY_QUEUE,
            EVENT_QUEUE,
        ],
        topic_write={
            RPC_EXCHANGE: [REPLY_KEY, *_names(*SCORE_CALLS, "score.health")],
            PERSON_EVENTS_EXCHANGE: [],
            NOTICES_EXCHANGE: _names(REPLICA_ADVANCED),
        },
        topic_read={
            RPC_EXCHANGE: [re.escape("score.*"), REPLY_KEY],
            PERSON_EVENTS_EXCHANGE: [".+"],
        },
    ),
    "gateway": BrokerGrant(
        configure=[*_names(RPC_EXCHANGE, NOTICES_EXCHANGE), _reply_queues("gateway"), NOTICE_QUEUES],
        write=[*_names(RPC_EXCHANGE), _reply_queues("gateway"), NOTICE_QUEUES],
        read=[*_names(RPC_EXCHANGE, NOTICES_EXCHANGE), _reply_queues("gateway"), NOTICE_QUEUES],
        topic_write={RPC_EXCHANGE: _names(*GATEWAY_CALLS), PERSON_EVENTS_EXCHANGE: [], NOTICES_EXCHANGE: []},
        topic_read={RPC_EXCHANGE: [REPLY_KEY], NOTICES_EXCHANGE: _names(REPLICA_ADVANCED)},
    ),
}


# The database each service's role may connect to; the gateway has none.
DATABASES = {"person": "person:PersonBase", "score": "score:ScoreBase"}


def database_grants(role: str, database: str) -> list:
    """SQL, run as the database's owner in ``database``, giving ``role`` (which
    exists) its rows and nothing else; others lose the default ``CONNECT``."""
    return [
        f'REVOKE CONNECT, TEMPORARY ON DATABASE "{database}" FROM PUBLIC',
        f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"',
        f'GRANT USAGE ON SCHEMA public TO "{role}"',
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"',
        f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"',
    ]
