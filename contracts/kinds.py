"""The kinds of item a person has, each declared once.

Everything else is derived from :data:`KINDS`: the gateway's route
``POST /person/<cpf>/<kind>`` and the OpenAPI enum, person's validation, table,
RPC method (``add_<kind>``) and answer (``"<kind>s"`` in a person), the event
(``<kind>_added``), score's handler (``on_<kind>_added``, so its queue is
``evt-person-<kind>_added--score.on_<kind>_added``) and its scoring rule.

To add a kind: declare it here, add its table in one person migration
(``person/migrations``), and nothing else.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ItemKind:
    """One kind of item.

    ``typed``: the item carries a ``type`` (what income or asset it is) beside
    its ``value``. Its score is ``sign * floor(value / divisor)`` points: the
    floor of the positive amount, then the sign, so a debt of 19.99 costs 0.
    """

    name: str
    typed: bool
    divisor: int
    sign: int

    @property
    def event_type(self) -> str:
        return f"{self.name}_added"

    @property
    def plural(self) -> str:
        """Its list in a person's answer: ``"incomes"``."""
        return f"{self.name}s"

    @property
    def rpc_method(self) -> str:
        return f"add_{self.name}"

    @property
    def fields(self) -> tuple[str, ...]:
        return ("type", "value") if self.typed else ("value",)


KINDS: tuple[ItemKind, ...] = (
    ItemKind("income", typed=True, divisor=50, sign=+1),
    ItemKind("asset", typed=True, divisor=20, sign=+1),
    ItemKind("debt", typed=False, divisor=20, sign=-1),
)

BY_NAME: dict[str, ItemKind] = {kind.name: kind for kind in KINDS}
BY_EVENT_TYPE: dict[str, ItemKind] = {kind.event_type: kind for kind in KINDS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
