"""The slotted form of an indicator: its struct's fields as plain ``__slots__`` attributes.

Every indicator keeps its state in a msgspec struct so a snapshot can carry it, but in
CPython a store into a struct field costs about 20 ns more than one into a ``__slots__``
attribute, and a step stores several values. A loop that runs many indicators a bar (the
rule engine) runs their slotted forms instead. Both forms inherit the indicator's step class,
so the arithmetic is the same code; they share the ring buffers (lists are not copied), and
``store`` writes the rest back into the struct when its state is read.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec


class Slotted:
    """Base of the slotted forms, which ``slotted_form`` makes."""

    __slots__ = ("record",)
    _forms: ClassVar[dict[type[msgspec.Struct], type[Slotted]]] = {}

    def __init__(self, record: msgspec.Struct) -> None:
        """Take over ``record``'s state; a nested struct (a window) as its slotted form."""
        self.record = record
        for name in record.__struct_fields__:
            value = getattr(record, name)
            if isinstance(value, msgspec.Struct):
                value = Slotted._forms[type(value)](value)
            setattr(self, name, value)

    def store(self) -> None:
        """Write the state back into the struct, which is then current."""
        record = self.record
        for name in record.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, Slotted):
                value.store()
            else:
                setattr(record, name, value)


def slotted_form(record: type[msgspec.Struct], step: type) -> type[Slotted]:
    """The slotted form of ``record``: the step methods of ``step`` (a base of ``record``)
    over one slot per field of ``record``."""
    name = f"Slotted{record.__name__}"
    namespace = {
        "__slots__": record.__struct_fields__,
        "__module__": record.__module__,
        "__qualname__": name,
        "__doc__": f"``{record.__name__}`` in slots, for hot loops.",
    }
    form = type(name, (Slotted, step), namespace)
    Slotted._forms[record] = form
    return form
