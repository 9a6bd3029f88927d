"""The errors person and score raise over RPC.

Registered with ``deserialize_to_instance``, so a caller that imports this
module gets the same types back (not a generic ``RemoteError``), with their
arguments, e.g. the per-field messages of :class:`InvalidInput`. The gateway
maps each to an HTTP status (``gateway/exceptions.py``).
"""

from nameko.exceptions import deserialize_to_instance


@deserialize_to_instance
class InvalidInput(Exception):
    """The input failed validation; ``fields`` maps each field to its messages."""

    def __init__(self, message, fields=None):
        super().__init__(message, fields or {})
        self.message = message
        self.fields = fields or {}

    def __str__(self):
        return f"{self.message}: {self.fields}"


@deserialize_to_instance
class PersonNotFound(Exception):
    """No person has this CPF."""


@deserialize_to_instance
class PersonAlreadyExists(Exception):
    """A person with this CPF exists already."""


@deserialize_to_instance
class ScoreNotFound(Exception):
    """Score has no score for this CPF: never seen, or erased.

    ``applied_sequence``: the sequence of the person's erasure score has
    applied, 0 if none (a read waiting for an erasure is answered by it)."""

    def __init__(self, message, applied_sequence=0):
        super().__init__(message, applied_sequence)
        self.message = message
        self.applied_sequence = int(applied_sequence)  # RPC hands arguments back as strings

    def __str__(self):
        return self.message


@deserialize_to_instance
class HistoryTrimmed(Exception):
    """The history asked for starts below what person's retention
    (``EVENT_HISTORY_RETENTION``) has deleted: events after that position may
    be gone. A rebuild then starts from the start (person's current state)."""


@deserialize_to_instance
class DeadlinePassed(Exception):
    """A write of a batch (``person.write_many``) that reached person after its
    caller's deadline: it was not run, as its caller had answered it 504."""
