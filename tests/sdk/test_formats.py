"""Request/response formats from handlers' type hints, as the official SDK makes them (pydantic
models, primitives, lists, dicts, Optional), and also from msgspec Structs, dataclasses and
TypedDicts; and a failing handler's ``Error in handler <id>`` log line."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
from typing import Optional, TypedDict

import msgspec
import pydantic

from iii import InitOptions
from iii.format_utils import extract_request_format, extract_response_format, python_type_to_format
from iii.sdk._protocol import InvokeHandler, WorkerProtocol, worker_metadata

DRAFT = "https://json-schema.org/draft/2020-12/schema"

_HINTED = '''
from typing import Optional
import pydantic

class GreetInput(pydantic.BaseModel):
    name: str
    times: int = 1

class GreetOutput(pydantic.BaseModel):
    message: str
    tags: list[str] = []

def greet(data: GreetInput) -> GreetOutput: ...
def counts(data: dict[str, int]) -> Optional[list[float]]: ...
def plain(data): ...
'''

_OFFICIAL_PROBE = _HINTED + '''
import json
from iii.format_utils import extract_request_format as req, extract_response_format as res
print(json.dumps({name: [req(f), res(f)] for name, f in (("greet", greet), ("counts", counts), ("plain", plain))}))
'''


class Point(msgspec.Struct):
    x: int
    label: Optional[str] = None


@dataclasses.dataclass
class Box:
    corners: list[Point]


class Labels(TypedDict):
    name: str
    colour: str


def test_formats_from_hints_match_the_official_sdk(official_python):
    result = subprocess.run([official_python, "-c", _OFFICIAL_PROBE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout)
    namespace: dict = {}
    exec(compile(_HINTED, "hinted", "exec"), namespace)
    ours = {name: [extract_request_format(namespace[name]), extract_response_format(namespace[name])] for name in theirs}
    assert ours == theirs
    assert theirs["greet"][0]["properties"]["name"] == {"title": "Name", "type": "string"}  # a real schema
    assert theirs["plain"] == [None, None]


def test_structs_dataclasses_and_typed_dicts_give_their_schemas():
    def handler(data: Box) -> Labels: ...

    request = extract_request_format(handler)
    assert request["$schema"] == DRAFT and request["title"] == "Box" and request["required"] == ["corners"]
    assert request["properties"]["corners"] == {"type": "array", "items": {"$ref": "#/$defs/Point"}}
    assert request["$defs"]["Point"]["properties"]["x"] == {"type": "integer"}
    response = extract_response_format(handler)
    assert response["properties"] == {"name": {"type": "string"}, "colour": {"type": "string"}}
    assert python_type_to_format(Point)["required"] == ["x"]
    assert python_type_to_format(set) is None  # not describable: no format, as the official SDK


def new_protocol() -> WorkerProtocol:
    protocol = WorkerProtocol(worker_metadata(InitOptions(worker_name="formats"), None), None, 30_000)
    protocol.connection_opened()
    protocol.data_to_send()
    return protocol


class Sum(pydantic.BaseModel):
    total: float


def test_registration_sends_the_formats_of_a_typed_handler_unless_given():
    def add(data: Point) -> Sum: ...

    protocol = new_protocol()
    frame = json.loads(protocol.register_function("math::add", add).frame)
    assert frame["request_format"] == python_type_to_format(Point)
    assert frame["response_format"]["properties"] == {"total": {"title": "Total", "type": "number"}}
    given = json.loads(protocol.register_function("math::given", add, request_format={"type": "object"}).frame)
    assert given["request_format"] == {"type": "object"}
    assert "response_format" in given
    untyped = json.loads(protocol.register_function("math::untyped", lambda data: data).frame)
    assert "request_format" not in untyped and "response_format" not in untyped


def test_a_failing_handler_is_logged_with_its_traceback(caplog):
    protocol = new_protocol()

    def explode(data):
        raise RuntimeError("boom")

    function = protocol.register_function("fail::now", explode)
    for invocation_id in ("call-1", None):  # answered, and fire-and-forget
        event = InvokeHandler(explode, False, function.function_id, invocation_id, ({},))
        try:
            explode({})
        except RuntimeError as exc:
            with caplog.at_level(logging.ERROR, logger="iii.iii"):
                protocol.handler_raised(event, exc)
    records = [r for r in caplog.records if r.name == "iii.iii"]
    assert [r.getMessage() for r in records] == ["Error in handler fail::now"] * 2
    assert all("RuntimeError: boom" in caplog.text and r.exc_info is not None for r in records)
    (answer,) = [json.loads(f) for f in protocol.data_to_send() if b"invocationresult" in f]
    assert answer["error"]["code"] == "invocation_failed" and "RuntimeError: boom" in answer["error"]["stacktrace"]
