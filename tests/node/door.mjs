// Drives the gateway's OpenAI-compatible door with the official openai Node SDK.
// Usage: node door.mjs MODE BODY_JSON [ARG]; prints one JSON object on stdout.
// BASE_URL (…/v1) and API_KEY come from the environment.
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.BASE_URL,
  apiKey: process.env.API_KEY,
  maxRetries: 0,
});
const [mode, rawBody, arg] = process.argv.slice(2);
const body = JSON.parse(rawBody);

async function collect(stream, limit = Infinity) {
  const chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
    if (chunks.length >= limit) break;
  }
  return chunks;
}

function reattach(id, query) {
  return client.get(`/chat/completions/${id}/stream`, { query, stream: true });
}

let out;
if (mode === "stream") {
  const chunks = await collect(
    await client.chat.completions.create({
      ...body,
      stream: true,
      stream_options: { include_usage: true },
    }),
  );
  const retrieved = await client.chat.completions.retrieve(chunks[0].id);
  out = { chunks, retrieved };
} else if (mode === "create") {
  out = { completion: await client.chat.completions.create(body) };
} else if (mode === "reattach") {
  // A second client re-attaching to another's stream, from the start or after an id.
  out = { chunks: await collect(await reattach(arg, arg2query(process.argv[5]))) };
} else if (mode === "reset") {
  const chunks = [];
  try {
    for await (const chunk of await client.chat.completions.create({ ...body, stream: true })) {
      chunks.push(chunk);
    }
    out = { chunks, error: null };
  } catch (err) {
    out = { chunks, error: { name: err.constructor.name, body: err.error ?? null } };
  }
} else {
  throw new Error(`unknown mode ${mode}`);
}

function arg2query(after) {
  return after ? { starting_after: after } : {};
}

process.stdout.write(JSON.stringify(out) + "\n");
