"""Prometheus metrics, one registry per app (no process-global state, so tests can build
many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# /score's stages in order (README: the per-stage budget): body parse + validation + auth,
# the online-feature read, the feature matrix, the model, the policy (experiment + ranking),
# the response objects, FastAPI's response validation + serialisation, and the decision record
# (with the shadow's scores; after the response when a shadow is loaded)
SCORE_STAGES = (
    "parse_validate",
    "online",
    "features",
    "model",
    "policy",
    "response",
    "serialize",
    "record",
)

_LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
)
_LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tipml_http_requests",
            "HTTP requests by route and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tipml_http_request_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "tipml_generate_fallbacks",
            "Generations answered with the fallback text, by reason.",
            ["reason", "prompt_version"],
            registry=r,
        )
        self.generations = Counter(
            "tipml_generations",
            "Generations by prompt version and outcome.",
            ["prompt_version", "outcome"],
            registry=r,
        )
        self.llm_latency = Histogram(
            "tipml_llm_request_seconds",
            "Latency of LLM calls through the gateway.",
            ["route"],
            buckets=_LLM_BUCKETS,
            registry=r,
        )
        self.llm_tokens = Counter(
            "tipml_llm_tokens",
            "Tokens used by LLM calls.",
            ["route", "kind"],
            registry=r,
        )
        self.unknown_features = Counter(
            "tipml_unknown_profile_features",
            "Profile features received that the schema does not know (ignored).",
            ["feature"],
            registry=r,
        )
        self.scored_candidates = Histogram(
            "tipml_score_candidates",
            "Candidates per /score call.",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.score_stage = Histogram(
            "tipml_score_stage_seconds",
            "Time of each /score stage: " + ", ".join(SCORE_STAGES) + ".",
            ["stage"],
            buckets=(5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=r,
        )
        # bound once: labels() per observation would cost more than the stage it times
        self.stage = {s: self.score_stage.labels(s) for s in SCORE_STAGES}
        self.score_online_missing = Counter(
            "tipml_score_online_missing",
            "/score calls whose read of the user's online features exceeded its budget.",
            registry=r,
        )
        self.gateway_ready = Gauge(
            "tipml_gateway_ready",
            "1 when the LLM gateway is configured and reachable.",
            registry=r,
        )
