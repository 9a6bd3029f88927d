"""What score tells the gateways after each commit, and its name.

``replica_advanced`` on ``score.events``, body ``{"cpfs": ["52998224725", ...]}``:
the CPFs whose replica rows a transaction just changed. It is a wake-up for
reads waiting to see a write (read-your-writes), not data: sent without
persistence or confirms, to queues that exist only while a gateway listens.
A lost notice makes a waiting read wait out its bound, nothing worse.
"""

REPLICA_ADVANCED = "replica_advanced"
