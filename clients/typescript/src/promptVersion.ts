// TIP_PROMPT_VERSION: one prompt version ("v2"), or a comma-separated rotation ("v1,v2").
// A rotation is round-robin by default, or sticky per user (hash of the user id) with
// TIP_PROMPT_ROTATION=sticky — the same user always gets the same variant, as an A/B test needs.

export type Rotation = "round-robin" | "sticky";

export class PromptVersionChooser {
  private next = 0;

  constructor(
    readonly versions: readonly string[],
    readonly rotation: Rotation = "round-robin",
  ) {}

  static fromEnv(env: Record<string, string | undefined> = process.env): PromptVersionChooser {
    const versions = (env.TIP_PROMPT_VERSION ?? "")
      .split(",")
      .map((v) => v.trim())
      .filter((v) => v.length > 0);
    const rotation = env.TIP_PROMPT_ROTATION === "sticky" ? "sticky" : "round-robin";
    return new PromptVersionChooser(versions, rotation);
  }

  /** The version to request for this user, or undefined to let the service decide. */
  choose(userId: string): string | undefined {
    if (this.versions.length === 0) return undefined;
    if (this.versions.length === 1) return this.versions[0];
    if (this.rotation === "sticky") {
      return this.versions[fnv1a(userId) % this.versions.length];
    }
    const version = this.versions[this.next % this.versions.length];
    this.next += 1;
    return version;
  }
}

/** 32-bit FNV-1a: small, stable across processes and languages. */
export function fnv1a(text: string): number {
  let hash = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash >>> 0;
}
