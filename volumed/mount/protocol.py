"""The control channel's messages: one type per request and per reply, encoded and decoded here.

The wire is one JSON object per line (volumed.mount.control carries it). A request is
``{"op": OP, ...fields}``; a reply is ``{"ok": true, ...fields}`` or
``{"ok": false, "error": ONE LINE, "code": CODE}``:

  Status                          {"op": "status"}                   -> StatusReply  {"status": {...}}
  Unmount                         {"op": "unmount"}                  -> Done         {}
  Check                           {"op": "check"}                    -> Done         {}
  SetClock (--allow-faults)       {"op": "set-clock", "time": EPOCH, "advance": SECONDS, "check": BOOL}
                                                                     -> ClockReply   {"time": EPOCH}
  Fault (--allow-faults)          {"op": "fault", "kind": KIND, ...} -> FaultReply   {"faults"|"report"|"pages": ...}
  HoldGil (--allow-faults)        {"op": "hold-gil", "seconds": S}   -> GilReply     {"held_from", "held_until", "other_python_ran"}
  Snapshot                        {"op": "snapshot", "store", "key", "description", "max_preserved", "hold"}
                                                                     -> SnapshotReply {"snapshot_id": ID}

Error codes (``ErrorCode``) say what went wrong without anyone reading the message: a daemon that
does not know an op answers UnknownOperation, so a client tells an older daemon from a failure.
``ControlError.for_reply`` turns an error reply into the domain error a caller catches.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar, Union

from volumed.errors import StateError, UsageError, VolumedError
from volumed.snapshot.mounted import LiveSnapshotOrder

Wire = dict[str, Any]
StatusRecord = dict[str, Any]  # a mount's status (volumed status --json prints it as is)


class ErrorCode(str, enum.Enum):
    """Why a request failed (the ``code`` of an error reply)."""

    UNKNOWN_OPERATION = "UnknownOperation"  # the daemon does not know the op (an older volumed)
    INVALID_REQUEST = "InvalidRequest"      # malformed: not JSON, fields missing or of a wrong type
    NOT_ROOT = "NotRoot"                    # the peer is not root
    FAULTS_NOT_ALLOWED = "FaultsNotAllowed" # a test hook on a daemon started without --allow-faults
    REFUSED = "Refused"                     # the daemon refused the request's values (one line says why)
    FAILED = "Failed"                       # the operation ran and failed (a snapshot saved nothing)
    INTERNAL = "InternalError"              # an unexpected error in the daemon
    UNSPECIFIED = "Unspecified"             # an error reply without a code


class ControlError(VolumedError):
    """An error reply of the control channel: ``code`` is its ErrorCode's value, ``str`` the
    daemon's line."""

    def __init__(self, message: str, *, code: ErrorCode):
        super().__init__(message, code=code.value)
        self.error_code = code

    @staticmethod
    def for_reply(d: Mapping[str, Any]) -> "ControlError":
        """The domain error for an error reply (UnsupportedRequest for an unknown op)."""
        text = str(d.get("error") or "control request failed")
        try:
            code = ErrorCode(d.get("code"))
        except ValueError:
            # A daemon started by a volumed from before error codes says only "unknown op 'X'".
            legacy_unknown = "code" not in d and text.startswith("unknown op")
            code = ErrorCode.UNKNOWN_OPERATION if legacy_unknown else ErrorCode.UNSPECIFIED
        if code is ErrorCode.UNKNOWN_OPERATION:
            return UnsupportedRequest(text, code=code)
        return ControlError(text, code=code)


class UnsupportedRequest(ControlError, StateError):
    """The daemon does not know the request (it was started by an older volumed)."""

    exit_code = StateError.exit_code


class ProtocolError(UsageError):
    """A request that cannot be decoded; the daemon answers it with ``code``."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INVALID_REQUEST):
        super().__init__(message)
        self.error_code = code


# ---- replies ------------------------------------------------------------------------------------

class _AsFields:
    """A reply whose wire fields are its dataclass fields, as they are."""

    def fields(self) -> Wire:
        return dict(vars(self))


@dataclasses.dataclass(frozen=True)
class Done(_AsFields):
    """A request that needs no answer but success (unmount, check)."""


@dataclasses.dataclass(frozen=True)
class StatusReply(_AsFields):
    status: StatusRecord


@dataclasses.dataclass(frozen=True)
class ClockReply(_AsFields):
    time: float


@dataclasses.dataclass(frozen=True)
class FaultReply:
    """The fault state (``faults``), a power cut's report (``report``) or the pages rolled back
    (``pages``): exactly one is set."""

    faults: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    pages: int | None = None

    def fields(self) -> Wire:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class GilReply(_AsFields):
    held_from: float
    held_until: float
    other_python_ran: int


@dataclasses.dataclass(frozen=True)
class SnapshotReply(_AsFields):
    snapshot_id: str


@dataclasses.dataclass(frozen=True)
class ErrorReply:
    code: ErrorCode
    error: str

    def fields(self) -> Wire:
        return {"error": self.error, "code": self.code.value}


Reply = Union[Done, StatusReply, ClockReply, FaultReply, GilReply, SnapshotReply, ErrorReply]


def encode_reply(reply: Reply) -> Wire:
    """The wire form of ``reply``."""
    return {"ok": not isinstance(reply, ErrorReply), **reply.fields()}


# ---- requests -----------------------------------------------------------------------------------

ReplyT = TypeVar("ReplyT", Done, StatusReply, ClockReply, FaultReply, GilReply, SnapshotReply)


class RequestOf(Generic[ReplyT]):
    """A request whose success reply is a ``ReplyT``; ``op`` names it on the wire."""

    op: ClassVar[str]

    def fields(self) -> Wire:
        """The request's fields on the wire (besides "op")."""
        return {}

    def decode_reply(self, d: Mapping[str, Any]) -> ReplyT:
        """The success reply ``d`` as its type (ProtocolError when it is not one)."""
        raise NotImplementedError


def _need(d: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """``d[name]`` if it is of ``kind`` (bool is not a number here), else ProtocolError."""
    value = d.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(f"malformed control message: {name!r} missing or not {_kind_name(kind)}")
    return value


def _optional(d: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    return None if d.get(name) is None else _need(d, name, kind)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


_NUMBER = (int, float)


@dataclasses.dataclass(frozen=True)
class Status(RequestOf[StatusReply]):
    op: ClassVar[str] = "status"

    def decode_reply(self, d: Mapping[str, Any]) -> StatusReply:
        return StatusReply(_need(d, "status", dict))


@dataclasses.dataclass(frozen=True)
class Unmount(RequestOf[Done]):
    """Flush, retire the grant, wipe the key, unmount and exit."""

    op: ClassVar[str] = "unmount"

    def decode_reply(self, d: Mapping[str, Any]) -> Done:
        return Done()


@dataclasses.dataclass(frozen=True)
class Check(RequestOf[Done]):
    """Run the real key check now."""

    op: ClassVar[str] = "check"

    def decode_reply(self, d: Mapping[str, Any]) -> Done:
        return Done()


@dataclasses.dataclass(frozen=True)
class SetClock(RequestOf[ClockReply]):
    """Test hook: from now on the monitor's clock is a fake one at ``time`` and/or moved by
    ``advance`` seconds; ``check`` runs the key check at once."""

    op: ClassVar[str] = "set-clock"
    time: float | None = None
    advance: float | None = None
    check: bool = False

    def fields(self) -> Wire:
        out: Wire = {"time": self.time, "advance": self.advance}
        out = {k: v for k, v in out.items() if v is not None}
        if self.check:
            out["check"] = True
        return out

    def decode_reply(self, d: Mapping[str, Any]) -> ClockReply:
        return ClockReply(float(_need(d, "time", _NUMBER)))


@dataclasses.dataclass(frozen=True)
class Fault(RequestOf[FaultReply]):
    """Test hook: inject a fault of ``kind`` with its ``params`` (volumed.mount.faults.handle says
    which; they travel flat beside "kind")."""

    op: ClassVar[str] = "fault"
    kind: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def fields(self) -> Wire:
        return {"kind": self.kind, **{k: v for k, v in self.params.items() if v is not None}}

    def decode_reply(self, d: Mapping[str, Any]) -> FaultReply:
        return FaultReply(_optional(d, "faults", dict), _optional(d, "report", dict),
                          _optional(d, "pages", int))


@dataclasses.dataclass(frozen=True)
class HoldGil(RequestOf[GilReply]):
    """Test hook: the daemon's loop thread keeps the GIL for ``seconds`` (at most 10)."""

    op: ClassVar[str] = "hold-gil"
    seconds: float = 1.0

    def fields(self) -> Wire:
        return {"seconds": self.seconds}

    def decode_reply(self, d: Mapping[str, Any]) -> GilReply:
        return GilReply(float(_need(d, "held_from", _NUMBER)), float(_need(d, "held_until", _NUMBER)),
                        int(_need(d, "other_python_ran", int)))


@dataclasses.dataclass(frozen=True)
class Snapshot(RequestOf[SnapshotReply]):
    """Snapshot the mounted volume now (volumed.snapshot.mounted)."""

    op: ClassVar[str] = "snapshot"
    order: LiveSnapshotOrder

    def fields(self) -> Wire:
        return self.order.to_wire()

    def decode_reply(self, d: Mapping[str, Any]) -> SnapshotReply:
        return SnapshotReply(_need(d, "snapshot_id", str))


Request = Union[Status, Unmount, Check, SetClock, Fault, HoldGil, Snapshot]


def encode_request(req: RequestOf[Any]) -> Wire:
    """The wire form of ``req``."""
    return {"op": req.op, **req.fields()}


def decode_request(d: Any) -> Request:
    """The request a wire object carries; ProtocolError (UnknownOperation for an op this daemon
    does not know, InvalidRequest for a malformed one)."""
    if not isinstance(d, dict):
        raise ProtocolError("malformed control message: not a JSON object")
    op = d.get("op")
    if op == "status":
        return Status()
    if op == "unmount":
        return Unmount()
    if op == "check":
        return Check()
    if op == "set-clock":
        t, adv = _optional(d, "time", _NUMBER), _optional(d, "advance", _NUMBER)
        return SetClock(None if t is None else float(t), None if adv is None else float(adv),
                        bool(d.get("check")))
    if op == "fault":
        kind = _need(d, "kind", str)
        return Fault(kind, {k: v for k, v in d.items() if k not in ("op", "kind")})
    if op == "hold-gil":
        seconds = _optional(d, "seconds", _NUMBER)
        return HoldGil(1.0 if seconds is None else float(seconds))
    if op == "snapshot":
        try:
            return Snapshot(LiveSnapshotOrder.from_wire(d))
        except UsageError as exc:
            raise ProtocolError(str(exc)) from None
    raise ProtocolError(f"unknown op {op!r}", ErrorCode.UNKNOWN_OPERATION)
