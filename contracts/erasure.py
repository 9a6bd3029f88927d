"""How an erased person is named afterwards: by the CPF's keyed hash.

After an erasure no service keeps a person's CPF, yet three records of the
erasure must outlive it: person's audit row, the ``person_erased`` event in
person's history, and score's tombstone (which drops the person's events
still in flight). Each names the person by ``HMAC-SHA256(key, cpf)``, the key
being ``PERSONAL_DATA_HASH_KEY`` (config; person and score share it). Keyed,
because a CPF has only 10⁹ values: a plain hash of one is reversed by trying
them all.

The same hash gives the PostgreSQL advisory lock (:meth:`CpfHasher.lock_key`)
that orders an erasure against the writes of the same person: person's
creations, score's applied events.

Example::

    >>> hasher = CpfHasher(b"a secret key")
    >>> hasher.hash("52998224725")
    '8c961b3bf9513859ba4178a69e8113f8ae9110a7180df54b80a1928fb2b88293'
"""

import hashlib
import hmac
import logging

from nameko.extensions import DependencyProvider

_log = logging.getLogger(__name__)

CPF_HASH_PATTERN = "[0-9a-f]{64}"


class CpfHasher:
    def __init__(self, key: bytes):
        self._key = key

    def hash(self, cpf: str) -> str:
        """The CPF's keyed hash: 64 hex digits."""
        return hmac.new(self._key, cpf.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def lock_key(cpf_hash: str) -> int:
        """The advisory lock key of a person: a signed 64-bit integer from its hash."""
        return int(cpf_hash[:16], 16) - 2**63


def hasher_from_config(config) -> CpfHasher:
    """The hasher of ``PERSONAL_DATA_HASH_KEY``; an empty key is allowed for
    local runs (the compose file requires one), and said in a WARNING."""
    key = str(config.get("PERSONAL_DATA_HASH_KEY") or "")
    if not key:
        _log.warning("PERSONAL_DATA_HASH_KEY is empty: the CPF hashes kept after an erasure can be reversed by anyone")
    return CpfHasher(key.encode())


class PersonalDataKey(DependencyProvider):
    """Gives workers the service's :class:`CpfHasher`."""

    def setup(self):
        self.hasher = hasher_from_config(self.container.config)

    def get_dependency(self, worker_ctx):
        return self.hasher
