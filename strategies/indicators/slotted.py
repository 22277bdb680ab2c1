"""The slotted form of an indicator: its struct's fields as plain ``__slots__`` attributes.

Every indicator keeps its state in a msgspec struct so a snapshot can carry it, but in
CPython a store into a struct field costs about 20 ns more than one into a ``__slots__``
attribute, and a step stores several values. A loop that runs many indicators a bar (the
rule engine) runs their slotted forms instead. Both forms inherit the indicator's step class,
so the arithmetic is the same code; they share the ring buffers (lists are not copied), and
``store`` writes the rest back into the struct when its state is read.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec


class Slotted:
    """Base of the slotted forms; a subclass names its struct: ``class SlottedEMA(Slotted,
    _EMAStep, record=EMA)`` with ``__slots__ = EMA.__struct_fields__``."""

    __slots__ = ("record",)
    _forms: ClassVar[dict[type[msgspec.Struct], type[Slotted]]] = {}

    def __init_subclass__(cls, record: type[msgspec.Struct], **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Slotted._forms[record] = cls

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
