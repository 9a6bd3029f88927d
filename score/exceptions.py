"""Errors the score service raises over RPC (typed at the caller, see person.exceptions)."""

from nameko.exceptions import deserialize_to_instance


@deserialize_to_instance
class ScoreNotFound(Exception):
    """Score has never seen an event for this CPF."""
