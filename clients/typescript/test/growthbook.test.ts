// The recommender computes tipml's experiment assignment itself with GrowthBook's JavaScript
// SDK: the fixture holds tipml's experiment definitions (`tipml experiments growthbook`) and
// the variation tipml assigns to each of 10,000 ids (tests/unit/test_assignment.py checks the
// fixture against tipml's own assignment of the packaged experiments file).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { test } from "node:test";

import { GrowthBook, type Experiment } from "@growthbook/growthbook";

interface Fixture {
  ids: { prefix: string; count: number; extra: string[] };
  experiments: Record<string, Experiment<string>>;
  expected: Record<string, string>;
}

const fixture = JSON.parse(
  readFileSync(resolve(import.meta.dirname, "..", "..", "test", "fixtures", "assignments.json"), "utf8"),
) as Fixture;

const ids = [
  ...Array.from({ length: fixture.ids.count }, (_, i) => `${fixture.ids.prefix}${i}`),
  ...fixture.ids.extra,
];

for (const [name, experiment] of Object.entries(fixture.experiments)) {
  test(`GrowthBook's JavaScript SDK assigns ${name} as tipml does for ${ids.length} ids`, () => {
    const expected = fixture.expected[name];
    assert.ok(expected !== undefined && expected.length === ids.length);
    const mismatches: string[] = [];
    ids.forEach((id, i) => {
      if (id === "") return; // GrowthBook skips a unit without an id; so does tipml's caller
      const gb = new GrowthBook({ attributes: { id } });
      const result = gb.run(experiment);
      const mark = result.inExperiment ? String(result.variationId) : "-";
      if (mark !== expected[i]) mismatches.push(`${JSON.stringify(id)}: ${mark} != ${expected[i]}`);
      gb.destroy();
    });
    assert.deepEqual(mismatches.slice(0, 10), []);
  });
}
