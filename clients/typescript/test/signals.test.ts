// The keyed signal subject the recommender computes equals tipml's for every id of the fixture
// (tests/unit/test_signal_subjects.py checks the fixture against tipml's own function).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { test } from "node:test";

import { keyedSignalSubject } from "../src/signals.js";

const cases = JSON.parse(
  readFileSync(resolve(import.meta.dirname, "..", "..", "test", "fixtures", "signal_subjects.json"), "utf8"),
) as [string, string, string][];

test(`keyed signal subjects equal tipml's for ${cases.length} ids`, () => {
  assert.ok(cases.length > 10);
  const mismatches = cases
    .filter(([user, kind, subject]) => keyedSignalSubject(user, kind) !== subject)
    .map(([user, kind, subject]) => `${JSON.stringify(user)}: ${keyedSignalSubject(user, kind)} != ${subject}`);
  assert.deepEqual(mismatches, []);
});
