// Where the recommender publishes a user's signals so tipml's consumer processes can each own
// a share of the users (ADR 0019): `signals-by-user.<user token>.<kind>`. The token is the
// user id when it is a safe subject token, else "h" + the first 32 hex digits of its SHA-256 —
// exactly tipml's `user_token` (a keyed signal with any other token is dead-lettered).
// test/fixtures/signal_subjects.json holds tipml's subjects for a set of ids; both sides test it.
import { createHash } from "node:crypto";

const TOKEN_SAFE = /^[A-Za-z0-9_-]{1,64}$/;

export function userToken(userId: string): string {
  if (TOKEN_SAFE.test(userId)) return userId;
  return "h" + createHash("sha256").update(userId, "utf8").digest("hex").slice(0, 32);
}

export function keyedSignalSubject(userId: string, kind: string): string {
  return `signals-by-user.${userToken(userId)}.${kind}`;
}
