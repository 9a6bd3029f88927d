"""What score tells the gateways after each commit (its names are in
:mod:`contracts.events`).

``replica_advanced`` on ``score.events``, body ``{"cpfs": ["52998224725", ...]}``:
the CPFs whose replica rows a transaction just changed and that a read
waits for (score/replica.py, "Waiting reads"); none, no notice. It is a wake-up for
reads waiting to see a write (read-your-writes), not data: sent without
persistence or confirms, to queues that exist only while a gateway listens.
A lost notice makes a waiting read wait out its bound, nothing worse.
"""

from nameko.constants import AMQP_SSL_CONFIG_KEY, LOGIN_METHOD_CONFIG_KEY
from nameko.events import EventDispatcher, get_event_exchange


class NoticeDispatcher(EventDispatcher):
    """Nameko's ``EventDispatcher`` for notices, which needs no broker to start.

    The stock one connects and declares its exchange in ``setup``, so a
    service using it cannot start while the broker is down (nameko #746).
    This one hands the exchange to the publisher, which declares it before
    each publish (kombu caches that per connection); the rest is Nameko's setup.
    """

    def setup(self):
        config = self.container.config
        self.exchange = get_event_exchange(self.container.service_name, config)
        self.declare.append(self.exchange)
        self.publisher = self.publisher_cls(
            self.amqp_uri,
            serializer=self.options.pop("serializer", self.serializer),
            exchange=self.exchange,
            declare=self.declare,
            ssl=config.get(AMQP_SSL_CONFIG_KEY),
            login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
            **self.options,
        )
