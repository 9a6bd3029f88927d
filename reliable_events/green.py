"""Make psycopg2 cooperative under eventlet.

psycopg2 is a C driver: eventlet's monkey patching does not reach its sockets,
so every query would block the whole process, and a service with ten workers
would wait on the database one query at a time. psycogreen installs psycopg2's
wait callback so a query yields to the other greenthreads while it waits.
Importing this module does it once; every service that talks to PostgreSQL
imports it before it opens a connection.
"""

from psycogreen.eventlet import patch_psycopg

patch_psycopg()
