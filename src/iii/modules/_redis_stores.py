"""The ``redis`` backends of ``iii-state`` and ``iii-stream``: JSON values in Redis hashes,
written by Lua scripts that also publish each write's change event, in the same atomic step.

Layout (the original's, so Python and Rust engines can share one Redis): a state value is field
``key`` of hash ``state:{scope}``, a stream item field ``item_id`` of hash
``stream:{stream_name}:{group_id}``; values are compact JSON text. Change events go out on
:data:`STATE_EVENTS` (``state::events``, ours: the original publishes none; the payload is the
``state`` trigger's) and :data:`STREAM_EVENTS` (``stream::events``, the original's channel and
JSON).

``update`` runs :data:`_UPDATE_SCRIPT`: the ops, prepared by
:func:`iii.modules.update_ops.prepare_ops` (what needs no value is checked in Python), are applied
in Lua to the stored document decoded by a small JSON reader of our own rather than Redis's
cjson: objects keep their key order, ``[]`` stays ``[]`` (cjson makes it ``{}``), numbers keep
their text unless an op changes them (cjson rounds to 14 digits), integer arithmetic is exact at
any size. The result is byte for byte what :func:`iii.modules.update_ops.apply_ops` and our JSON
encoder give (same values, same errors), up to the escaping of non-ASCII text.

Every call has a deadline (:data:`OP_DEADLINE_S`); a failure raises :class:`StoreUnavailable`
with a message that says what Redis answered, which the modules turn into their own error codes.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import ssl
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import hiredis
import msgspec
import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.exceptions import RedisError

from iii import codec
from iii.engine.host import EngineError
from iii.modules._redis import COMMAND_TIMEOUT_S, RedisUnavailable, connect

__all__ = [
    "OP_DEADLINE_S",
    "STATE_EVENTS",
    "STREAM_EVENTS",
    "RedisHashes",
    "StoreUnavailable",
    "UpdateOutcome",
    "all_update_errors",
    "failing_as",
    "glob_escape",
    "json_or_none",
    "then",
]

log = logging.getLogger("iii.redis")

#: The channel of state change events (the payload is the ``state`` trigger's).
STATE_EVENTS = "state::events"
#: The channel of stream change events (the original's: the stream event JSON).
STREAM_EVENTS = "stream::events"
#: The deadline of one operation, retries on a dropped connection included.
OP_DEADLINE_S = COMMAND_TIMEOUT_S
#: Keys asked per SCAN step.
_SCAN_COUNT = 500

# The change event of a write, built in Lua from a head the module encodes (scope and key, or
# stream, group, item and timestamp) and the old and new JSON texts.
_EVENT_LUA = r"""
local function change_event(mode, head, old, new)
  if mode == 'state' then
    local kind = 'updated'
    if not new then kind = 'deleted' elseif not old then kind = 'created' end
    return head .. '"event_type":"state:' .. kind .. '","old_value":' .. (old or 'null')
      .. ',"new_value":' .. (new or 'null') .. '}'
  end
  if not new then return head .. 'delete","data":' .. old .. '}}' end
  if old then return head .. 'update","data":' .. new .. '}}' end
  return head .. 'create","data":' .. new .. '}}'
end
"""

# KEYS[1] hash; ARGV: field, value, channel ('' = none), mode, event head. Returns the old text.
_SET_SCRIPT = _EVENT_LUA + r"""
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], change_event(ARGV[4], ARGV[5], old, ARGV[2])) end
return old
"""

# KEYS[1] hash; ARGV: field, channel, mode, event head. Returns the old text. A state delete
# has an event even when nothing was there (as the embedded store's), a stream delete only then.
_DELETE_SCRIPT = _EVENT_LUA + r"""
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then redis.call('HDEL', KEYS[1], ARGV[1]) end
if ARGV[2] ~= '' and (old or ARGV[3] == 'state') then
  redis.call('PUBLISH', ARGV[2], change_event(ARGV[3], ARGV[4], old, false))
end
return old
"""

# KEYS[1] hash; ARGV: field, prepared ops JSON, size limit ('' = none), channel, mode, head.
# Returns {'ok', old, new, errors JSON or ''}, {'too_large', size} or {'bad_json', message}.
_UPDATE_SCRIPT = _EVENT_LUA + r"""
local NULL, OBJ, ARR, NUM = {}, {}, {}, {}
local function new_obj() return setmetatable({keys = {}, map = {}}, OBJ) end
local function num(raw) return setmetatable({raw = raw}, NUM) end
local function obj_set(o, k, v)
  if o.map[k] == nil then o.keys[#o.keys + 1] = k end
  o.map[k] = v
end
local function obj_del(o, k)
  if o.map[k] == nil then return end
  o.map[k] = nil
  for i, key in ipairs(o.keys) do if key == k then table.remove(o.keys, i) break end end
end
local function type_name(v)  -- Python's names, as apply_ops reports them
  local t = type(v)
  if t == 'string' then return 'str' elseif t == 'boolean' then return 'bool' end
  local mt = getmetatable(v)
  if mt == OBJ then return 'dict' elseif mt == ARR then return 'list' end
  if mt == NUM then return (string.find(v.raw, '[.eE]') and 'float' or 'int') end
  return 'NoneType'
end

-- JSON reader: objects keep their key order, arrays stay arrays, numbers keep their text.
local function skip(s, i) local _, e = string.find(s, '^[ \n\r\t]*', i) return e + 1 end
local unescape = {['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t'}
local function utf8(cp)
  local f = math.floor
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then return string.char(0xC0 + f(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then return string.char(0xE0 + f(cp / 4096), 0x80 + f(cp / 64) % 64, 0x80 + cp % 64) end
  return string.char(0xF0 + f(cp / 262144), 0x80 + f(cp / 4096) % 64, 0x80 + f(cp / 64) % 64, 0x80 + cp % 64)
end
local function read_string(s, i)
  local parts, n = {}, 0
  i = i + 1
  while true do
    local j = string.find(s, '["\\]', i)
    if not j then error('unterminated string', 0) end
    if j > i then n = n + 1; parts[n] = string.sub(s, i, j - 1) end
    if string.sub(s, j, j) == '"' then return table.concat(parts), j + 1 end
    local e = string.sub(s, j + 1, j + 1)
    if e == 'u' then
      local cp = tonumber(string.sub(s, j + 2, j + 5), 16)
      if not cp then error('bad \\u escape at ' .. j, 0) end
      i = j + 6
      if cp >= 0xD800 and cp <= 0xDBFF and string.sub(s, i, i + 1) == '\\u' then
        local low = tonumber(string.sub(s, i + 2, i + 5), 16)
        if low and low >= 0xDC00 and low <= 0xDFFF then
          cp = 0x10000 + (cp - 0xD800) * 1024 + (low - 0xDC00)
          i = i + 6
        end
      end
      n = n + 1; parts[n] = utf8(cp)
    else
      local c = unescape[e]
      if not c then error('bad escape at ' .. j, 0) end
      n = n + 1; parts[n] = c
      i = j + 2
    end
  end
end
local read_value
read_value = function(s, i)
  i = skip(s, i)
  local c = string.sub(s, i, i)
  if c == '{' then
    local o = new_obj()
    i = skip(s, i + 1)
    if string.sub(s, i, i) == '}' then return o, i + 1 end
    while true do
      if string.sub(s, i, i) ~= '"' then error('expected a key at ' .. i, 0) end
      local k, v
      k, i = read_string(s, i)
      i = skip(s, i)
      if string.sub(s, i, i) ~= ':' then error("expected ':' at " .. i, 0) end
      v, i = read_value(s, i + 1)
      obj_set(o, k, v)
      i = skip(s, i)
      c = string.sub(s, i, i)
      if c == '}' then return o, i + 1 end
      if c ~= ',' then error("expected ',' or '}' at " .. i, 0) end
      i = skip(s, i + 1)
    end
  elseif c == '[' then
    local a = setmetatable({n = 0}, ARR)
    i = skip(s, i + 1)
    if string.sub(s, i, i) == ']' then return a, i + 1 end
    while true do
      local v
      v, i = read_value(s, i)
      a.n = a.n + 1; a[a.n] = v
      i = skip(s, i)
      c = string.sub(s, i, i)
      if c == ']' then return a, i + 1 end
      if c ~= ',' then error("expected ',' or ']' at " .. i, 0) end
      i = i + 1
    end
  elseif c == '"' then return read_string(s, i)
  elseif string.sub(s, i, i + 3) == 'true' then return true, i + 4
  elseif string.sub(s, i, i + 4) == 'false' then return false, i + 5
  elseif string.sub(s, i, i + 3) == 'null' then return NULL, i + 4
  end
  local _, e = string.find(s, '^-?%d+%.?%d*[eE]?[-+]?%d*', i)
  if not e then error('unexpected character at ' .. i, 0) end
  return num(string.sub(s, i, e)), e + 1
end
local function decode(s)
  local v, i = read_value(s, 1)
  if skip(s, i) <= #s then error('trailing characters at ' .. i, 0) end
  return v
end

-- JSON writer: compact, as the engine's encoder writes.
local escape = {['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t', ['\b'] = '\\b', ['\f'] = '\\f'}
local function quote(s)
  return '"' .. string.gsub(s, '[%z\1-\31"\\]', function(c)
    return escape[c] or string.format('\\u%04x', string.byte(c))
  end) .. '"'
end
local function write(v, out)
  local t = type(v)
  if t == 'string' then out[#out + 1] = quote(v) return end
  if t == 'boolean' then out[#out + 1] = v and 'true' or 'false' return end
  local mt = getmetatable(v)
  if mt == NUM then out[#out + 1] = v.raw
  elseif mt == OBJ then
    out[#out + 1] = '{'
    for idx, k in ipairs(v.keys) do
      if idx > 1 then out[#out + 1] = ',' end
      out[#out + 1] = quote(k) .. ':'
      write(v.map[k], out)
    end
    out[#out + 1] = '}'
  elseif mt == ARR then
    out[#out + 1] = '['
    for idx = 1, v.n do
      if idx > 1 then out[#out + 1] = ',' end
      write(v[idx], out)
    end
    out[#out + 1] = ']'
  else out[#out + 1] = 'null' end
end
local function encode(v) local out = {} write(v, out) return table.concat(out) end

-- Numbers: integers exactly at any size (decimal strings), floats as Python's repr.
local function digits_cmp(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end
local function digits_add(a, b)
  local out, carry, i, j = {}, 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local d = carry + (i > 0 and tonumber(string.sub(a, i, i)) or 0) + (j > 0 and tonumber(string.sub(b, j, j)) or 0)
    out[#out + 1] = d % 10
    carry = math.floor(d / 10)
    i, j = i - 1, j - 1
  end
  return string.reverse(table.concat(out))
end
local function digits_sub(a, b)  -- a >= b
  local out, borrow, i, j = {}, 0, #a, #b
  while i > 0 do
    local d = tonumber(string.sub(a, i, i)) - borrow - (j > 0 and tonumber(string.sub(b, j, j)) or 0)
    if d < 0 then d, borrow = d + 10, 1 else borrow = 0 end
    out[#out + 1] = d
    i, j = i - 1, j - 1
  end
  local s = string.gsub(string.reverse(table.concat(out)), '^0+', '')
  return s == '' and '0' or s
end
local function int_add(a, b)
  local na, nb = string.sub(a, 1, 1) == '-', string.sub(b, 1, 1) == '-'
  local da, db = na and string.sub(a, 2) or a, nb and string.sub(b, 2) or b
  if na == nb then
    local s = digits_add(da, db)
    return (na and s ~= '0') and ('-' .. s) or s
  end
  local c = digits_cmp(da, db)
  if c == 0 then return '0' end
  if c > 0 then local s = digits_sub(da, db) return na and ('-' .. s) or s end
  local s = digits_sub(db, da)
  return nb and ('-' .. s) or s
end
local function float_text(x)  -- the shortest text that reads back as x, as our encoder writes it
  if x ~= x or x == math.huge or x == -math.huge then return 'null' end
  local text
  for p = 0, 16 do
    text = string.format('%.' .. p .. 'e', x)
    if tonumber(text) == x then break end
  end
  local sign, first, rest, exponent = string.match(text, '^(-?)(%d)%.?(%d*)e([-+]%d+)$')
  local digits = string.gsub(first .. rest, '0+$', '')
  if digits == '' then digits = '0' end
  local e = tonumber(exponent)
  if e < -5 or e >= 16 then
    return sign .. string.sub(digits, 1, 1) .. (#digits > 1 and ('.' .. string.sub(digits, 2)) or '') .. 'e' .. e
  end
  if e < 0 then return sign .. '0.' .. string.rep('0', -e - 1) .. digits end
  if #digits <= e + 1 then return sign .. digits .. string.rep('0', e + 1 - #digits) .. '.0' end
  return sign .. string.sub(digits, 1, e + 1) .. '.' .. string.sub(digits, e + 2)
end
local function add(current, by, kind)
  if getmetatable(current) ~= NUM then
    error({kind .. '.not_number', kind .. ' needs a number, found ' .. type_name(current)}, 0)
  end
  if string.find(current.raw, '[.eE]') then return num(float_text(tonumber(current.raw) + tonumber(by.raw))) end
  return num(int_add(current.raw, by.raw))
end

-- The ops (prepared by update_ops.prepare_ops; errors as apply_ops reports them).
local function object_root(root, kind)
  if getmetatable(root) ~= OBJ then error({kind .. '.target_not_object', kind .. ' with a path needs an object value'}, 0) end
end
local function post(m) if m.post then error({m.post.map.code, m.post.map.message}, 0) end end
local function walk(node, segments, count, kind)
  for i = 1, count do
    local segment = segments[i]
    local child = node.map[segment]
    if child == nil or child == NULL then
      child = new_obj()
      obj_set(node, segment, child)
    end
    if getmetatable(child) ~= OBJ then error({kind .. '.target_not_object', '`' .. segment .. '` is not an object'}, 0) end
    node = child
  end
  return node
end
local function append(current, item, missing)
  if missing or current == NULL then
    if type(item) == 'string' then return item end
    return setmetatable({n = 1, item}, ARR)
  end
  if getmetatable(current) == ARR then
    current.n = current.n + 1
    current[current.n] = item
    return current
  end
  if type(current) == 'string' and type(item) == 'string' then return current .. item end
  error({'append.type_mismatch', 'append needs an array, or a string and a string value'}, 0)
end
local function apply(root, op)
  local m = op.map
  local kind = m.type
  if kind == 'set' then
    if m.root then return m.value end
    object_root(root, kind) post(m)
    obj_set(root, m.key, m.value)
  elseif kind == 'increment' or kind == 'decrement' then
    if m.root then return add(root, m.by, kind) end
    object_root(root, kind) post(m)
    local current = root.map[m.key]
    obj_set(root, m.key, current == nil and m.by or add(current, m.by, kind))
  elseif kind == 'remove' then
    if m.root then return NULL end
    object_root(root, kind) post(m)
    obj_del(root, m.key)
  elseif kind == 'merge' then
    object_root(root, kind) post(m)
    local target = walk(root, m.segments, m.segments.n, kind)
    for _, k in ipairs(m.value.keys) do obj_set(target, k, m.value.map[k]) end
  elseif kind == 'append' then
    local segments = m.segments
    if segments.n == 0 then return append(root, m.value, false) end
    object_root(root, kind)
    local parent = walk(root, segments, segments.n - 1, kind)
    local last = segments[segments.n]
    local current = parent.map[last]
    obj_set(parent, last, append(current, m.value, current == nil))
  end
  return root
end

local old = redis.call('HGET', KEYS[1], ARGV[1])
local doc = NULL
if old then
  local ok, value = pcall(decode, old)
  if not ok then return {'bad_json', 'failed to decode existing JSON: ' .. tostring(value)} end
  doc = value
end
if doc == NULL then doc = new_obj() end
local ops = decode(ARGV[2])
local errors = {}
for i = 1, ops.n do
  local ok, result = pcall(apply, doc, ops[i])
  if ok then doc = result
  elseif type(result) == 'table' then
    errors[#errors + 1] = '{"op_index":' .. (i - 1) .. ',"code":' .. quote(result[1]) .. ',"message":' .. quote(result[2]) .. '}'
  else error(result, 0) end
end
local new = encode(doc)
local limit = tonumber(ARGV[3])
if limit and #new > limit then return {'too_large', tostring(#new)} end
redis.call('HSET', KEYS[1], ARGV[1], new)
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], change_event(ARGV[5], ARGV[6], old, new)) end
return {'ok', old, new, #errors > 0 and ('[' .. table.concat(errors, ',') .. ']') or ''}
"""


class StoreUnavailable(Exception):
    """A Redis operation failed or missed its deadline; the message says how."""


class UpdateOutcome(msgspec.Struct):
    """What an update did: the old JSON (``None``: absent), the new one, the errors' JSON
    (``None``: none), or ``too_large`` (the size of what would have been stored; nothing was)."""

    old: Optional[bytes] = None
    new: bytes = b"null"
    errors: Optional[bytes] = None
    too_large: Optional[int] = None


@contextmanager
def failing_as(code: str, doing: str) -> Iterator[None]:
    """A Redis failure inside is the module's error ``code``: ``"<doing>: <what Redis said>"``."""
    try:
        yield
    except StoreUnavailable as error:
        raise EngineError(code, f"{doing}: {error}") from None


def json_or_none(raw: Optional[bytes]) -> Optional[bytes]:
    """``raw`` if it is JSON; a stored text that is not (written by someone else) reads as absent."""
    if raw is None:
        return None
    try:
        msgspec.json.decode(raw, type=msgspec.Raw)
    except msgspec.DecodeError:
        return None
    return raw


def then(future: asyncio.Future, finish: Callable[[Any], Any], code: Optional[str] = None, doing: str = "") -> asyncio.Future:
    """A future of ``finish(reply)``; with ``code``, a :class:`StoreUnavailable` becomes the
    module's ``EngineError(code, "<doing>: <what Redis said>")``."""
    result = asyncio.get_running_loop().create_future()

    def done(reply: asyncio.Future) -> None:
        if result.done():
            return
        error = reply.exception()
        if error is not None:
            if code is not None and isinstance(error, StoreUnavailable):
                error = EngineError(code, f"{doing}: {error}")
            result.set_exception(error)
            return
        try:
            result.set_result(finish(reply.result()))
        except Exception as exc:  # e.g. the EngineError of a reply that is not JSON
            result.set_exception(exc)

    future.add_done_callback(done)
    return result


def all_update_errors(checked: list[Any], outcome: UpdateOutcome) -> list[Any]:
    """An update's errors: those ``prepare_ops`` found before the script ran and the script's
    own, in op order."""
    if outcome.errors is None:
        return checked
    return sorted(checked + codec.decode_json(outcome.errors), key=lambda error: error["op_index"])


def _update_outcome(reply: list[Any]) -> UpdateOutcome:
    status = reply[0]
    if status == b"too_large":
        return UpdateOutcome(too_large=int(reply[1]))
    if status != b"ok":
        raise StoreUnavailable(f"Redis atomic update script failed: {reply[1].decode(errors='replace')}")
    return UpdateOutcome(reply[1], reply[2], reply[3] or None)


def glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis ``MATCH`` pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


class _Replies(asyncio.Protocol):
    """One connection to Redis: commands go out in order and their replies come back in that
    order (RESP), parsed by hiredis, each to the future waiting for it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.transport: Optional[asyncio.Transport] = None
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self._reader = hiredis.Reader()
        self._loop = asyncio.get_running_loop()
        #: Loop time of the last reply, and of the last send to an idle connection: Redis has
        #: been silent since the later of the two while commands wait.
        self.last_reply = self.busy_since = self._loop.time()
        #: Checks that Redis keeps answering while commands wait (``None``: not armed).
        self.watchdog: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader, waiting = self._reader, self.waiting
        reader.feed(data)
        self.last_reply = self._loop.time()
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if not waiting:  # nothing asked for it: the stream is out of step, start afresh
                log.warning("redis: %s sent a reply nobody asked for; dropping the connection", self.url)
                self.transport.abort()  # type: ignore[union-attr]
                return
            answer = waiting.popleft()
            if answer.done():  # failed already (the connection was given up on)
                continue
            if isinstance(reply, hiredis.ReplyError):
                answer.set_exception(StoreUnavailable(f"Redis at {self.url}: {reply}"))
            else:
                answer.set_result(reply)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.transport = None
        error = StoreUnavailable(f"Redis at {self.url}: connection lost ({exc or 'closed by the server'})")
        while self.waiting:
            answer = self.waiting.popleft()
            if not answer.done():
                answer.set_exception(error)

    def send(self, packed: list[bytes], answers: list[asyncio.Future]) -> None:
        if not self.waiting:
            self.busy_since = self._loop.time()
        self.waiting.extend(answers)
        self.transport.writelines(packed)  # type: ignore[union-attr]


class RedisHashes:
    """JSON values in Redis hashes, every write atomic with its change event.

    The operations share one connection, pipelined: what is asked in one turn of the event loop
    goes out in one write, replies are matched in order. (redis-py spends ~100 µs of CPU per
    single command; its client still serves start-up, SCAN and script loading.) A lost
    connection fails what waits on it and is opened again by the next operation. The deadline is
    :data:`OP_DEADLINE_S`: once Redis has been silent that long while operations wait, they fail
    and the connection, now suspect, is dropped.

    Args:
        url: ``redis://…`` of the server.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Optional[aioredis.Redis] = None
        self._connection: Optional[_Replies] = None
        self._connecting: Optional[asyncio.Task] = None
        #: What waits for the next write: packed commands and their futures.
        self._packed: list[bytes] = []
        self._answers: list[asyncio.Future] = []

    async def open(self) -> None:
        """Connect (the PING must answer within the connect timeout) and load the scripts.

        Raises:
            RedisUnavailable: it did not.
        """
        self._client = await connect(self.url)
        try:
            await self._load_scripts()
            await self._connect()
        except (RedisError, OSError, StoreUnavailable) as error:
            await self.close()
            raise RedisUnavailable(f"Failed to connect to Redis at {self.url}: {error}") from None

    async def _load_scripts(self) -> None:
        for script in _SCRIPTS:
            await self.client.script_load(script)

    async def _connect(self) -> None:
        """Open the pipelined connection (TLS, password and database as the URL says)."""
        options = parse_url(self.url)
        loop = asyncio.get_running_loop()
        protocol = _Replies(self.url)
        async with asyncio.timeout(OP_DEADLINE_S):
            if "path" in options:
                await loop.create_unix_connection(lambda: protocol, options["path"])
            else:
                tls = ssl.create_default_context() if options.get("connection_class") is aioredis.SSLConnection else None
                await loop.create_connection(lambda: protocol, options.get("host", "localhost"), options.get("port", 6379), ssl=tls)
            handshake = []
            if options.get("password"):
                handshake.append(("AUTH", options["username"], options["password"]) if options.get("username") else ("AUTH", options["password"]))
            if options.get("db"):
                handshake.append(("SELECT", options["db"]))
            answers = [loop.create_future() for _ in handshake]
            if handshake:
                protocol.send([hiredis.pack_command(command) for command in handshake], answers)
                for answer in answers:
                    await answer
        self._connection = protocol

    async def close(self) -> None:
        """Close the connections; what still waits fails."""
        if self._connecting is not None:
            self._connecting.cancel()
        closed = StoreUnavailable("the Redis store is closed")
        answers, self._packed, self._answers = self._answers, [], []
        connection, self._connection = self._connection, None
        if connection is not None:
            answers.extend(connection.waiting)
            connection.waiting.clear()
            if connection.watchdog is not None:
                connection.watchdog.cancel()
            if connection.transport is not None:
                connection.transport.close()
        for answer in answers:
            if not answer.done():
                answer.set_exception(closed)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreUnavailable("the Redis store is not open")
        return self._client

    def _command(self, *command: Any) -> asyncio.Future:
        """Queue ``command`` for this turn's write; the future gets its reply, or
        :class:`StoreUnavailable`."""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        if not self._answers:
            loop.call_soon(self._flush)
        self._packed.append(hiredis.pack_command(command))
        self._answers.append(answer)
        return answer

    def _flush(self) -> None:
        packed, answers = self._packed, self._answers
        if not answers:
            return
        connection = self._connection
        if self._client is None:  # closed (or never opened)
            self._packed, self._answers = [], []
            for answer in answers:
                if not answer.done():
                    answer.set_exception(StoreUnavailable("the Redis store is closed"))
            return
        if connection is None or connection.transport is None or connection.transport.is_closing():
            if self._connecting is None:  # they wait for the connection (the next flush sends them)
                self._connecting = asyncio.ensure_future(self._reconnect())
            return
        self._packed, self._answers = [], []
        connection.send(packed, answers)
        if connection.watchdog is None:
            connection.watchdog = asyncio.get_running_loop().call_later(OP_DEADLINE_S / 4, self._watch, connection)

    async def _reconnect(self) -> None:
        try:
            await self._connect()
        except (OSError, TimeoutError, StoreUnavailable) as error:
            failure = StoreUnavailable(f"Redis at {self.url}: {error or 'no answer'}")
            answers, self._packed, self._answers = self._answers, [], []
            for answer in answers:
                if not answer.done():
                    answer.set_exception(failure)
        finally:
            self._connecting = None
        self._flush()

    def _watch(self, connection: _Replies) -> None:
        """While operations wait: fail them all and drop the connection once Redis has been
        silent for the deadline (its replies can no longer be trusted to come)."""
        connection.watchdog = None
        if not connection.waiting or connection.transport is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - max(connection.last_reply, connection.busy_since) < OP_DEADLINE_S:
            connection.watchdog = loop.call_later(OP_DEADLINE_S / 4, self._watch, connection)
            return
        error = StoreUnavailable(f"Redis at {self.url} did not answer within {OP_DEADLINE_S:g}s")
        log.warning("redis: no answer from %s within %gs; dropping the connection", self.url, OP_DEADLINE_S)
        while connection.waiting:
            answer = connection.waiting.popleft()
            if not answer.done():
                answer.set_exception(error)
        connection.transport.abort()

    def _script(self, index: int, *args: Any) -> asyncio.Future:
        """``EVALSHA`` of script ``index``; once more after loading it if Redis forgot it."""
        result = asyncio.get_running_loop().create_future()
        command = ("EVALSHA", _SHAS[index], 1, *args)

        def copy(reply: asyncio.Future) -> None:
            if result.done():
                return
            error = reply.exception()
            if error is not None:
                result.set_exception(error)
            else:
                result.set_result(reply.result())

        def first(reply: asyncio.Future) -> None:
            error = reply.exception()
            if error is not None and "NOSCRIPT" in str(error):  # Redis restarted
                retry = asyncio.ensure_future(self._load_and_run(command))
                retry.add_done_callback(copy)
                return
            copy(reply)

        self._command(*command).add_done_callback(first)
        return result

    async def _load_and_run(self, command: tuple[Any, ...]) -> Any:
        try:
            async with asyncio.timeout(OP_DEADLINE_S):
                await self._load_scripts()
        except (RedisError, OSError, TimeoutError) as error:
            raise StoreUnavailable(f"Redis at {self.url}: {error or 'no answer'}") from None
        return await self._command(*command)

    # Each operation returns a future of its reply (or of StoreUnavailable): no task per call.

    def get(self, key: str, field: str) -> asyncio.Future:
        """The field's text, or ``None``."""
        return self._command("HGET", key, field)

    def items(self, key: str) -> asyncio.Future:
        """``{field: text}`` of the hash."""
        return then(self._command("HGETALL", key), _pairs)

    def set(self, key: str, field: str, value: bytes, channel: str, mode: str, head: bytes) -> asyncio.Future:
        """Store ``value``; the old text (or ``None``). The event goes to ``channel`` (``""``: none)."""
        return self._script(0, key, field, value, channel, mode, head)

    def delete(self, key: str, field: str, channel: str, mode: str, head: bytes) -> asyncio.Future:
        """Delete the field; the old text (or ``None``)."""
        return self._script(1, key, field, channel, mode, head)

    def update(
        self, key: str, field: str, ops: list[Any], limit: Optional[int], channel: str, mode: str, head: bytes
    ) -> asyncio.Future:
        """Apply prepared ops (:func:`iii.modules.update_ops.prepare_ops`) where the value is: an
        :class:`UpdateOutcome`."""
        reply = self._script(
            2, key, field, codec.encode_json(ops), "" if limit is None else str(limit), channel, mode, head
        )
        return then(reply, _update_outcome)

    def publish(self, channel: str, payload: bytes) -> asyncio.Future:
        return self._command("PUBLISH", channel, payload)

    async def scan(self, pattern: str) -> list[str]:
        """Every key matching ``pattern`` (SCAN, never the blocking KEYS)."""

        async def collect() -> list[str]:
            return [key.decode(errors="replace") async for key in self.client.scan_iter(match=pattern, count=_SCAN_COUNT)]

        try:
            async with asyncio.timeout(OP_DEADLINE_S):
                return await collect()
        except TimeoutError:
            raise StoreUnavailable(f"Redis at {self.url} did not answer within {OP_DEADLINE_S:g}s") from None
        except (RedisError, OSError) as error:
            raise StoreUnavailable(f"Redis at {self.url}: {error}") from None


_SCRIPTS = (_SET_SCRIPT, _DELETE_SCRIPT, _UPDATE_SCRIPT)
_SHAS = tuple(hashlib.sha1(script.encode()).hexdigest() for script in _SCRIPTS)


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2]))
