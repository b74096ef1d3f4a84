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


@pytest.fixture(scope="module", params=["avx2", "sse2", "neon", "portable"])
def compiled(request):
    """The compiled twin, once with each string scan variant this build and CPU have."""
    try:
        from iii import _codec
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("the compiled iii._codec extension is required in CI")
        pytest.skip("the compiled iii._codec extension is not installed")
    best = _codec._string_scan()
    try:
        _codec._string_scan(request.param)
    except ValueError:
        pytest.skip(f"no {request.param} string scan here")
    yield _codec
    _codec._string_scan(best)


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
        st.tuples(
            st.integers(0, 10_000),
            st.sampled_from(list(b'{}[]",:\\ 0-.eE\x01ntu\x80\xbf\xc0\xc3\xe0\xed\xf0\xf4\xf5\xff')) | st.none(),
        ),
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
        bytes(damaged).decode()  # and it is UTF-8


# ------------------------------------------------------------------------------------ UTF-8
# msgspec does not check the UTF-8 of payloads it keeps raw, so both twins check it themselves:
# the compiled scan as it skips strings, decode_frame over the whole frame. A forwarded payload
# that is not UTF-8 would make an SDK drop its connection.

#: Well-formed sequences of each length, at the edges of their ranges.
VALID_UTF8 = ["\u0080", "é", "\u07ff", "\u0800", "☃", "\ud7ff", "\ue000", "\uffff", "\U00010000", "🎉", "\U0010ffff"]
#: Byte strings that are not UTF-8, by why.
INVALID_UTF8 = {
    "continuation alone": b"\x80",
    "continuation after a full sequence": b"\xc3\xa9\xbf",
    "overlong 2-byte C0": b"\xc0\xaf",
    "overlong 2-byte C1": b"\xc1\xbf",
    "overlong 3-byte": b"\xe0\x9f\xbf",
    "overlong 4-byte": b"\xf0\x8f\xbf\xbf",
    "surrogate D800": b"\xed\xa0\x80",
    "surrogate DFFF": b"\xed\xbf\xbf",
    "past U+10FFFF": b"\xf4\x90\x80\x80",
    "lead F5": b"\xf5\x80\x80\x80",
    "byte FF": b"\xff",
    "2-byte cut by ASCII": b"\xc3A",
    "3-byte cut short": b"\xe2\x98",
    "4-byte cut short": b"\xf0\x9f\x8e",
    "4-byte missing its last": b"\xf0\x9f\x8eA",
}


def call_with(string: bytes, pad: int = 0, where: str = "value") -> bytes:
    """A plain call whose data holds ``string`` (raw bytes) after ``pad`` ASCII bytes, in a
    string value or a key."""
    text = b"x" * pad + string
    data = b'{"' + text + b'":1}' if where == "key" else b'{"s":"' + text + b'","n":1}'
    return b'{"type":"invokefunction","invocation_id":"i-1","function_id":"f::x","data":' + data + b"}"


#: Where a sequence starts in its string: every offset of the first two 32-byte vectors and past
#: them (loads start at the string, and the end of the frame moves with the offset too).
OFFSETS = range(0, 70)


@pytest.mark.parametrize("char", VALID_UTF8, ids=lambda c: f"U+{ord(c):04X}")
def test_well_formed_utf8_of_every_length_routes_at_every_offset(compiled, char):
    for pad in OFFSETS:
        raw = call_with(char.encode() * 3, pad)
        routed = compiled.route_frame(raw, CALLER)
        assert routed is not None, pad
        assert routed == pure.route_frame(raw, CALLER)
        assert json.loads(routed[3])["data"]["s"] == "x" * pad + char * 3


@pytest.mark.parametrize("where", ["value", "key"])
@pytest.mark.parametrize("bad", list(INVALID_UTF8.values()), ids=list(INVALID_UTF8))
def test_utf8_that_is_not_well_formed_is_never_routed(compiled, bad, where):
    """At every offset (across the 16 and 32 byte vector boundaries), in keys and values, and
    cut short by the closing quote: the full decoder gets the frame and rejects it, naming the
    byte Python's decoder names."""
    for pad in OFFSETS:
        raw = call_with(bad, pad, where)
        assert compiled.route_frame(raw, CALLER) is None, pad
        assert pure.route_frame(raw, CALLER) is None
        with pytest.raises(UnicodeDecodeError) as python:
            raw.decode()
        for twin in (compiled, pure):
            with pytest.raises(pure.DecodeError, match=f"invalid UTF-8 at byte {python.value.start}$"):
                twin.decode_frame(raw)


@pytest.mark.parametrize("bad", list(INVALID_UTF8.values()), ids=list(INVALID_UTF8))
def test_utf8_cut_short_by_the_end_of_the_frame_is_rejected(compiled, bad):
    raw = call_with(b"", 40)[:-5] + bad  # the frame ends inside the string
    assert compiled.route_frame(raw, CALLER) is None
    for twin in (compiled, pure):
        with pytest.raises(pure.DecodeError, match="invalid UTF-8"):
            twin.decode_frame(raw)


def test_utf8_is_checked_in_every_member_the_scan_skips(compiled):
    for member in (b'"metadata":{"m":"\xff"}', b'"extra":["\xed\xa0\x80"]', b'"\xc3":1'):
        raw = b'{"type":"invokefunction","invocation_id":"i","function_id":"f",' + member + b"}"
        assert compiled.route_frame(raw, CALLER) is None
        with pytest.raises(compiled.DecodeError, match="invalid UTF-8"):
            compiled.decode_frame(raw)
    result = b'{"type":"invocationresult","invocation_id":"i","function_id":"f","result":"\xe2\x98"}'
    assert compiled.route_frame(result, CALLER) is None


#: String contents as raw bytes: ASCII, well-formed sequences and pieces that are not.
string_bytes = st.lists(
    st.sampled_from([b"a", b" ", b"\\n", b"\\u00e9", *(c.encode() for c in VALID_UTF8), *INVALID_UTF8.values()])
    | st.binary(max_size=3).filter(lambda b: b'"' not in b and b"\\" not in b and all(x >= 0x20 for x in b)),
    max_size=40,
).map(b"".join)


@settings(max_examples=600, deadline=None)
@given(content=string_bytes, pad=st.integers(0, 40), key=st.booleans())
def test_the_scan_accepts_exactly_the_utf8_the_decoder_accepts(compiled, content, pad, key):
    """Property: a call holding any bytes in a string routes, exactly as the reference does,
    if and only if the frame is UTF-8; both twins' decoders agree to the byte they name."""
    raw = call_with(content, pad, "key" if key else "value")
    try:
        raw.decode()
        utf8 = True
    except UnicodeDecodeError:
        utf8 = False
    routed = compiled.route_frame(raw, CALLER)
    assert (routed is not None) == utf8
    assert routed == pure.route_frame(raw, CALLER)
    errors = []
    for twin in (compiled, pure):
        try:
            twin.decode_frame(raw)
            errors.append(None)
        except pure.DecodeError as exc:
            errors.append(str(exc))
    assert errors[0] == errors[1]
    assert (errors[0] is None) == utf8
