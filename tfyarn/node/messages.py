"""What a barrier task and its role process tell each other, and what the roles gather.

Control messages (JSON lines on the :class:`~tfyarn.node.control.ControlPipe`):

- task -> role :class:`Setup`: the role's partition, address, peers' hosts and data;
- role -> task :class:`Hello`: the role's transport listener, once bound;
- task -> role :class:`Cluster`: every role's :class:`Member` record, once wired.

The roles' ``allGather`` payloads are records too: a :class:`Member` each, then an
:class:`Endpoint` each when a tfyarn transport is in use.

Every class is a small frozen dataclass that checks its fields against its type hints
(and a few ranges) when built, so a malformed message is refused where it enters a
process, with an error naming each bad field, rather than failing later as a
``KeyError`` or a silent exit.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from tfyarn.errors import TFYarnError

__all__ = ["Cluster", "Endpoint", "Hello", "Member", "Message", "MessageError", "Record", "Setup"]

R = TypeVar("R", bound="Record")


class MessageError(TFYarnError):
    """A control message or gathered record that breaks the protocol; says what was wrong."""


def _describe(hint: Any) -> str:
    """A type hint in words, for error messages (``a list of str``, ``int or null``)."""
    if hint is type(None):
        return "null"
    if hint is Any:
        return "anything"
    if isinstance(hint, type):
        return hint.__name__
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return "an object"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in args)
    return str(hint)


def _conforms(value: object, hint: Any) -> bool:
    """Whether ``value`` is of the type ``hint`` names (the subset the records use)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_conforms(value, h) for h in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_conforms(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if hint in (int, float) and isinstance(value, bool):
        return False  # JSON true is not a port number
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)


def _decode(value: object, hint: Any, where: str) -> object:
    """Turn JSON's lists and objects into the tuples and records ``hint`` asks for."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        arms = [h for h in typing.get_args(hint) if h is not type(None)]
        return _decode(value, arms[0], where) if len(arms) == 1 else value
    if origin is tuple and isinstance(value, list):
        item = typing.get_args(hint)[0]
        return tuple(_decode(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(hint, type) and issubclass(hint, Record) and isinstance(value, dict):
        try:
            return hint.from_json(value)
        except MessageError as exc:
            raise MessageError(f"{where}: {exc}") from None
    return value


def _encode(value: object) -> object:
    """The JSON form of a field's value (records nested as objects, tuples as lists)."""
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return value


@dataclass(frozen=True)
class Record:
    """A frozen record validated against its type hints when built.

    Subclasses add range checks in :meth:`_problems`.
    """

    #: What the record is called in error messages.
    what: ClassVar[str] = "record"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        problems = [
            f"{f.name} must be {_describe(hints[f.name])}, got {getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if not _conforms(getattr(self, f.name), hints[f.name])
        ]
        if not problems:  # range checks assume the types are right
            problems = self._problems()
        if problems:
            raise MessageError(f"bad {self.what}: {'; '.join(problems)}")

    def _problems(self) -> list[str]:
        """What is wrong beyond the field types (empty names, ports out of range)."""
        return []

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-able dict."""
        return {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def _expect_object(cls, raw: object) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise MessageError(f"a {cls.what} must be a JSON object, got {raw!r}")
        return raw

    @classmethod
    def from_json(cls: type[R], raw: object) -> R:
        """Build the record from its JSON form, refusing missing, unknown or bad fields."""
        data = cls._expect_object(raw)
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        required = [
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        problems = [f"{n} is missing" for n in required if n not in data]
        problems += [f"unknown field {n!r}" for n in sorted(set(data) - names - {"type"})]
        if problems:
            raise MessageError(f"bad {cls.what}: {'; '.join(problems)}")
        hints = typing.get_type_hints(cls)
        return cls(**{n: _decode(v, hints[n], n) for n, v in data.items() if n in names})


@dataclass(frozen=True)
class Message(Record):
    """A control message: a record whose JSON form carries its ``type``."""

    #: The ``type`` field on the wire.
    kind: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON-able dict, ``type`` first."""
        return {"type": self.kind, **super().to_json()}

    @classmethod
    def _expect_object(cls, raw: object) -> dict[str, Any]:
        data = super()._expect_object(raw)
        if data.get("type") != cls.kind:
            raise MessageError(
                f"expected a {cls.kind!r} control message, got one of type {data.get('type')!r}"
            )
        return data


def _blank(record: Record, *names: str) -> list[str]:
    return [f"{n} must not be empty" for n in names if not getattr(record, n)]


@dataclass(frozen=True)
class Member(Record):
    """One role as the cluster wiring (Spark ``allGather``) described it."""

    what: ClassVar[str] = "member record"

    task_id: str
    host: str
    tf_port: int
    exchange_address: str | None
    rows: int
    executor: str
    data_spec: dict[str, Any] | None = None

    def _problems(self) -> list[str]:
        problems = _blank(self, "task_id", "host", "executor")
        if not 0 < self.tf_port < 65536:
            problems.append(f"tf_port must be a port number (1-65535), got {self.tf_port}")
        if self.rows < 0:
            problems.append(f"rows must not be negative, got {self.rows}")
        return problems

    @property
    def tf_address(self) -> str:
        """``host:port`` of the role's TensorFlow server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.tf_port}"


@dataclass(frozen=True)
class Endpoint(Record):
    """Where one role's tfyarn transport listener is (the second ``allGather``)."""

    what: ClassVar[str] = "endpoint record"

    task_id: str
    exchange_address: str | None

    def _problems(self) -> list[str]:
        return _blank(self, "task_id")


@dataclass(frozen=True)
class Setup(Message):
    """Task -> role: who the role is and where its data is."""

    what: ClassVar[str] = "'setup' control message"
    kind: ClassVar[str] = "setup"

    partition: int
    host: str
    peer_hosts: tuple[str, ...]
    data_path: str | None = None

    def _problems(self) -> list[str]:
        problems = _blank(self, "host", "peer_hosts")
        if self.partition < 0:
            problems.append(f"partition must not be negative, got {self.partition}")
        return problems


@dataclass(frozen=True)
class Hello(Message):
    """Role -> task: the role's transport listener is bound (or none was asked for)."""

    what: ClassVar[str] = "'hello' control message"
    kind: ClassVar[str] = "hello"

    exchange_address: str | None = None
    transport: str | None = None


@dataclass(frozen=True)
class Cluster(Message):
    """Task -> role: every role of the cluster, with its transport address."""

    what: ClassVar[str] = "'cluster' control message"
    kind: ClassVar[str] = "cluster"

    members: tuple[Member, ...]

    def _problems(self) -> list[str]:
        tasks = [m.task_id for m in self.members]
        problems = _blank(self, "members")
        twice = sorted({t for t in tasks if tasks.count(t) > 1})
        if twice:
            problems.append(f"members name {', '.join(twice)} more than once")
        return problems
