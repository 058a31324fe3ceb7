// A TypeScript SDK (@modelcontextprotocol/sdk) client run against meshgate by
// tests/integration/test_ts_client.py. Usage: node ts_client.mjs URL SCENARIO
// Prints one JSON object with what it saw; exits non-zero on an unexpected error.
// The `cancel` and `loop` scenarios wait for the test's word on stdin (a line, or its end)
// before they give up on their call or stop calling, so that the test decides when.
import { createInterface } from "node:readline";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ToolListChangedNotificationSchema,
} from "@modelcontextprotocol/sdk/types.js";

const [url, scenario] = process.argv.slice(2);
const out = { scenario };

// Resolves at the test's first line on stdin, or when stdin ends.
function told() {
  return new Promise((resolve) => {
    const lines = createInterface({ input: process.stdin });
    const done = () => {
      lines.close();
      resolve();
    };
    lines.once("line", done);
    lines.once("close", done);
  });
}

function text(result) {
  return result.content.filter((c) => c.type === "text").map((c) => c.text).join("");
}

async function connect() {
  const client = new Client(
    { name: "meshgate-ts-test", version: "1.0.0" },
    { capabilities: { sampling: {}, elicitation: {} } },
  );
  client.setRequestHandler(CreateMessageRequestSchema, async () => ({
    role: "assistant",
    content: { type: "text", text: "from typescript" },
    model: "ts-model",
  }));
  client.setRequestHandler(ElicitRequestSchema, async () => ({
    action: "accept",
    content: { name: "Ada" },
  }));
  // MESHGATE_TOKEN: a bearer token sent on every request, as an application that already holds
  // one passes it to the SDK.
  const token = process.env.MESHGATE_TOKEN;
  const requestInit = token ? { headers: { Authorization: `Bearer ${token}` } } : undefined;
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit });
  await client.connect(transport);
  return { client, transport };
}

async function basic() {
  const { client, transport } = await connect();
  out.protocolVersion = transport.protocolVersion;
  out.sessionId = Boolean(transport.sessionId);
  const changed = [];
  client.setNotificationHandler(ToolListChangedNotificationSchema, async () => changed.push(1));
  out.tools = (await client.listTools()).tools.map((t) => t.name);
  const prefix = url.endsWith("/mcp") ? "hs__" : "";
  out.echo = text(await client.callTool({ name: `${prefix}echo`, arguments: { text: "ts" } }));
  const progress = [];
  const r = await client.callTool(
    { name: `${prefix}progress`, arguments: { steps: 3 } },
    undefined,
    { onprogress: (p) => progress.push([p.progress, p.total]) },
  );
  out.progressResult = text(r);
  out.progress = progress;
  out.sampling = text(await client.callTool({ name: `${prefix}ask_sampling`, arguments: {} }));
  out.unknownTool = null;
  try {
    await client.callTool({ name: `${prefix}no_such_tool`, arguments: {} });
  } catch (e) {
    out.unknownTool = e.code ?? String(e);
  }
  await client.callTool({ name: `${prefix}add_tool`, arguments: { name: `from_ts_${Date.now()}` } });
  for (let i = 0; i < 100 && changed.length === 0; i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  out.listChanged = changed.length > 0;
  await transport.terminateSession();
  await client.close();
}

async function cancel() {
  const { client, transport } = await connect();
  const controller = new AbortController();
  told().then(() => controller.abort("enough"));
  try {
    await client.callTool({ name: "hang", arguments: {} }, undefined, { signal: controller.signal });
    out.cancelled = false;
  } catch (e) {
    out.cancelled = true;
  }
  await transport.terminateSession();
  await client.close();
}

async function loop() {
  const { client, transport } = await connect();
  let ok = 0;
  let stopping = false;
  const errors = [];
  told().then(() => (stopping = true));
  // After the word to stop, some more calls: they reach the instance that replaced the killed one.
  for (let i = 0, after = 0; after < 40; i++) {
    if (stopping) after++;
    try {
      const r = await client.callTool({ name: "echo", arguments: { text: String(i) } });
      if (text(r) === String(i)) ok++;
      else errors.push(`wrong echo ${text(r)}`);
    } catch (e) {
      errors.push(String(e));
    }
    if (i === 19) console.log("calling"); // the session is busy: the test may kill an instance
  }
  out.ok = ok;
  out.errors = errors;
  await transport.terminateSession();
  await client.close();
}

// With a token: the tools the token's roles allow, one allowed call and one refused.
async function authz() {
  const { client, transport } = await connect();
  out.sessionId = Boolean(transport.sessionId);
  out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
  out.echo = text(await client.callTool({ name: "echo", arguments: { text: "ts" } }));
  try {
    await client.callTool({ name: "write", arguments: {} });
    out.denied = null;
  } catch (e) {
    out.denied = { code: e.code ?? null, message: String(e.message ?? e) };
  }
  await transport.terminateSession();
  await client.close();
}

// Without a token: what the SDK makes of the 401.
async function unauthenticated() {
  try {
    await connect();
    out.connected = true;
  } catch (e) {
    out.connected = false;
    out.error = String(e.message ?? e);
  }
}

const scenarios = { basic, cancel, loop, authz, unauthenticated };
try {
  await scenarios[scenario]();
  console.log(JSON.stringify(out));
} catch (e) {
  console.log(JSON.stringify({ ...out, fatal: String(e?.stack ?? e) }));
  process.exit(1);
}
