"""Valid CPFs for tests and the benchmark.

The check digits are computed here, not imported from the product, so that a
wrong algorithm in ``contracts.cpf`` cannot agree with itself in a test.
"""


def cpf_from(base9: str) -> str:
    """A valid CPF from 9 digits (the two mod-11 check digits appended)."""

    def check(digits):
        total = sum(int(d) * w for d, w in zip(digits, range(len(digits) + 1, 1, -1), strict=True))
        remainder = total * 10 % 11
        return "0" if remainder == 10 else str(remainder)

    first = base9 + check(base9)
    return first + check(first)


def cpfs(count: int, start: int = 123456789) -> list:
    """``count`` distinct valid CPFs from ``start`` on (never all one digit)."""
    return [cpf_from(f"{(start + 7919 * i) % 10**9:09d}") for i in range(count)]
