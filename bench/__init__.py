"""``python -m bench``: what one write costs and how far the replica lags, measured
against RabbitMQ's and PostgreSQL's own limits in the same run (issue 4).

Runs on a private RabbitMQ node and private databases (``harness``), starts the
three services as ``nameko run`` processes, prints one table and writes it as JSON.
"""
