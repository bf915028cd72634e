"""The control channel's typed messages (volumed.mount.protocol), without a daemon: every request
round-trips through its wire form, malformed and unknown requests get error codes, and a client
maps codes (not message text) to domain errors. The wire stays the JSON the daemon always spoke."""

from __future__ import annotations

import pytest
import trio

from volumed.errors import StateError, VolumedError
from volumed.mount import control
from volumed.mount.protocol import (Check, ClockReply, ControlError, Done, ErrorCode, ErrorReply,
                                    Fault, FaultReply, HoldGil, ProtocolError, SetClock, Snapshot,
                                    SnapshotReply, Status, StatusReply, UnsupportedRequest, Unmount,
                                    decode_request, encode_reply, encode_request)
from volumed.snapshot.mounted import LiveSnapshotOrder

REQUESTS = [
    Status(), Unmount(), Check(), SetClock(advance=61.0, check=True), SetClock(time=1e9),
    Fault("error", {"io": "read", "errno": "EIO", "start": 0, "end": 4096}), Fault("status"),
    HoldGil(3.0),
    Snapshot(LiveSnapshotOrder("/tmp/store", {"snapshot_id": "snap-0123456789abcdef0"}, "d", 4096,
                               {"after_chunks": 1, "dir": "/tmp/h"})),
]


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: type(r).__name__)
def test_every_request_round_trips_through_its_wire_form(req):
    assert decode_request(encode_request(req)) == req


def test_the_wire_is_the_json_the_daemon_always_spoke():
    assert encode_request(Status()) == {"op": "status"}
    assert encode_request(SetClock(advance=61.0, check=True)) == {"op": "set-clock", "advance": 61.0,
                                                                  "check": True}
    assert encode_request(Fault("power-cut", {"mode": "all", "seed": None})) == {
        "op": "fault", "kind": "power-cut", "mode": "all"}
    assert encode_reply(Done()) == {"ok": True}
    assert encode_reply(StatusReply({"state": "available"})) == {"ok": True, "status": {"state": "available"}}
    assert encode_reply(FaultReply(pages=2)) == {"ok": True, "pages": 2}
    assert encode_reply(ErrorReply(ErrorCode.REFUSED, "no")) == {"ok": False, "error": "no",
                                                                  "code": "Refused"}


def test_replies_decode_to_their_types():
    assert SetClock(advance=1.0).decode_reply({"ok": True, "time": 5}) == ClockReply(5.0)
    assert Snapshot(REQUESTS[-1].order).decode_reply({"ok": True, "snapshot_id": "s"}) == SnapshotReply("s")
    with pytest.raises(ProtocolError):
        Status().decode_reply({"ok": True})


@pytest.mark.parametrize("wire, code", [
    ({"op": "frobnicate"}, ErrorCode.UNKNOWN_OPERATION),
    ({"op": "fault"}, ErrorCode.INVALID_REQUEST),
    ({"op": "set-clock", "advance": "soon"}, ErrorCode.INVALID_REQUEST),
    ({"op": "snapshot", "store": "/s"}, ErrorCode.INVALID_REQUEST),
    (["status"], ErrorCode.INVALID_REQUEST),
])
def test_unknown_and_malformed_requests_get_codes(wire, code):
    with pytest.raises(ProtocolError) as err:
        decode_request(wire)
    assert err.value.error_code is code


def test_the_server_answers_bad_lines_with_error_replies_not_a_crash():
    async def handler(req):
        raise RuntimeError("boom")

    async def main():
        return [await control.answer(line, handler)
                for line in (b"not json", b'{"op": "frobnicate"}', b'{"op": "status"}')]

    bad_json, unknown, crashed = trio.run(main)
    assert bad_json.code is ErrorCode.INVALID_REQUEST
    assert unknown == ErrorReply(ErrorCode.UNKNOWN_OPERATION, "unknown op 'frobnicate'")
    assert crashed == ErrorReply(ErrorCode.INTERNAL, "RuntimeError: boom")


def test_the_client_maps_codes_to_domain_errors():
    unknown = ControlError.for_reply({"ok": False, "error": "whatever text", "code": "UnknownOperation"})
    assert isinstance(unknown, UnsupportedRequest) and isinstance(unknown, StateError)
    assert unknown.exit_code == StateError.exit_code
    # The message text alone does not make an unknown op when a code says otherwise.
    failed = ControlError.for_reply({"ok": False, "error": "unknown op in the store", "code": "Failed"})
    assert type(failed) is ControlError and failed.error_code is ErrorCode.FAILED
    assert isinstance(failed, VolumedError) and failed.exit_code == 1 and str(failed) == "unknown op in the store"
    # A daemon started by a volumed from before error codes: its "unknown op" reply has no code.
    legacy = ControlError.for_reply({"ok": False, "error": "unknown op 'snapshot'"})
    assert isinstance(legacy, UnsupportedRequest)
    assert ControlError.for_reply({"ok": False, "error": "x"}).error_code is ErrorCode.UNSPECIFIED
