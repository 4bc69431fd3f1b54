// Runs the real tipml service (Python, embedded defaults: local LLM, embedded NATS) and calls
// it through the typed client.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";

import { PROFILE_FEATURES, PromptVersionChooser, TipmlClient, TipmlError, fnv1a } from "../src/index.js";

const repo = resolve(import.meta.dirname, "..", "..", "..", "..");
const python = process.env.TIPML_PYTHON ?? join(repo, ".venv", "bin", "python");
const token = "ts-client-test-token-0123456789";

function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => ok(typeof address === "object" && address ? address.port : 0));
    });
  });
}

async function waitReady(baseUrl: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const response = await fetch(`${baseUrl}/readyz`);
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error("tipml did not become ready");
}

describe("PromptVersionChooser", () => {
  test("one version, rotation, sticky, none", () => {
    assert.equal(PromptVersionChooser.fromEnv({ TIP_PROMPT_VERSION: "v2" }).choose("a"), "v2");
    const rr = PromptVersionChooser.fromEnv({ TIP_PROMPT_VERSION: "v1, v2" });
    assert.deepEqual(["a", "a", "a"].map((u) => rr.choose(u)), ["v1", "v2", "v1"]);
    const sticky = PromptVersionChooser.fromEnv({ TIP_PROMPT_VERSION: "v1,v2", TIP_PROMPT_ROTATION: "sticky" });
    const users = Array.from({ length: 40 }, (_, i) => `user-${i}`);
    const first = users.map((u) => sticky.choose(u));
    assert.deepEqual(users.map((u) => sticky.choose(u)), first); // same user, same variant
    assert.ok(first.includes("v1") && first.includes("v2")); // both variants get users
    assert.equal(PromptVersionChooser.fromEnv({}).choose("a"), undefined);
    assert.equal(fnv1a("a"), 0xe40c292c); // the reference FNV-1a value
  });

  test("the registry has unique names", () => {
    const names = PROFILE_FEATURES.map((f) => f.name);
    assert.equal(new Set(names).size, names.length);
  });
});

describe("TipmlClient against the real service", () => {
  let service: ChildProcess;
  let baseUrl = "";

  before(async () => {
    const port = await freePort();
    baseUrl = `http://127.0.0.1:${port}`;
    service = spawn(python, ["-m", "tipml", "serve", "--port", String(port)], {
      env: {
        ...process.env,
        TIPML_API_TOKENS: token,
        TIPML_DATA_DIR: mkdtempSync(join(tmpdir(), "tipml-ts-")),
        TIPML_LOG_LEVEL: "WARNING",
        LITELLM_LOCAL_MODEL_COST_MAP: "True",
      },
      stdio: "ignore",
    });
    await waitReady(baseUrl, 180_000);
  });

  after(() => {
    service?.kill("SIGINT");
  });

  test("score returns typed, ranked results with propensities", async () => {
    const client = new TipmlClient({ baseUrl, token });
    const response = await client.score({
      user_id: "ts-user",
      candidates: [
        { tip_id: "sleep-001", category: "sleep" },
        { tip_id: "focus-001", category: "focus" },
      ],
      profile_features: { favorite_category: "focus", preferred_hour: 9 },
      k: 2,
    });
    assert.equal(response.policy, "greedy");
    assert.equal(response.experiment, null); // no experiment chose the policy
    assert.deepEqual(response.results.map((r) => r.rank), [1, 2]);
    assert.equal(response.results[0]?.tip_id, "focus-001");
    assert.equal(response.results[0]?.propensity, 1);
  });

  test("generate rotates TIP_PROMPT_VERSION and returns the version used", async () => {
    const client = new TipmlClient({
      baseUrl,
      token,
      timeoutMs: 30_000,
      promptVersions: PromptVersionChooser.fromEnv({ TIP_PROMPT_VERSION: "v1,v2" }),
    });
    const used: string[] = [];
    for (let i = 0; i < 3; i++) {
      const response = await client.generate({ user_id: "ts-user", topic: "sleep", max_chars: 140 });
      assert.ok(response.text.length > 0 && response.text.length <= 140);
      used.push(response.prompt_version);
    }
    assert.deepEqual(used, ["v1", "v2", "v1"]);
    const pinned = await client.generate({ user_id: "ts-user", prompt_version: "v3" });
    assert.equal(pinned.prompt_version, "v3"); // the body wins over the rotation
    assert.deepEqual([pinned.experiment, pinned.variant, pinned.propensity], [null, null, null]);
  });

  test("the experiments report is typed and lists the packaged experiments", async () => {
    const report = await new TipmlClient({ baseUrl, token }).experimentsReport();
    assert.deepEqual(Object.keys(report.experiments).sort(), ["prompt-bandit", "prompt-version"]);
    assert.equal(report.experiments["prompt-version"]?.kind, "ab");
    assert.equal(report.experiments["prompt-bandit"]?.policy, "thompson");
  });

  test("errors are typed and name the field", async () => {
    const client = new TipmlClient({ baseUrl, token });
    // The generated types already refuse an unreleased version; the service does too.
    // @ts-expect-error -- "v999" is not a released prompt version
    await assert.rejects(client.generate({ user_id: "u", prompt_version: "v999" }), (error: unknown) => {
      assert.ok(error instanceof TipmlError);
      assert.equal(error.status, 422);
      assert.equal(error.field, "prompt_version");
      assert.match(error.body.detail, /v1, v2, v3/);
      return true;
    });
    await assert.rejects(client.score({ user_id: "u", candidates: [] }), (error: unknown) => {
      assert.ok(error instanceof TipmlError);
      assert.equal(error.field, "candidates");
      return true;
    });
    const wrong = new TipmlClient({ baseUrl, token: "not-the-token-at-all" });
    await assert.rejects(wrong.score({ user_id: "u", candidates: [{ tip_id: "a" }] }), /401 unauthorized/);
  });
});
