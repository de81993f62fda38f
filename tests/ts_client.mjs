// The official TypeScript SDK client against `mcp-autoresearch serve` over stdio: list the tools, then call
// every one of them through a short session (baseline, one kept edit, a whole-file edit, notes, queries).
// The client validates each structuredContent against the tool's published outputSchema, as real clients do.
//
// usage: node ts_client.mjs SDK_DIR PYTHON PROJECT_DIR
// Prints one JSON object on stdout; exits 1 with the reason on stderr when anything fails.

import { join } from "node:path";
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [sdkDir, python, project] = process.argv.slice(2);
const load = (rel) => import(pathToFileURL(join(sdkDir, "dist", "esm", rel)).href);
const { Client } = await load("client/index.js");
const { StdioClientTransport } = await load("client/stdio.js");
const version = JSON.parse(readFileSync(join(sdkDir, "package.json"), "utf8")).version;

const transport = new StdioClientTransport({
  command: python,
  args: ["-m", "mcp_autoresearch", "serve", "--project", project],
  cwd: project,
  env: { ...process.env },
  stderr: "pipe",
});
let serverLog = "";
transport.stderr?.on("data", (chunk) => (serverLog += chunk));
const client = new Client({ name: "ts-sdk-probe", version: "1.0.0" });

const calls = {};
async function call(name, args = {}) {
  const result = await client.callTool({ name, arguments: args }, undefined, { timeout: 120_000 });
  if (result.isError) throw new Error(`${name} refused: ${result.content?.[0]?.text}`);
  (calls[name] ??= []).push(result.structuredContent);
  return result.structuredContent;
}

async function experiment(description) {
  let run = await call("run_experiment", { description, wait_s: 20 });
  while (run.status === "running") run = await call("wait_experiment", { run_id: run.run_id, wait_s: 20 });
  return [run, await call("commit_or_reset", { run_id: run.run_id })];
}

try {
  await client.connect(transport);
  const tools = (await client.listTools()).tools;
  const prompts = (await client.listPrompts()).prompts;
  await call("detect_project");
  await call("start_session", { tag: "ts" });
  const target = await call("read_target", { start_line: 1 });
  const [baseline] = await experiment("baseline");
  await call("log_result", { run_id: baseline.run_id, notes: "the unmodified baseline" });
  await call("apply_edit", {
    edits: [{ old_text: "LR = 0.5", new_text: "LR = 0.3" }],
    expected_sha256: target.sha256,
  });
  const [, kept] = await experiment("lower LR");
  await call("wait_experiment", { run_id: kept.run_id });
  const whole = await call("read_target");
  await call("apply_edit", { content: whole.content.replace("LR = 0.3", "LR = 0.2"), path: "train.py" });
  const [best] = await experiment("LR 0.2");
  // The research tree: a sibling of the kept runs (from the baseline), the two combined, then the best again.
  await call("branch_from", { run_id: baseline.run_id });
  const sibling = (await call("read_target")).content.replace("step 1 loss 2.0", "step 1 loss 1.9");
  await call("apply_edit", { content: sibling });
  const [side] = await experiment("another loss line");
  await call("combine", { run_a: best.run_id, run_b: side.run_id });
  await call("branch_from", { run_id: best.run_id });
  await call("query_results", { status: "keep", limit: 5, order: "best" });
  const prompt = await client.getPrompt({ name: "loop", arguments: { focus: "optimizer" } });
  console.log(
    JSON.stringify({
      version,
      tools: tools.map((t) => t.name),
      prompts: prompts.map((p) => p.name),
      prompt_chars: prompt.messages[0].content.text.length,
      calls,
    }),
  );
  await client.close();
  process.exit(0);
} catch (error) {
  console.error(`TypeScript SDK ${version}: ${error?.stack ?? error}\n--- server stderr ---\n${serverLog}`);
  try {
    await client.close();
  } catch {}
  process.exit(1);
}
