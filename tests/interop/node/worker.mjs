// A scripted worker using only the official Node iii-sdk public API.
// Same command line and JSON-lines output as ../workers/py_worker.py.
import { registerWorker, TriggerAction } from "iii-sdk";

// Channel ends (an http request's request_body / response) are shown by their class.
const plain = (key, value) => (value && /^Channel(Reader|Writer)$/.test(value.constructor?.name) ? `<${value.constructor.name}>` : value);
const emit = (fields) => process.stdout.write(JSON.stringify(fields, plain) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const argv = process.argv.slice(2);
const name = argv.shift();
const fns = [];
const watch = [];
let calls = [];
let stay = false;
while (argv.length) {
  const flag = argv.shift();
  if (flag === "--fn") fns.push(argv.shift());
  else if (flag === "--watch") watch.push(argv.shift());
  else if (flag === "--calls") calls = JSON.parse(argv.shift());
  else if (flag === "--stay") stay = true;
  else throw new Error(`unknown flag ${flag}`);
}

function handlerFor(behavior, functionId) {
  switch (behavior) {
    case "add": return async (data) => ({ c: data.a + data.b });
    case "echo": return async (data) => data;
    case "fail": return async () => { throw new Error(`boom from ${functionId}`); };
    case "slow": return async (data) => {
      emit({ started: functionId });
      await sleep(1000 * ((data && data.seconds) || 30));
      return { slept: true };
    };
    case "meta": return async (data, metadata) => ({ data, metadata });
    default: throw new Error(`unknown behavior ${behavior}`);
  }
}

const worker = registerWorker(process.env.III_URL, { workerName: name });
const ids = [];
for (const spec of fns) {
  const [functionId, behavior] = spec.split("=");
  worker.registerFunction(functionId, handlerFor(behavior, functionId));
  ids.push(functionId);
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
