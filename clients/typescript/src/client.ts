// A small typed client for tipml's /score and /generate. Request and response types are
// generated from the service's OpenAPI document (openapi-typescript), so a contract change
// fails this package's build.

import type { components } from "./generated/api.js";
import { PromptVersionChooser } from "./promptVersion.js";

export type ScoreRequest = components["schemas"]["ScoreRequest"];
export type ScoreResponse = components["schemas"]["ScoreResponse"];
export type GenerateRequest = components["schemas"]["GenerateRequest"];
export type GenerateResponse = components["schemas"]["GenerateResponse"];
export type ErrorBody = components["schemas"]["ErrorBody"];
export type ExperimentsReport = components["schemas"]["ExperimentsReport"];

export class TipmlError extends Error {
  constructor(
    readonly status: number,
    readonly body: ErrorBody,
  ) {
    super(`${status} ${body.error}: ${body.detail}`);
    this.name = "TipmlError";
  }

  get field(): string | undefined {
    return this.body.field ?? undefined;
  }
}

export interface ClientOptions {
  baseUrl: string;
  token: string;
  timeoutMs?: number;
  promptVersions?: PromptVersionChooser;
}

export class TipmlClient {
  private readonly baseUrl: string;
  private readonly promptVersions: PromptVersionChooser;

  constructor(private readonly options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/$/, "");
    this.promptVersions = options.promptVersions ?? PromptVersionChooser.fromEnv();
  }

  score(body: ScoreRequest): Promise<ScoreResponse> {
    return this.post<ScoreResponse>("/score", body);
  }

  /** Generates a tip. Unless the body names one, the prompt version comes from
   * TIP_PROMPT_VERSION (one, or a rotation); the response says which version was used. */
  generate(body: GenerateRequest): Promise<GenerateResponse> {
    const chosen = body.prompt_version ?? this.promptVersions.choose(body.user_id);
    const request = chosen === undefined ? body : { ...body, prompt_version: chosen };
    return this.post<GenerateResponse>("/generate", request);
  }

  /** Reward per experiment variant and per prompt version (for the admin dashboard). */
  experimentsReport(): Promise<ExperimentsReport> {
    return this.request<ExperimentsReport>("GET", "/experiments/report");
  }

  private post<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>("POST", path, body);
  }

  private async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await fetch(`${this.baseUrl}${path}`, {
      method,
      headers: {
        ...(body === undefined ? {} : { "content-type": "application/json" }),
        authorization: `Bearer ${this.options.token}`,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(this.options.timeoutMs ?? 10_000),
    });
    const data: unknown = await response.json();
    if (!response.ok) throw new TipmlError(response.status, data as ErrorBody);
    return data as T;
  }
}
