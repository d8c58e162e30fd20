// Runs a generated Cloudflare Worker's fetch handler under Node with a mocked upstream fetch.
// Usage: node worker_harness.mjs WORKER.mjs  -> prints one JSON object with what happened.
import { pathToFileURL } from "node:url";

const worker = (await import(pathToFileURL(process.argv[2]).href)).default;
const env = { MFK_MODAL_KEY: "wk-key", MFK_MODAL_SECRET: "ws-secret", MFK_EDGE_SECRET: "edge" };
const calls = [];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

globalThis.fetch = async (url, init) => {
  const body = init.body === null || init.body === undefined
    ? null
    : await new Response(init.body).text(); // reading it runs the worker's size check
  calls.push({ url, method: init.method, redirect: init.redirect, body,
               headers: Object.fromEntries(new Headers(init.headers)) });
  const path = new URL(url).pathname;
  if (path === "/stream") {
    const stream = new ReadableStream({
      async start(controller) {
        for (let i = 0; i < 3; i++) {
          controller.enqueue(new TextEncoder().encode(`data: ${i}\n\n`));
          await sleep(300);
        }
        controller.close();
      },
    });
    return new Response(stream, { headers: { "content-type": "text/event-stream" } });
  }
  if (path === "/redirect") {
    return new Response(null, {
      status: 303,
      headers: { location: `${globalThis.ORIGIN_FOR_TEST}/__result?id=7` },
    });
  }
  return new Response("{}", { headers: { "content-type": "application/json" } });
};

async function run(name, request) {
  const before = calls.length;
  const started = Date.now();
  const response = await worker.fetch(request, env);
  const arrivals = [];
  let text = "";
  if (response.body) {
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      arrivals.push(Date.now() - started);
      text += new TextDecoder().decode(value);
    }
  }
  return {
    name,
    status: response.status,
    headers: Object.fromEntries(response.headers),
    text,
    arrivals,
    upstream: calls.slice(before),
  };
}

globalThis.ORIGIN_FOR_TEST = process.argv[3];
const big = "x".repeat(Number(process.argv[4]) + 1);
const chunked = new ReadableStream({
  start(controller) {
    controller.enqueue(new TextEncoder().encode(big));
    controller.close();
  },
});
const results = [
  await run("spoof", new Request("https://api.example.com/whoami?x=1", {
    headers: {
      "modal-key": "wk-evil", "modal-secret": "ws-evil", "x-mfk-edge-secret": "evil",
      "x-forwarded-host": "evil.example", "x-forwarded-proto": "http",
      "x-forwarded-for": "203.0.113.66", "forwarded": "for=203.0.113.66",
      "x-real-ip": "203.0.113.66", "cf-connecting-ip": "198.51.100.7", "accept": "text/plain",
      "modal-session-id": "s-42",
    },
  })),
  await run("post", new Request("https://api.example.com/embed", {
    method: "POST", body: '{"text":"hi"}', headers: { "content-type": "application/json" },
  })),
  await run("too-large", new Request("https://api.example.com/embed", {
    method: "POST", body: big,
  })),
  await run("too-large-chunked", new Request("https://api.example.com/embed", {
    method: "POST", body: chunked, duplex: "half",
  })),
  await run("stream", new Request("https://api.example.com/stream")),
  await run("redirect", new Request("https://api.example.com/redirect")),
];
console.log(JSON.stringify(results));
