"""``route_frame``, the routing fast path: the compiled scan against the pure twin.

The pure twin is defined by the full decoder, so it is the reference. What must hold: the compiled
scan routes the frames the SDKs send (else the fast path silently never runs), routes them exactly
as the reference does, and never routes a frame the full decoder rejects.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iii import _codec_py as pure
from test_codec import CAPTURED

CALLER = pure.caller_field("7d3c1f1e-1111-4222-8333-444455556666")


@pytest.fixture(scope="module")
def compiled():
    try:
        from iii import _codec
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("the compiled iii._codec extension is required in CI")
        pytest.skip("the compiled iii._codec extension is not installed")
    return _codec


def _routable(frame: dict) -> bool:
    """What the compiled scan must route: a plain call or a successful answer, ASCII ids."""
    if frame.get("type") == "invocationresult":
        return "error" not in frame
    return (
        frame.get("type") == "invokefunction"
        and isinstance(frame.get("invocation_id"), str)
        and "action" not in frame
        and "namespace" not in frame
        and frame["invocation_id"].isascii()
        and frame["function_id"].isascii()
    )


ROUTABLE = [param for param in CAPTURED if _routable(param.values[0])]


def test_captured_sdk_calls_and_answers_are_there():
    kinds = {param.values[0]["type"] for param in ROUTABLE}
    assert kinds == {"invokefunction", "invocationresult"}


@pytest.mark.parametrize("frame", ROUTABLE)
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_what_the_sdks_send_takes_the_fast_path(compiled, frame, separators):
    raw = json.dumps(frame, separators=separators, ensure_ascii=False).encode()
    routed = compiled.route_frame(raw, CALLER)
    assert routed is not None
    assert routed == pure.route_frame(raw, CALLER)


def test_a_call_is_laid_out_for_the_owner_with_the_caller_added(compiled):
    raw = b' { "function_id" : "m::add", "data" : { "a" : [1, 2.5e3, "\\u00e9\\ud83d\\ude00"] } , "invocation_id":"i-1", "baggage": null, "type":"invokefunction" } '
    expected = (
        pure.ROUTE_INVOKE,
        "i-1",
        "m::add",
        b'{"type":"invokefunction","invocation_id":"i-1","function_id":"m::add","data":{ "a" : [1, 2.5e3, "\\u00e9\\ud83d\\ude00"] ,'
        + CALLER
        + b"}}",
    )
    assert compiled.route_frame(raw, CALLER) == expected == pure.route_frame(raw, CALLER)
    empty = b'{"type":"invokefunction","invocation_id":"i","function_id":"f","data":{ }}'
    assert json.loads(compiled.route_frame(empty, CALLER)[3])["data"] == json.loads(b"{" + CALLER + b"}")


@pytest.mark.parametrize(
    "raw",
    [
        # Not for the fast path: the full decoder handles these.
        b'{"type":"invokefunction","function_id":"f","action":{"type":"void"},"invocation_id":"i"}',
        b'{"type":"invokefunction","function_id":"f","invocation_id":"i","namespace":"ns"}',
        b'{"type":"invokefunction","function_id":"f","data":1}',
        b'{"type":"invokefunction","function_id":"f","invocation_id":"i","data":{"_caller_worker_id":"me"}}',
        b'{"type":"invocationresult","invocation_id":"i","error":{"code":"x","message":"y"}}',
        b'{"type":"registerfunction","id":"f"}',
        # Malformed or mistyped: rejected by the full decoder.
        b'{"type":"invokefunction","function_id":"f","invocation_id":"i","data":{"a":01}}',
        b'{"type":"invokefunction","function_id":"f","invocation_id":"i","data":{"a":1.}}',
        b'{"type":"invokefunction","function_id":"f","invocation_id":"i","data":{"a":"\x01"}}',
        b'{"type":"invokefunction","function_id":"f","invocation_id":"i","data":{"a":"\\ud800"}}',
        b'{"type":"invokefunction","function_id":"f","invocation_id":"i","data":{"a":"\\udc00"}}',
        b'{"type":"invokefunction","function_id":"f","invocation_id":"i","data":{"a":"\\ud83d\\u0041"}}',
        b'{"type":"invokefunction","function_id":"f","invocation_id":"i","data":{"a":"\\x"}}',
        b'{"type":"invokefunction","function_id":"f","invocation_id":"i","data":[1,]}',
        b'{"type":"invokefunction","function_id":"f","invocation_id":"i","data":{"a":1}',
        b'{"type":"invokefunction","function_id":"f","invocation_id":"i"} trailing',
        b'{"type":"invokefunction","function_id":"f","invocation_id":7}',
        b'{"type":"invokefunction","function_id":"f","invocation_id":"i","traceparent":1}',
        b'{"type":"invocationresult","invocation_id":"i","function_id":null}',
        b'{"type":"invocationresult"}',
        b'{"type":"invokefunction","function_id":"f","invocation_id":"i","data":' + b"[" * 2000 + b"]" * 2000 + b"}",
        b"",
        b"[]",
    ],
)
def test_frames_off_the_fast_path_go_to_the_full_decoder(compiled, raw):
    assert compiled.route_frame(raw, CALLER) is None
    assert pure.route_frame(raw, CALLER) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
#: Ids as SDKs make them (uuids, names): printable ASCII that needs no escaping in JSON.
ids = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters='"\\'), max_size=20)


@st.composite
def frames(draw) -> bytes:
    """Calls and answers as any SDK might write them: any key order, spacing, payload, extras."""
    if draw(st.booleans()):
        frame = {"type": "invokefunction", "function_id": draw(ids), "invocation_id": draw(ids)}
        for key in ("data", "metadata"):
            if draw(st.booleans()):
                frame[key] = draw(json_values)
        for key in ("traceparent", "baggage"):
            if draw(st.booleans()):
                frame[key] = draw(st.none() | ids)
    else:
        frame = {"type": "invocationresult", "invocation_id": draw(ids), "function_id": draw(ids)}
        if draw(st.booleans()):
            frame["result"] = draw(json_values)
    if draw(st.booleans()):
        frame["extra"] = draw(json_values)
    keys = draw(st.permutations(list(frame)))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", "\t:\r")]))
    text = json.dumps({key: frame[key] for key in keys}, separators=separators, ensure_ascii=draw(st.booleans()))
    return text.encode()


@settings(max_examples=400, deadline=None)
@given(raw=frames())
def test_generated_calls_and_answers_route_exactly_as_the_reference(compiled, raw):
    reference = pure.route_frame(raw, CALLER)
    assert reference is not None or b"_caller_worker_id" in raw
    assert compiled.route_frame(raw, CALLER) == reference


@settings(max_examples=600, deadline=None)
@given(
    raw=frames(),
    edits=st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(list(b'{}[]",:\\ 0-.eE\x01\xffntu')) | st.none()),
        min_size=1,
        max_size=3,
    ),
)
def test_a_damaged_frame_is_never_routed_unless_the_full_decoder_accepts_it(compiled, raw, edits):
    """Property: byte edits (replace or delete) anywhere; whatever the scan routes, the full
    decoder accepts and routes identically."""
    damaged = bytearray(raw)
    for position, byte in edits:
        position %= len(damaged) or 1
        if not damaged:
            break
        if byte is None:
            del damaged[position]
        else:
            damaged[position] = byte
    routed = compiled.route_frame(bytes(damaged), CALLER)
    if routed is not None:
        assert routed == pure.route_frame(bytes(damaged), CALLER)
