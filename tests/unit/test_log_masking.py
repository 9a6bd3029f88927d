"""No whole CPF in a log line: the formatters mask every CPF-shaped string,
wherever in the record it comes from."""

import doctest
import logging
import sys

import pytest

import contracts.cpf
import contracts.erasure
import gateway.auth
import gateway.openapi
from contracts.cpf import mask_cpfs
from observability.logs import JsonFormatter, PlainFormatter

CPF = "52998224725"


def record(msg, *args, exc_info=None, **extra):
    made = logging.LogRecord("person.service", logging.WARNING, __file__, 1, msg, args, exc_info)
    made.__dict__.update(extra)
    return made


@pytest.mark.parametrize(
    "text, masked",
    [
        (CPF, "529.***.***-25"),
        ("529.982.247-25", "529.***.***-25"),
        ("529982247-25", "529.***.***-25"),
        (f"/person/{CPF}/income", "/person/529.***.***-25/income"),
        (f"cpf={CPF} and 111.444.777-35", "cpf=529.***.***-25 and 111.***.***-35"),
        (f"('{CPF}',)", "('529.***.***-25',)"),
        ("12345678901234", "12345678901234"),  # a longer number
        ("12345678909.50", "12345678909.50"),  # a decimal's whole part
        ("4f0c-a12345678901", "4f0c-a12345678901"),  # in a UUID's last group
    ],
)
def test_mask_cpfs(text, masked):
    assert mask_cpfs(text) == masked


@pytest.mark.parametrize("formatter", [JsonFormatter(), PlainFormatter("%(message)s")], ids=["json", "plain"])
def test_a_cpf_is_masked_in_the_message_its_arguments_fields_and_traceback(formatter):
    try:
        raise LookupError(f"no person {CPF}")
    except LookupError:
        exc_info = sys.exc_info()
    line = formatter.format(
        record("GET /person/%s for %s", CPF, "529.982.247-25", exc_info=exc_info, cpf=CPF, path=f"/person/{CPF}")
    )
    assert CPF not in line and "529.982.247-25" not in line, line
    assert "529.***.***-25" in line


@pytest.mark.parametrize("module", [contracts.cpf, contracts.erasure, gateway.auth, gateway.openapi])
def test_the_docstring_examples_answer_what_they_show(module):
    result = doctest.testmod(module)
    assert result.attempted and not result.failed, result
