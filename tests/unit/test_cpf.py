"""Unit tests for person.cpf: CPF normalization, validation and formatting."""

from __future__ import annotations

import pytest

from contracts.cpf import InvalidCPF, format_cpf, is_valid_cpf, normalize_cpf

# 01234567890 checked by hand:
#   first:  0*10+1*9+2*8+3*7+4*6+5*5+6*4+7*3+8*2 = 156; 1560 % 11 = 9  -> 9
#   second: 0*11+1*10+2*9+3*8+4*7+5*6+6*5+7*4+8*3+9*2 = 210; 2100 % 11 = 10 -> 0
LEADING_ZERO_CPF = "01234567890"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("529.982.247-25", "52998224725"),
        ("52998224725", "52998224725"),
        ("  529.982.247-25  ", "52998224725"),
        ("529982247-25", "52998224725"),
        (52998224725, "52998224725"),
        (LEADING_ZERO_CPF, LEADING_ZERO_CPF),
        ("012.345.678-90", LEADING_ZERO_CPF),
        (1234567890, LEADING_ZERO_CPF),
    ],
)
def test_valid_cpfs_are_normalized(value: object, expected: str) -> None:
    assert normalize_cpf(value) == expected
    assert is_valid_cpf(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5299822472", "11 digits"),
        ("529982247250", "11 digits"),
        (5299822472, "check digits"),  # zero-padded to 05299822472
        (529982247250, "11 digits"),
        ("529.982.247-26", "check digits"),
        ("529.982.247-15", "check digits"),
        ("52998224x25", "only digits"),
        ("abcdefghijk", "only digits"),
        ("529 982 247 25", "only digits"),
        ("529/982/247-25", "only digits"),
        ("", "empty"),
        ("   ", "empty"),
        (True, "boolean"),
        (False, "boolean"),
        (None, "string or an integer"),
        (52998224725.0, "string or an integer"),
        (-52998224725, "negative"),
        (["52998224725"], "string or an integer"),
    ],
)
def test_invalid_cpfs_are_rejected(value: object, message: str) -> None:
    with pytest.raises(InvalidCPF, match=message):
        normalize_cpf(value)
    assert not is_valid_cpf(value)


@pytest.mark.parametrize("digit", "0123456789")
@pytest.mark.parametrize("as_int", [False, True])
def test_all_same_digits_are_rejected(digit: str, as_int: bool) -> None:
    # int("0" * 11) == 0, which is zero-padded back to "00000000000".
    value: object = int(digit * 11) if as_int else digit * 11
    with pytest.raises(InvalidCPF, match="all digits the same"):
        normalize_cpf(value)


def test_all_same_digits_with_punctuation_is_rejected() -> None:
    with pytest.raises(InvalidCPF, match="all digits the same"):
        normalize_cpf("111.111.111-11")


def test_invalid_cpf_is_a_value_error_with_a_message() -> None:
    with pytest.raises(ValueError) as info:
        normalize_cpf("123")
    assert str(info.value) == "CPF must have 11 digits"
    assert info.value.message == "CPF must have 11 digits"


def test_non_ascii_digits_are_rejected() -> None:
    # Arabic-Indic digits satisfy str.isdigit() but are not CPF digits.
    assert not is_valid_cpf("٥٢٩٩٨٢٢٤٧٢٥")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("52998224725", "529.982.247-25"),
        ("529.982.247-25", "529.982.247-25"),
        (LEADING_ZERO_CPF, "012.345.678-90"),
    ],
)
def test_format_cpf(value: str, expected: str) -> None:
    assert format_cpf(value) == expected


def test_format_cpf_rejects_invalid() -> None:
    with pytest.raises(InvalidCPF):
        format_cpf("52998224726")
