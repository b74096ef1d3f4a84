// A scripted worker using only the official Node iii-sdk public API.
// Same command line and JSON-lines output as ../workers/py_worker.py.
import { registerWorker, TriggerAction } from "iii-sdk";
import { createStream } from "iii-sdk/helpers";
import { Logger } from "@iii-dev/helpers/observability";

// Channel ends (an http request's request_body / response) are shown by their class.
const plain = (key, value) => (value && /^Channel(Reader|Writer)$/.test(value.constructor?.name) ? `<${value.constructor.name}>` : value);
const emit = (fields) => process.stdout.write(JSON.stringify(fields, plain) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const argv = process.argv.slice(2);
const name = argv.shift();
const fns = [];
const watch = [];
const webhooks = [];
const binds = [];
const streams = [];
let calls = [];
let stay = false;
let metricsMs = null;
while (argv.length) {
  const flag = argv.shift();
  if (flag === "--fn") fns.push(argv.shift());
  else if (flag === "--watch") watch.push(argv.shift());
  else if (flag === "--calls") calls = JSON.parse(argv.shift());
  else if (flag === "--webhook") webhooks.push(argv.shift());
  else if (flag === "--bind") binds.push(argv.shift());
  else if (flag === "--stream") streams.push(argv.shift());
  else if (flag === "--stay") stay = true;
  else if (flag === "--metrics-ms") metricsMs = Number(argv.shift());
  else throw new Error(`unknown flag ${flag}`);
}

function handlerFor(behavior, functionId) {
  switch (behavior) {
    // Print each call (queue deliveries), then answer or fail.
    case "record": return async (data) => { emit({ received: functionId, data }); return data; };
    case "recordfail": return async (data) => { emit({ received: functionId, data }); throw new Error(`boom from ${functionId}`); };
    case "add": return async (data) => ({ c: data.a + data.b });
    case "echo": return async (data) => data;
    case "fail": return async () => { throw new Error(`boom from ${functionId}`); };
    case "slow": return async (data) => {
      emit({ started: functionId });
      await sleep(1000 * ((data && data.seconds) || 30));
      return { slept: true };
    };
    case "meta": return async (data, metadata) => ({ data, metadata });
    // An OpenTelemetry log (a LOGS frame), inside the handler's span.
    case "log": return async (data) => { new Logger().info(`log from ${functionId}`, { input: data }); return data; };
    // Calls data.target from inside this handler (its span is the parent).
    case "relay": return async (data) => worker.trigger({ function_id: data.target, payload: data.payload });
    default: throw new Error(`unknown behavior ${behavior}`);
  }
}

const worker = registerWorker(process.env.III_URL, {
  workerName: name,
  ...(metricsMs ? { otel: { metricsExportIntervalMs: metricsMs } } : {}),
});
const ids = [];
for (const spec of fns) {
  const [functionId, behavior] = spec.split("=");
  worker.registerFunction(functionId, handlerFor(behavior, functionId));
  ids.push(functionId);
}
// An in-memory stream backend keyed group::item.
function memoryStream() {
  const items = new Map();
  const key = (input) => `${input.group_id}::${input.item_id}`;
  return {
    get: async (input) => items.get(key(input)) ?? null,
    set: async (input) => {
      const old = items.get(key(input)) ?? null;
      items.set(key(input), input.data);
      return { old_value: old, new_value: input.data };
    },
    delete: async (input) => {
      const old = items.get(key(input)) ?? null;
      items.delete(key(input));
      return { old_value: old };
    },
    list: async (input) => [...items.entries()].filter(([k]) => k.startsWith(`${input.group_id}::`)).map(([, v]) => v),
    listGroups: async () => [...new Set([...items.keys()].map((k) => k.split("::")[0]))].sort(),
    update: async () => null,
  };
}
const refs = {};
for (const spec of webhooks) {
  const split = spec.indexOf("=");
  const functionId = spec.slice(0, split);
  refs[functionId] = worker.registerFunction(functionId, { url: spec.slice(split + 1) });
  ids.push(functionId);
}
for (const spec of binds) {
  const [functionId, triggerType, ...config] = spec.split("=");
  worker.registerTrigger({ type: triggerType, function_id: functionId, config: JSON.parse(config.join("=")) });
}
for (const streamName of streams) {
  createStream(worker, streamName, memoryStream());
  ids.push(`stream::list_groups(${streamName})`);
}
watch.forEach((spec, index) => {
  const split = spec.indexOf("=");  // TYPE or TYPE=JSON_CONFIG
  const triggerType = split < 0 ? spec : spec.slice(0, split);
  const config = split < 0 ? {} : JSON.parse(spec.slice(split + 1));
  const functionId = `${name}::on-${index}`;
  // An http request is answered {} (returning nothing would stream the response on its channel).
  worker.registerFunction(functionId, async (data) => {
    emit({ event: data, type: triggerType });
    return triggerType === "http" ? { status_code: 200, body: {} } : undefined;
  });
  worker.registerTrigger({ type: triggerType, function_id: functionId, config });
  ids.push(functionId);
});
// Ready = the engine lists this worker by name and every function it registered.
const deadline = Date.now() + 20000;
while (Date.now() < deadline) {
  const listed = await worker.trigger({
    function_id: "engine::functions::list", payload: { include_internal: true },
  });
  const have = new Set(listed.functions.map((f) => f.function_id));
  const { workers } = await worker.trigger({ function_id: "engine::workers::list", payload: {} });
  if (ids.every((id) => have.has(id)) && workers.some((w) => w.name === name)) break;
  await sleep(50);
}
emit({ ready: name });

for (const [index, request] of calls.entries()) {
  if (request.unregister) {
    refs[request.unregister].unregister();
    emit({ call: index, result: null });
    continue;
  }
  if (request.action === "void") request.action = TriggerAction.Void();
  else if (request.action) request.action = TriggerAction.Enqueue({ queue: request.action });
  try {
    emit({ call: index, result: (await worker.trigger(request)) ?? null });
  } catch (err) {
    emit({ call: index, error: { code: err.code ?? null, message: String(err.message), type: err.name } });
  }
}
if (stay) {
  process.stdin.resume();
  await new Promise((resolve) => process.stdin.on("end", resolve));
}
await worker.shutdown();
emit({ stopped: true });
process.exit(0);
