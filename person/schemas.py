"""Input validation and output shapes for the person service (marshmallow 4).

Loading returns plain Python values (CPF as the 11-digit string, money as
``Decimal``, dates as ``date``); dumping returns JSON-safe values (money as a
decimal string, dates in ISO 8601).
"""

import re
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from contracts.cpf import InvalidCPF, normalize_cpf
from contracts.errors import InvalidInput
from contracts.kinds import KINDS, ItemKind

MAX_MONEY = Decimal("999999999999.99")  # fits NUMERIC(14, 2)
CENT = Decimal("0.01")
PLAIN_DECIMAL = re.compile(r"\A[+-]?[0-9]+(\.[0-9]+)?\Z")
EARLIEST_BIRTH = date(1900, 1, 1)


class CPF(fields.Field):
    """A CPF given as a string (punctuated or not) or an integer."""

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return normalize_cpf(value)
        except InvalidCPF as exc:
            raise ValidationError(exc.message) from exc

    def _serialize(self, value, attr, obj, **kwargs):
        return value


class Money(fields.Field):
    """A positive amount with at most 2 decimal places, bounded.

    Accepts a JSON number or a decimal string; a float is read through its
    shortest repr so ``1000.1`` stays ``1000.1``, and a ``Decimal`` (the
    gateway parses JSON numbers exactly) as it is, so ``1.0000000000000001``
    is refused rather than rounded. Dumped as a string so no
    consumer ever turns it into a float.
    """

    default_error_messages = {
        "invalid": "Must be a number or a decimal string.",
        "places": "Must have at most 2 decimal places.",
        "range": f"Must be greater than 0 and at most {MAX_MONEY}.",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
            raise self.make_error("invalid")
        # Plain decimals only: Decimal() alone would also take "1_000", "1e3"
        # and non-ASCII digits.
        if isinstance(value, str) and not PLAIN_DECIMAL.match(value.strip()):
            raise self.make_error("invalid")
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation as exc:
            raise self.make_error("invalid") from exc
        if not amount.is_finite():
            raise self.make_error("invalid")
        if not Decimal(0) < amount <= MAX_MONEY:
            raise self.make_error("range")
        cents = amount.quantize(CENT)
        if cents != amount:
            raise self.make_error("places")
        return cents

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else str(Decimal(value).quantize(CENT))


class BirthDate(fields.Field):
    """A date (``2019-06-15``) or an ISO 8601 datetime, which must be in the past.

    A datetime keeps the calendar date in its own offset: the seed's
    ``2019-06-15T19:23:55-03:00`` is born on 2019-06-15.
    """

    default_error_messages = {
        "invalid": "Must be an ISO 8601 date or datetime.",
        "future": "Must be in the past.",
        "too_old": f"Must be on or after {EARLIEST_BIRTH.isoformat()}.",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            if len(value.strip()) == 10:
                born, zone = date.fromisoformat(value.strip()), UTC
            else:
                moment = datetime.fromisoformat(value.strip())
                born, zone = moment.date(), moment.tzinfo or UTC
        except ValueError as exc:
            raise self.make_error("invalid") from exc
        # "Today" in the input's own offset: its calendar date is what is kept.
        if born >= datetime.now(zone).date():
            raise self.make_error("future")
        if born < EARLIEST_BIRTH:
            raise self.make_error("too_old")
        return born

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else value.isoformat()


def _text(max_length):
    return fields.String(
        required=True,
        validate=[
            validate.Length(min=1, max=max_length),
            validate.Regexp(r"\S", error="Must not be blank."),
            # PostgreSQL text cannot hold NUL; say so instead of failing the insert.
            validate.Regexp(r"\A[^\x00]*\Z", error="Must not contain NUL characters."),
            # JSON can spell a lone UTF-16 surrogate ("\ud800"); no database encoding can store it.
            validate.Regexp(r"\A[^\ud800-\udfff]*\Z", error="Must not contain unpaired surrogates."),
        ],
    )


class CreatePersonSchema(Schema):
    class Meta:
        unknown = RAISE

    cpf = CPF(required=True)
    name = _text(200)
    address = _text(500)
    date_of_birth = BirthDate(required=True)


class TypedItemSchema(Schema):
    """An item with a type (income, asset): ``{"type": "renting", "value": 1000}``."""

    class Meta:
        unknown = RAISE

    type = _text(50)
    value = Money(required=True)


class UntypedItemSchema(Schema):
    """An item with a value only (debt): ``{"value": 1000}``."""

    class Meta:
        unknown = RAISE

    value = Money(required=True)


class TypedItemOutSchema(Schema):
    id = fields.Integer()
    type = fields.String()
    value = Money()
    created_at = fields.AwareDateTime()


class UntypedItemOutSchema(Schema):
    id = fields.Integer()
    value = Money()
    created_at = fields.AwareDateTime()


def item_schemas(kind: ItemKind) -> tuple[Schema, Schema]:
    """(input, output) schema of one kind of item."""
    if kind.typed:
        return TypedItemSchema(), TypedItemOutSchema()
    return UntypedItemSchema(), UntypedItemOutSchema()


PersonOutSchema = Schema.from_dict(
    {
        "cpf": fields.String(),
        "name": fields.String(),
        "address": fields.String(),
        "date_of_birth": BirthDate(),
        "created_at": fields.AwareDateTime(),
        **{kind.plural: fields.List(fields.Nested(item_schemas(kind)[1])) for kind in KINDS},
    },
    name="PersonOutSchema",
)


def load_input(schema: Schema, payload):
    """``payload`` loaded by ``schema``, or ``InvalidInput`` naming the fields."""
    if not isinstance(payload, dict):
        raise InvalidInput("Body must be a JSON object.", {"_schema": ["Must be an object."]})
    try:
        return schema.load(payload)
    except ValidationError as exc:
        raise InvalidInput("Invalid fields.", exc.normalized_messages()) from exc


def load_cpf(value) -> str:
    """The 11-digit CPF, or ``InvalidInput``."""
    try:
        return normalize_cpf(value)
    except InvalidCPF as exc:
        raise InvalidInput("Invalid CPF.", {"cpf": [exc.message]}) from exc


# kind name -> its input schema
ITEM_SCHEMAS = {kind.name: item_schemas(kind)[0] for kind in KINDS}
