// A scripted channel worker using only the official Node iii-sdk public API.
// Same roles and JSON-lines output as ../workers/channel_worker.py (serve, send, coordinate).
import { registerWorker } from "iii-sdk";
import { createChannel } from "iii-sdk/helpers";

const emit = (fields) => process.stdout.write(JSON.stringify(fields) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const RECORDS = [{ name: "cpu", value: 12 }, { name: "mem", value: 2048 }, { name: "disk", value: 300 },
  { name: "net", value: 107 }, { name: "gpu", value: 100 }];
const SENTENCE = Buffer.from("The quick brown fox jumps over the lazy dog and keeps running through the far");

const [name, role, target] = process.argv.slice(2);
const worker = registerWorker(process.env.III_URL, { workerName: name });

function serve() {
  worker.registerFunction(`${name}::process`, async (data) => {
    const records = JSON.parse((await data.reader.readAll()).toString());
    const values = records.map((r) => r.value);
    const sum = values.reduce((a, b) => a + b, 0);
    return { label: data.label, messages: records.length, count: values.length, sum,
      average: sum / values.length, min: Math.min(...values), max: Math.max(...values) };
  });
  worker.registerFunction(`${name}::words`, async (data) => {
    const chunks = [];
    for await (const chunk of data.reader.stream) {
      chunks.push(chunk);
      data.writer.sendMessage(JSON.stringify({ type: "progress", chunks_received: chunks.length }));
    }
    const text = Buffer.concat(chunks).toString();
    const words = text.split(/\s+/).filter(Boolean);
    data.writer.sendMessage(JSON.stringify({ type: "complete", word_count: words.length, byte_count: text.length }));
    await new Promise((resolve) => data.writer.stream.end(Buffer.from(JSON.stringify({ words: words.slice(0, 5), total: words.length })), resolve));
    return { status: "done" };
  });
  return [`${name}::process`, `${name}::words`];
}

function http() {
  const control = (res, status, headers) => {
    res.sendMessage(JSON.stringify({ type: "set_status", status_code: status }));
    res.sendMessage(JSON.stringify({ type: "set_headers", headers }));
  };
  const write = (stream, chunk) => new Promise((resolve) => { if (stream.write(chunk)) resolve(); else stream.once("drain", resolve); });
  const end = (stream) => new Promise((resolve) => stream.end(resolve));
  const routes = {
    raw: ["POST", "raw", async (req) => {
      const body = await req.request_body.readAll();
      const contentType = req.headers["content-type"] || "";
      const answer = { raw_body: body.toString("latin1"), body_size: body.length, body: req.body, content_type: contentType, method: req.method };
      if (contentType.includes("application/x-www-form-urlencoded")) answer.form = Object.fromEntries(new URLSearchParams(body.toString()));
      if (contentType.includes("application/json")) answer.parsed_body = JSON.parse(body.toString());
      return { status_code: 200, body: answer };
    }],
    sse: ["GET", "sse", async (req) => {
      control(req.response, 200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
      for (let index = 0; index < 4; index++) {
        const data = index === 2 ? "line one\nline two" : `event ${index}`;
        const block = `id: ${index}\nevent: tick\n` + data.split("\n").map((line) => `data: ${line}\n`).join("") + "\n";
        await write(req.response.stream, Buffer.from(block));
        await sleep(50);
      }
      await end(req.response.stream);
      return null;
    }],
    download: ["GET", "download/:size", async (req) => {
      const size = Number(req.path_params.size);
      control(req.response, 200, { "content-type": "application/octet-stream" });
      const block = Buffer.alloc(256 * 1024);
      for (let i = 0; i < block.length; i++) block[i] = i % 256;
      for (let sent = 0; sent < size; sent += block.length) await write(req.response.stream, block.subarray(0, Math.min(block.length, size - sent)));
      await end(req.response.stream);
      return null;
    }],
    upload: ["POST", "upload", async (req) => {
      control(req.response, 201, { "content-type": "application/json" });
      const { createHash } = await import("node:crypto");
      const digest = createHash("sha256");
      let size = 0;
      for await (const chunk of req.request_body.stream) { digest.update(chunk); size += chunk.length; }
      await end(req.response.stream, req.response.stream.write(Buffer.from(JSON.stringify({ received_size: size, sha256: digest.digest("hex") }))));
      return null;
    }],
  };
  const ids = [];
  for (const [route, [method, path, handler]] of Object.entries(routes)) {
    const id = `${name}::${route}`;
    worker.registerFunction(id, handler);
    worker.registerTrigger({ type: "http", function_id: id, config: { api_path: `${name}/${path}`, http_method: method } });
    ids.push(id);
  }
  return ids;
}

async function send() {
  const channel = await createChannel(worker);
  channel.writer.stream.end(Buffer.from(JSON.stringify(RECORDS)));
  return worker.trigger({ function_id: target, payload: { label: "metrics-batch", reader: channel.readerRef } });
}

async function coordinate() {
  const source = await createChannel(worker);
  const results = await createChannel(worker);
  const messages = [];
  results.reader.onMessage((text) => messages.push(JSON.parse(text)));
  const reading = results.reader.readAll();  // Node reads concurrently, as its suite does
  for (let start = 0; start < SENTENCE.length; start += 10) source.writer.stream.write(SENTENCE.subarray(start, start + 10));
  source.writer.stream.end();
  const outcome = await worker.trigger({ function_id: target, payload: { reader: source.readerRef, writer: results.writerRef } });
  const binary = JSON.parse((await reading).toString());
  return { result: outcome, messages, binary };
}

async function main() {
  if (role === "send" || role === "coordinate") {
    try {
      emit({ result: await (role === "send" ? send() : coordinate()) });
    } catch (err) {
      emit({ error: String(err && err.message ? err.message : err) });
    }
  } else {
    const ids = role === "http" ? http() : serve();
    const deadline = Date.now() + 20000;
    while (Date.now() < deadline) {
      const listed = await worker.trigger({ function_id: "engine::functions::list", payload: {} });
      const have = new Set(listed.functions.map((f) => f.function_id));
      const triggers = role === "http" ? (await worker.trigger({ function_id: "engine::triggers::list", payload: {} })).triggers : [];
      const bound = new Set(triggers.map((t) => t.function_id));
      if (ids.every((id) => have.has(id) && (role !== "http" || bound.has(id)))) break;
      await sleep(50);
    }
    emit({ ready: true });
    await new Promise((resolve) => { process.stdin.on("end", resolve); process.stdin.resume(); });
  }
  await worker.shutdown();
  emit({ stopped: true });
  process.exit(0);
}

main();
