"""Chooses the frame codec: the compiled ``iii._codec`` when built, else the pure twin.

``III_NO_EXTENSIONS=1`` forces the pure-Python twin at runtime.
"""

from __future__ import annotations

import os

if os.environ.get("III_NO_EXTENSIONS"):
    from iii import _codec_py as _impl
else:
    try:
        from iii import _codec as _impl  # type: ignore[no-redef]
    except ImportError:
        from iii import _codec_py as _impl

#: ``"c"`` for the compiled twin, ``"py"`` for the pure one.
IMPLEMENTATION = "py" if _impl.__name__.endswith("_codec_py") else "c"

DecodeError = _impl.DecodeError
ROUTE_INVOKE = _impl.ROUTE_INVOKE
ROUTE_RESULT = _impl.ROUTE_RESULT
route_frame = _impl.route_frame
decode_frame = _impl.decode_frame
decode_engine_frame = _impl.decode_engine_frame
probe_frame = _impl.probe_frame
encode_message = _impl.encode_message
encode_json = _impl.encode_json
decode_json = _impl.decode_json
caller_field = _impl.caller_field
with_caller = _impl.with_caller
encode_invoke = _impl.encode_invoke
encode_result = _impl.encode_result
encode_error_result = _impl.encode_error_result
client_text_frames = _impl.client_text_frames
send_text_frame = _impl.send_text_frame
receive_into = _impl.receive_into

__all__ = [
    "IMPLEMENTATION",
    "DecodeError",
    "ROUTE_INVOKE",
    "ROUTE_RESULT",
    "route_frame",
    "decode_frame",
    "decode_engine_frame",
    "probe_frame",
    "encode_message",
    "encode_json",
    "decode_json",
    "caller_field",
    "with_caller",
    "encode_invoke",
    "encode_result",
    "encode_error_result",
    "client_text_frames",
    "send_text_frame",
    "receive_into",
]
