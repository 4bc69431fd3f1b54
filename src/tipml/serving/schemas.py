"""Wire models of the HTTP contract (see ``serving/README.md``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

TipId = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
ShortText = Annotated[str, StringConstraints(max_length=64, strip_whitespace=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class CandidateIn(_Strict):
    tip_id: TipId
    category: ShortText | None = None
    tags: list[ShortText] = Field(default_factory=list, max_length=32)
    source: Literal["curated", "generated"] = "curated"


class RequestContext(_Strict):
    ts: datetime | None = Field(None, description="When the tip will be shown (ISO 8601).")
    platform: Literal["ios", "android", "web"] | None = None


class ScoreRequest(_Strict):
    user_id: UserId
    candidates: list[CandidateIn] = Field(
        ..., description="Tips to rank; non-empty, unique tip_id, at most TIPML_MAX_CANDIDATES."
    )
    profile_features: dict[str, Any] | None = Field(
        None, description="Profile features computed by the recommender (see profile schema)."
    )
    context: RequestContext | None = None
    k: int | None = Field(None, ge=1, description="Return only the top k (default: all).")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "user_id": "u-42",
                    "candidates": [
                        {"tip_id": "sleep-003", "category": "sleep"},
                        {"tip_id": "focus-011", "category": "focus", "tags": ["morning"]},
                    ],
                    "profile_features": {
                        "preferred_hour": 7,
                        "completion_rate": 0.62,
                        "timezone": "Europe/Berlin",
                    },
                    "context": {"ts": "2026-11-27T07:15:00Z", "platform": "ios"},
                    "k": 1,
                }
            ]
        },
    )


class ScoredTip(BaseModel):
    tip_id: str
    score: float
    rank: int = Field(..., description="1 = best.")
    propensity: float = Field(
        ..., description="Probability the policy puts this tip first (for off-policy evaluation)."
    )


class ScoreResponse(BaseModel):
    score_id: str
    model_version: str
    policy: str
    results: list[ScoredTip]


class GenerateRequest(_Strict):
    user_id: UserId
    topic: ShortText | None = Field(None, description="What the tip is about, e.g. 'sleep'.")
    category: ShortText | None = Field(None, description="Alias of topic; topic wins.")
    prompt_version: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None
    profile_features: dict[str, Any] | None = None
    locale: Annotated[str, StringConstraints(max_length=16)] | None = None
    max_chars: int | None = Field(None, ge=20, description="At most TIPML_GENERATE_MAX_CHARS.")
    context: RequestContext | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "user_id": "u-42",
                    "topic": "sleep",
                    "prompt_version": "v2",
                    "profile_features": {"preferred_hour": 22, "streak_days": 3},
                    "max_chars": 160,
                }
            ]
        },
    )


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class GenerateResponse(BaseModel):
    generation_id: str
    text: str
    prompt_version: str
    model: str
    fallback: bool
    fallback_reason: str | None = Field(
        None, description="Why the fallback text was served (timeout, guard_url, …)."
    )
    usage: Usage
    latency_ms: float


class ErrorBody(BaseModel):
    error: str
    detail: str
    field: str | None = None


class ComponentStatus(BaseModel):
    ok: bool
    detail: str


class ReadyResponse(BaseModel):
    ready: bool
    components: dict[str, ComponentStatus]
