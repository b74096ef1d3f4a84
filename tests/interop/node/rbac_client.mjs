// An RBAC listener's client on the official Node iii-sdk, scripted by steps.
// Same command line and JSON-lines output as ../workers/rbac_client.py.
import { registerWorker } from "iii-sdk";

const emit = (fields) => process.stdout.write(JSON.stringify(fields) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const [name, token, stepsJson] = process.argv.slice(2);
const steps = JSON.parse(stepsJson);
const worker = registerWorker(process.env.III_URL, {
  workerName: name,
  otel: { enabled: false },
  headers: token ? { "x-test-token": token } : {},
});
const noop = { registerTrigger: async () => {}, unregisterTrigger: async () => {} };
const registered = new Map();

for (const [index, step] of steps.entries()) {
  try {
    let result = null;
    if ("call" in step) {
      result = (await worker.trigger({ function_id: step.call, payload: step.payload ?? {} })) ?? null;
    } else if ("function" in step) {
      const handler = step.behavior === "logger"
        ? async (data) => {
          await worker.trigger({ function_id: "engine::log::info", payload: { message: "carve-out", data: { input: data } } });
          return { logged: true, echoed: data };
        }
        : async (data) => ({ echoed: data });
      registered.set(step.function, worker.registerFunction(step.function, handler));
    } else if ("unregister" in step) {
      registered.get(step.unregister).unregister();
    } else if ("trigger_type" in step) {
      worker.registerTriggerType({ id: step.trigger_type, description: step.description }, noop);
    } else if ("trigger" in step) {
      worker.registerTrigger({ type: step.trigger, function_id: step.function_id, config: step.config });
    } else {
      await sleep(1000 * step.sleep);
    }
    emit({ step: index, result });
  } catch (err) {
    emit({ step: index, error: { type: err.name, code: err.code ?? null, function_id: err.function_id ?? null, message: String(err.message) } });
  }
}
process.stdin.resume();
await new Promise((resolve) => process.stdin.on("end", resolve));
await worker.shutdown();
emit({ stopped: true });
process.exit(0);
