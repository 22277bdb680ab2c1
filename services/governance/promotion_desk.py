"""The promotion desk: the promotion gate (``promotion.py``) fed from the log, and the manual
promote and rollback commands, as a pure decider (state, event, now).

Per strategy instance with variants it keeps the arms of the current model and of each
canary since the roster last changed: the per-trade returns (a variant's ``trade_return``s)
and, per canary, the paired differences (canary minus current ``step_return`` on the same
opportunity). A step on which both variants are flat (no position after it and a step
return of exactly 0) adds no difference: both abstained, so the 0 is not a measurement, and
counting it would only dilute the sequential test (its mixture is scaled per difference).

Each closed canary trade evaluates that canary (the mixture SPRT stays valid however often it
is looked at) and publishes ``PromotionDecided``; a ``promote`` (auto on) also publishes the
new ``ModelRoster``. The promoted canary takes the current model's weight; the old current
stays in the roster as a canary of weight 0, so its shadow keeps running and a rollback can
restore it, but it is *retired*: not evaluated until an operator promotes or rolls back to it
(a model just beaten would otherwise be re-promoted on noise). Every roster change restarts
the instance's arms. docs/governance.md, "Promotion on the log".
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from contracts.codec import encode
from contracts.events import Event
from contracts.model_events import (
    ModelRoster,
    ModelVariant,
    PromotionDecided,
    ShadowResult,
    ShadowStep,
)
from contracts.subjects import subject_for
from contracts.system_events import DeadLetter, GovernanceCommand
from services.governance.fact_id import input_id
from services.governance.promotion import Arm, PromotionConfig, evaluate

SUBJECTS = ("gov.shadow.>", "gov.cmd.promote", "gov.cmd.rollback")
REMEMBER_COMMANDS = 64  # command ids kept to ignore a redelivered command
HOUR_NS = 3_600 * 10**9


class CanaryArm(msgspec.Struct, forbid_unknown_fields=True):
    """One canary since the roster last changed; ``first_step`` (ns) starts its hours live."""

    tag: str
    trades: list[float] = msgspec.field(default_factory=list)
    differences: list[float] = msgspec.field(default_factory=list)
    first_step: int | None = None


class Mark(msgspec.Struct, forbid_unknown_fields=True):
    """The latest step of one venue and symbol: its time and the ids of the steps at it.
    Steps of one source arrive in time order, so an older or already seen one is a repeat."""

    source: str
    ts: int
    ids: list[str]


class Slot(msgspec.Struct, forbid_unknown_fields=True):
    """One strategy instance: its roster, rollback stack (latest last), retired models, the
    canaries tried so far (the trials of the deflated threshold) and the arms."""

    strategy: str
    roster: tuple[ModelVariant, ...]
    rollback: list[str] = msgspec.field(default_factory=list)
    retired: list[str] = msgspec.field(default_factory=list)
    tried: list[str] = msgspec.field(default_factory=list)
    current: list[float] = msgspec.field(default_factory=list)
    canaries: list[CanaryArm] = msgspec.field(default_factory=list)
    marks: list[Mark] = msgspec.field(default_factory=list)

    @property
    def current_tag(self) -> str:
        return next(v.tag for v in self.roster if not v.canary)


class PromotionState(msgspec.Struct, forbid_unknown_fields=True):
    slots: list[Slot] = msgspec.field(default_factory=list)
    commands: list[str] = msgspec.field(default_factory=list)  # latest command ids


class RosterError(Exception):
    """A command that cannot change the roster: refused with this reason."""


def _restart(slot: Slot) -> None:
    slot.current = []
    slot.canaries = [
        CanaryArm(v.tag) for v in slot.roster if v.canary and v.tag not in slot.retired
    ]
    slot.tried.extend(a.tag for a in slot.canaries if a.tag not in slot.tried)


def _flat(result: ShadowResult) -> bool:
    return result.position == 0.0 and result.step_return == 0.0


def _swap(slot: Slot, tag: str) -> tuple[ModelVariant, ...]:
    """``tag`` becomes current with the current model's weight; the current becomes a
    retired canary of weight 0."""
    old = next(v for v in slot.roster if not v.canary)
    slot.retired = [t for t in slot.retired if t != tag]
    slot.retired.append(old.tag)
    return tuple(
        ModelVariant(v.tag, old.weight, canary=False)
        if v.tag == tag
        else ModelVariant(v.tag, 0.0, canary=True)
        if v.tag == old.tag
        else v
        for v in slot.roster
    )


class PromotionDesk:
    """``decide(event, now)`` on ShadowSteps and promote/rollback commands."""

    def __init__(
        self,
        config: PromotionConfig,
        rosters: Mapping[str, tuple[ModelVariant, ...]],
        worker: str = "governance",
    ) -> None:
        self.config = config
        self.rosters = dict(rosters)
        self.worker = worker
        self.state = PromotionState()
        self._slots: dict[str, Slot] = {}
        self._index()

    def _index(self) -> None:
        """Slots by strategy; a configured instance the state does not know yet, or whose
        configured tags changed since the snapshot, starts from the config's roster."""
        known = {
            s.strategy: s
            for s in self.state.slots
            if s.strategy in self.rosters
            and {v.tag for v in s.roster} == {v.tag for v in self.rosters[s.strategy]}
        }
        for strategy, roster in sorted(self.rosters.items()):
            if strategy not in known:
                known[strategy] = Slot(strategy, roster)
                _restart(known[strategy])
        self.state.slots = [known[k] for k in sorted(known)]
        self._slots = known

    def decide(self, event: Event, now: int) -> list[Event]:
        if isinstance(event, ShadowStep):
            return self._on_step(event, now)
        if isinstance(event, GovernanceCommand) and event.action in ("promote", "rollback"):
            return self._on_command(event, now)
        return []

    # --- shadow steps ---------------------------------------------------------------------

    def _repeat(self, slot: Slot, step: ShadowStep, sid: str) -> bool:
        source = f"{step.venue}|{step.symbol}"
        mark = next((m for m in slot.marks if m.source == source), None)
        if mark is None:
            slot.marks.append(Mark(source, step.ts, [sid]))
            return False
        if step.ts < mark.ts or (step.ts == mark.ts and sid in mark.ids):
            return True
        if step.ts > mark.ts:
            mark.ts, mark.ids = step.ts, [sid]
        else:
            mark.ids.append(sid)
        return False

    def _on_step(self, step: ShadowStep, now: int) -> list[Event]:
        slot = self._slots.get(step.strategy)
        if slot is None:
            return []
        sid = input_id("shadow", step)
        if self._repeat(slot, step, sid):
            return []
        results = {r.tag: r for r in step.results}
        current_tag = slot.current_tag
        current = results.get(current_tag)
        if current is None:
            return []
        if current.trade_return is not None:
            slot.current.append(current.trade_return)
        closed: list[CanaryArm] = []
        for arm in slot.canaries:
            result = results.get(arm.tag)
            if result is None:
                continue
            if arm.first_step is None:
                arm.first_step = step.ts
            if not (_flat(result) and _flat(current)):
                arm.differences.append(result.step_return - current.step_return)
            if result.trade_return is not None:
                arm.trades.append(result.trade_return)
                closed.append(arm)
        out: list[Event] = []
        for arm in closed:
            start = step.ts if arm.first_step is None else arm.first_step
            hours = (step.ts - start) / HOUR_NS
            evaluation = evaluate(
                self.config,
                Arm(current_tag, tuple(slot.current)),
                Arm(arm.tag, tuple(arm.trades)),
                arm.differences,
                hours,
                len(slot.tried),
            )
            out.append(
                PromotionDecided(
                    ts=now,
                    strategy=slot.strategy,
                    current=current_tag,
                    canary=arm.tag,
                    auto=self.config.auto,
                    evaluation=evaluation,
                )
            )
            if evaluation.decision == "promote":
                slot.rollback.append(current_tag)
                out.append(self._change(slot, _swap(slot, arm.tag), sid, evaluation.reason, now))
                break  # the arms restarted: the other canaries' samples are gone
        return out

    def _change(
        self, slot: Slot, roster: tuple[ModelVariant, ...], cause_id: str, reason: str, now: int
    ) -> ModelRoster:
        slot.roster = roster
        _restart(slot)
        return ModelRoster(
            ts=now, strategy=slot.strategy, variants=roster, cause_id=cause_id, reason=reason
        )

    # --- commands -------------------------------------------------------------------------

    def _on_command(self, command: GovernanceCommand, now: int) -> list[Event]:
        cid = input_id(command.action, command)
        if cid in self.state.commands:
            return []
        self.state.commands = [*self.state.commands, cid][-REMEMBER_COMMANDS:]
        try:
            roster, reason = self._command(command)
        except RosterError as exc:
            return [
                DeadLetter(
                    ts=now,
                    worker=self.worker,
                    subject=subject_for(command),
                    reason=f"promotion desk: {exc}",
                    payload=encode(command),
                )
            ]
        slot = self._slots[str(command.strategy)]
        return [self._change(slot, roster, cid, reason, now)]

    def _command(self, command: GovernanceCommand) -> tuple[tuple[ModelVariant, ...], str]:
        strategy, model = str(command.strategy), str(command.model)
        slot = self._slots.get(strategy)
        if slot is None:
            configured = ", ".join(sorted(self._slots)) or "none"
            raise RosterError(
                f"{command.action}: strategy {strategy!r} has no variants "
                f"(with variants: {configured})"
            )
        by = command.issued_by or "unknown"
        current = slot.current_tag
        if command.action == "promote":
            tags = [v.tag for v in slot.roster]
            if model not in tags:
                raise RosterError(
                    f"promote: {strategy} has no model {model!r} (models: {', '.join(tags)})"
                )
            if model == current:
                raise RosterError(f"promote: {model} is already {strategy}'s current model")
            slot.rollback.append(current)
            return _swap(slot, model), f"promote {model} over {current} by {by}: {command.reason}"
        if not slot.rollback:
            raise RosterError(f"rollback: {strategy} has no promotion to roll back")
        back = slot.rollback.pop()
        return _swap(slot, back), f"rollback to {back} from {current} by {by}: {command.reason}"

    # --- snapshot -------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=PromotionState)
        self._index()
