// A client of gantry.v1.InferenceService written from the .proto files alone (no Gantry
// code): it calls every RPC with the documented auth and prints one JSON document of what
// it saw. tests/test_serve_contract_node.py runs it against a real `python -m agent.serve`.
//
//   node client.mjs --address HOST:PORT --token-file FILE --protos DIR
//
// DIR holds gantry/v1/inference_service.proto and grpc/health/v1/health.proto.

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const { values: args } = parseArgs({
  options: {
    address: { type: "string" },
    "token-file": { type: "string" },
    protos: { type: "string" },
  },
});
if (!args.address || !args["token-file"] || !args.protos) {
  console.error("usage: node client.mjs --address HOST:PORT --token-file FILE --protos DIR");
  process.exit(2);
}

const definition = protoLoader.loadSync(
  ["gantry/v1/inference_service.proto", "grpc/health/v1/health.proto"],
  { includeDirs: [args.protos], keepCase: true, longs: Number, enums: String, defaults: true },
);
const proto = grpc.loadPackageDefinition(definition);
const credentials = grpc.credentials.createInsecure();
const inference = new proto.gantry.v1.InferenceService(args.address, credentials);
const health = new proto.grpc.health.v1.Health(args.address, credentials);

const token = readFileSync(args["token-file"], "utf8").trim();
function auth(value = `Bearer ${token}`) {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", value);
  return metadata;
}
const inSeconds = (s) => new Date(Date.now() + s * 1000);
const codeName = (code) => Object.keys(grpc.status).find((name) => grpc.status[name] === code);
const failure = (err) => ({ code: codeName(err.code), details: err.details });

function unary(client, method, request, metadata, seconds = 30) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: inSeconds(seconds) }, (err, reply) =>
      err ? reject(err) : resolve(reply),
    );
  });
}

async function refused(promise) {
  try {
    await promise;
  } catch (err) {
    return failure(err);
  }
  return { code: "OK" };
}

function generate(request, { cancelAfter = 0 } = {}) {
  return new Promise((resolve) => {
    const call = inference.Generate(request, auth(), { deadline: inSeconds(60) });
    const messages = [];
    call.on("data", (message) => {
      messages.push(message);
      if (cancelAfter && messages.length === cancelAfter) call.cancel();
    });
    call.on("error", (err) => resolve({ messages, ...failure(err) }));
    call.on("end", () => resolve({ messages, code: "OK" }));
  });
}

async function statsUntil(check, seconds) {
  const end = Date.now() + seconds * 1000;
  let stats = await unary(inference, "GetServerStats", {}, auth());
  while (!check(stats) && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 50));
    stats = await unary(inference, "GetServerStats", {}, auth());
  }
  return stats;
}

// Bytes that are no GenerateRequest (a field 1 whose length runs past the end).
function undecodable() {
  return new Promise((resolve) => {
    inference.makeUnaryRequest(
      "/gantry.v1.InferenceService/Complete",
      (raw) => raw,
      (raw) => raw,
      Buffer.from([0x0a, 0x7f, 0x01]),
      auth(),
      { deadline: inSeconds(10) },
      (err) => resolve(err ? failure(err) : { code: "OK" }),
    );
  });
}

const report = {};
const check = await unary(health, "Check", { service: "gantry.v1.InferenceService" }, new grpc.Metadata());
report.health = check.status;

const params = { max_tokens: 8, temperature: 0 };
const streamed = await generate({ prompt: "apple river", params });
const last = streamed.messages.at(-1);
report.generate = {
  code: streamed.code,
  messages: streamed.messages.length,
  text: streamed.messages.map((m) => m.text).join(""),
  token_ids: streamed.messages.flatMap((m) => m.token_ids),
  done: streamed.messages.map((m) => m.done),
  usage: last?.usage ?? null,
};

const whole = await unary(inference, "Complete", { prompt: "apple river", params }, auth());
report.complete = { text: whole.text, token_ids: whole.token_ids, usage: whole.usage };

const stats = await unary(inference, "GetServerStats", {}, auth());
report.stats = { model: stats.model, max_batch_size: stats.max_batch_size };

const long = { prompt: "stone", params: { max_tokens: 1000, ignore_eos: true } };
const cancelled = await generate(long, { cancelAfter: 2 });
const freed = await statsUntil((s) => s.running === 0, 10);
report.cancel = { code: cancelled.code, messages: cancelled.messages.length, running_after: freed.running };

// The deadline is a quarter of what the whole reply takes on this machine, so the server is
// still decoding when it passes, on a fast CPU as on a slow one.
const started = Date.now();
await unary(inference, "Complete", long, auth());
const wholeSeconds = (Date.now() - started) / 1000;
const late = await refused(unary(inference, "Complete", long, auth(), wholeSeconds / 4));
const freedAgain = await statsUntil((s) => s.running === 0, 10);
report.deadline = { ...late, running_after: freedAgain.running };

report.no_token = await refused(unary(inference, "GetServerStats", {}, new grpc.Metadata()));
report.lowercase_bearer = await refused(
  unary(inference, "GetServerStats", {}, auth(`bearer ${token}`)),
);
report.max_tokens_unset = await refused(unary(inference, "Complete", { prompt: "apple" }, auth()));
report.undecodable = await undecodable();

console.log(JSON.stringify(report));
inference.close();
health.close();
