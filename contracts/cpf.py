"""CPF (Brazilian taxpayer number) validation and formatting.

A CPF has 11 digits; the last two are check digits computed with the standard
mod 11 algorithm. The API accepts a CPF as a string, with or without the usual
punctuation (``529.982.247-25``), or as a JSON integer. Leading zeros are lost in
JSON numbers, so an integer is zero-padded to 11 digits. The canonical form that
is stored and returned is the bare 11-digit string.

This module is pure: no I/O, no framework imports.
"""

from __future__ import annotations

import re

__all__ = ["InvalidCPF", "cpfs_in", "format_cpf", "is_valid_cpf", "mask_cpfs", "normalize_cpf"]

CPF_LENGTH = 11
_PUNCTUATION = ".-"


class InvalidCPF(ValueError):
    """Raised when a value is not a valid CPF; ``str(exc)`` is a human message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _check_digit(digits: str) -> int:
    """Return the mod 11 check digit for ``digits`` (9 or 10 digits).

    Weights run from ``len(digits) + 1`` down to 2; the remainder
    ``sum * 10 % 11`` is the digit, except that 10 becomes 0.
    """
    weighted = sum(int(d) * w for d, w in zip(digits, range(len(digits) + 1, 1, -1), strict=True))
    remainder = weighted * 10 % 11
    return 0 if remainder == 10 else remainder


def normalize_cpf(value: object) -> str:
    """Validate ``value`` as a CPF and return its canonical 11-digit string.

    Accepts a ``str`` (surrounding whitespace ignored; only digits, ``.`` and
    ``-`` allowed) or a non-negative ``int`` (zero-padded to 11 digits).
    ``bool``, ``None``, ``float`` and every other type are rejected.

    Raises:
        InvalidCPF: with a message describing the specific problem.
    """
    if isinstance(value, bool):
        raise InvalidCPF("CPF must be a string or an integer, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise InvalidCPF("CPF must not be negative")
        digits = str(value).zfill(CPF_LENGTH)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise InvalidCPF("CPF must not be empty")
        if any(not (c.isascii() and c.isdigit()) and c not in _PUNCTUATION for c in text):
            raise InvalidCPF("CPF may contain only digits, '.' and '-'")
        digits = "".join(c for c in text if c not in _PUNCTUATION)
    else:
        raise InvalidCPF("CPF must be a string or an integer")

    if len(digits) != CPF_LENGTH:
        raise InvalidCPF(f"CPF must have {CPF_LENGTH} digits")
    if len(set(digits)) == 1:
        raise InvalidCPF("CPF must not have all digits the same")
    if _check_digit(digits[:9]) != int(digits[9]) or _check_digit(digits[:10]) != int(digits[10]):
        raise InvalidCPF("CPF check digits do not match")
    return digits


def format_cpf(cpf: str) -> str:
    """Format a CPF for display as ``XXX.XXX.XXX-XX``.

    ``cpf`` may be in any form accepted by :func:`normalize_cpf` (it is
    validated first, so an invalid CPF raises :class:`InvalidCPF`).
    """
    digits = normalize_cpf(cpf)
    return f"{digits[:3]}.{digits[3:6]}.{digits[6:9]}-{digits[9:]}"


def is_valid_cpf(value: object) -> bool:
    """Return True if :func:`normalize_cpf` accepts ``value``."""
    try:
        normalize_cpf(value)
    except InvalidCPF:
        return False
    return True


# Anything shaped like a CPF (11 digits, bare or punctuated, valid or not) that
# stands alone: not part of a longer run of digits or letters (a UUID's last
# group), nor the whole part of a decimal number.
_CPF_IN_TEXT = re.compile(r"(?<![\w.])(\d{3})(\.?)(\d{3})\2(\d{3})(-?)(\d{2})(?!\w)(?!\.\d)")


def mask_cpfs(text: str) -> str:
    """``text`` with every CPF in it masked to its first three and last two
    digits: enough to follow one person's lines, not to name the person.

    >>> mask_cpfs('POST /person/52998224725/income cpf=529.982.247-25 id=...-a12345678901-1a')
    'POST /person/529.***.***-25/income cpf=529.***.***-25 id=...-a12345678901-1a'
    """
    return _CPF_IN_TEXT.sub(lambda m: f"{m[1]}.***.***-{m[6]}", text)


def cpfs_in(text: str) -> set:
    """Every CPF-shaped string in ``text``, as 11 digits (valid or not).

    >>> sorted(cpfs_in('{"cpf": "52998224725", "note": "529.982.247-25", "id": 11144477735}'))
    ['11144477735', '52998224725']
    """
    return {m[1] + m[3] + m[4] + m[6] for m in _CPF_IN_TEXT.finditer(text)}
