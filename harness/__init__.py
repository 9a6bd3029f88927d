"""Reusable helpers for running the system for real: a private RabbitMQ node
(:mod:`harness.rabbit`), the services as ``nameko run`` processes with their
memory and CPU (:mod:`harness.processes`), and private, migrated databases
(:mod:`harness.databases`).

Nothing here imports eventlet or monkey-patches: callers use plain threads.
"""
