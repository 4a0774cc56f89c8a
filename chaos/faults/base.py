"""The one fault interface, the target a fault acts on, and the explicit registry.

A fault's life, driven by :mod:`chaos.faults.engine.guard`:

1. ``validate(target, params)``: parse and check the parameters and the target, and probe
   the kernel features the fault needs. Nothing is changed. Errors are :class:`FaultError`
   and stop the run before it starts.
2. ``prepare()``: snapshot what the fault will change and return a :class:`Handle` that holds
   everything ``revert`` needs, as plain JSON. The guard writes it to the on-disk ledger
   (fsync'd) *before* ``apply`` touches the kernel, so a crash at any later point can be
   undone by ``chaos revert-all``.
3. ``apply(handle)``: change the kernel or the process. A failure part-way leaves state that
   ``revert(handle)`` still cleans up.
4. ``revert(handle)``: a classmethod that needs only the handle (it runs in another process
   after a SIGKILL). It restores the snapshot and is harmless when called twice or when
   ``apply`` never ran or only half ran.

Faults that may overlap on one thing (two sysctl windows on one key, two stops of one
process, from one run or several processes) set ``stacks``: the guard then, under the
ledger's lock, hands each fault the other recorded faults of its kind (``holders``, oldest
first). ``stack_on`` takes the *original* state from an older holder instead of the state
the older fault made; ``revert_stacked`` leaves what a holder still holds (a sysctl goes to
the newest holder's value) and restores the original when the last one ends, in any order.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from chaos.errors import FaultError


@dataclass(frozen=True)
class Target:
    """Where a fault acts: a role in a lab, resolved to its namespace, links and processes.

    ``netns`` is None for the host's own namespace. ``pids`` are the role's processes
    (for signal faults); ``links`` are the role's interfaces inside ``netns``. ``pattern``,
    when set, is a regular expression over command lines that selects processes in ``netns``
    when the fault is *prepared*, not when the target is resolved: Locust workers, for one,
    start after the schedule was validated.
    """

    name: str
    netns: str | None
    links: tuple[str, ...] = ()
    pids: tuple[int, ...] = ()
    pattern: str | None = None


@dataclass(frozen=True)
class RemoteTarget:
    """Where a fault on another host acts: the agent's base URL (``http(s)://HOST:PORT``)
    and the target there (on the agent's allow-list). Target resolution
    (:mod:`chaos.faults.engine.targets`) makes one from ``http://HOST:PORT/TARGET``; the
    remote fault (:mod:`chaos.agent.client`) consumes it."""

    agent: str
    target: str

    @property
    def name(self) -> str:
        return f"{self.agent}/{self.target}"


def new_handle_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class Handle:
    """Everything needed to revert one applied fault. ``data`` is the fault type's
    :class:`HandleData` model as JSON, which is what the ledger stores; a fault reads it
    back typed with ``Model.of(handle)``."""

    kind: str
    target: str
    data: dict[str, Any]
    id: str = field(default_factory=new_handle_id)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Handle:
        return cls(kind=data["kind"], target=data["target"], data=data["data"], id=data["id"])


class Params(BaseModel):
    """Base for each fault's parameter model: strict, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HandleData(BaseModel):
    """Base for each fault's handle model, beside its params model: what ``prepare``
    snapshots and ``apply``/``revert`` read, typed. Its JSON is the ledger's ``data``, in
    the same keys as ever, so a ledger left by an older run still reverts (unknown keys
    are ignored)."""

    model_config = ConfigDict(extra="ignore")

    @classmethod
    def of(cls, handle: Handle) -> Self:
        """``handle``'s data, read as this model (from memory or from the ledger)."""
        return cls.model_validate(handle.data)

    def store(self, handle: Handle) -> None:
        """Write this model back into ``handle`` (``stack_on``, before the ledger write)."""
        handle.data = self.model_dump(mode="json")


class Fault(ABC):
    """One fault type. Subclasses set ``kind``, ``params_model`` and ``features``."""

    kind: ClassVar[str]
    params_model: ClassVar[type[Params]]
    #: what ``prepare`` records and ``apply``/``revert`` read (the ledger's ``data``)
    handle_model: ClassVar[type[HandleData]]
    #: capability names from :mod:`chaos.capabilities` that must be present.
    features: ClassVar[tuple[str, ...]] = ()
    #: True when revert undoes the fault (SIGKILL cannot be undone).
    reversible: ClassVar[bool] = True
    #: True when faults of this kind may overlap and stack (see the module's docstring).
    stacks: ClassVar[bool] = False

    def __init__(self, target: Target, params: Params) -> None:
        self.target = target
        self.params = params

    @classmethod
    def validate(cls, target: Target, raw: dict[str, Any]) -> Fault:
        """Parse ``raw`` params and check the target; raises FaultError, changes nothing."""
        return cls.on(target, cls.parse_params(raw, f" on {target.name}"))

    @classmethod
    def on(cls, target: Target, params: Params) -> Fault:
        """The fault with ``params`` already parsed (:meth:`parse_params`) on ``target``,
        checked; raises FaultError, changes nothing."""
        fault = cls(target, params)
        fault.check_target()
        return fault

    @classmethod
    def parse_params(cls, raw: dict[str, Any], where: str = "") -> Params:
        """``raw`` as this type's params model; FaultError naming every bad field."""
        try:
            return cls.params_model.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'params'}: "
                f"{str(err['msg']).removeprefix('Value error, ')}"
                for err in exc.errors()
            )
            raise FaultError(
                f"fault {cls.kind}{where}: invalid params: {problems}",
                f"see `chaos faults types` for the parameters of {cls.kind}",
            ) from None

    @classmethod
    def param_rows(cls) -> list[tuple[str, str, str, str]]:
        """(name, type, default, description) of each param (``chaos faults types``)."""
        rows = []
        for name, info in cls.params_model.model_fields.items():
            default = (
                "required"
                if info.is_required()
                else repr(info.get_default(call_default_factory=True))
            )
            annotation = info.annotation
            type_text = (
                annotation.__name__
                if isinstance(annotation, type)
                else str(annotation).replace("typing.", "")
            )
            rows.append((name, type_text, default, info.description or ""))
        return rows

    def check_target(self) -> None:  # noqa: B027 - optional hook
        """Raise FaultError when the target cannot take this fault."""

    @abstractmethod
    def prepare(self) -> Handle:
        """Snapshot and describe the change; no side effects."""

    @abstractmethod
    def apply(self, handle: Handle) -> None:
        """Make the change described by ``handle``."""

    @classmethod
    @abstractmethod
    def revert(cls, handle: Handle) -> None:
        """Undo ``handle``; idempotent, safe after a partial apply or none."""

    @classmethod
    def overlap_keys(cls, params: Params) -> set[str]:
        """(``stacks``) What two faults of this kind on one target overlap on, from parsed
        params (for ``chaos validate``'s warning): a sysctl key, the process."""
        return set()

    def stack_on(self, handle: Handle, holders: list[Handle]) -> None:  # noqa: B027
        """(``stacks``) Before the ledger write: where an older fault in ``holders`` holds
        what ``handle`` changes, take its original state into ``handle``."""

    @classmethod
    def revert_stacked(cls, handle: Handle, holders: list[Handle]) -> None:
        """(``stacks``) Undo ``handle`` but leave what ``holders`` still hold."""
        cls.revert(handle)

    def handle(self, data: HandleData, handle_id: str | None = None) -> Handle:
        """The handle for ``data`` (``handle_id``: when ``data`` names things after it)."""
        return Handle(
            kind=self.kind,
            target=self.target.name,
            data=data.model_dump(mode="json"),
            id=handle_id or new_handle_id(),
        )
