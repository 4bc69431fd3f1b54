"""Wire models of the HTTP contract (see ``serving/README.md``).

The OpenAPI document generated from these models *is* the contract, so they accept exactly
what it says: no whitespace stripping, no coercion (``k: "2"``, ``k: true`` and ``ts: 0`` are
refused), bounds on every list, number and string, and the vocabularies (topics, prompt
versions, profile features) spelled out as enums.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from typing_extensions import TypedDict

from tipml.features import profile_schema
from tipml.features.profile_schema import CATEGORIES
from tipml.features.topics import TOPICS, topic_names

# An id: 1-128 characters, no control characters, no whitespace at either end.
_ID_PATTERN = r"^[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?$"
TipId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_ID_PATTERN)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_ID_PATTERN)]
ShortText = Annotated[str, StringConstraints(max_length=64)]
Locale = Annotated[
    str,
    StringConstraints(
        min_length=2, max_length=16, pattern=r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*$"
    ),
]

MAX_CANDIDATES = 1000  # the contract's hard ceiling; TIPML_MAX_CANDIDATES may only lower it
MAX_K = MAX_CANDIDATES
MAX_CHARS_CEILING = 2000  # TIPML_GENERATE_MAX_CHARS may only lower it
EARLIEST_TS = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TS = datetime(2200, 1, 1, tzinfo=UTC)


def _json_int(value: object) -> object:
    """A JSON integer: ``2`` or ``2.0`` (JSON Schema counts both), never ``"2"`` or ``true``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("expected an integer")
        return int(value)
    return value


def _opt_json_int(value: object) -> object:
    return None if value is None else _json_int(value)


def _json_string_only(value: object) -> object:
    """``ts`` comes as an ISO 8601 string, never a number (pydantic would read 0 as 1970)."""
    if not isinstance(value, str | datetime):
        raise ValueError("expected an ISO 8601 date-time string")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# One candidate tip. A typed dict, not a model: 100 candidates validate ≈ 30 % faster as dicts
# than as model instances (ADR 0018), and the JSON Schema is the same — the defaults are stated
# for the document, ``ScoreService`` applies them. (No docstring: it would become the schema's
# description and change the committed OpenAPI document.)
class CandidateIn(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    tip_id: TipId
    category: NotRequired[Annotated[ShortText | None, Field(json_schema_extra={"default": None})]]
    tags: NotRequired[Annotated[list[ShortText], Field(max_length=32)]]
    source: NotRequired[
        Annotated[Literal["curated", "generated"], Field(json_schema_extra={"default": "curated"})]
    ]


# JSON Schema cannot bound a date-time, but a pattern can bound its year: 1970-2199.
Timestamp = Annotated[
    datetime,
    BeforeValidator(_json_string_only),
    Field(json_schema_extra={"pattern": r"^(?:19[7-9]\d|2[01]\d\d)-"}),
]


class RequestContext(_Strict):
    ts: Timestamp | None = Field(
        None,
        description="When the tip will be shown: ISO 8601 with an offset (UTC when none), "
        "between 1970-01-01 and 2200-01-01.",
    )
    platform: Literal["ios", "android", "web"] | None = None

    @field_validator("ts")
    @classmethod
    def _in_range(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            moment = value if value.tzinfo else value.replace(tzinfo=UTC)
            utc = moment.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValueError("out of range: must be between 1970-01-01 and 2200-01-01") from None
        if not EARLIEST_TS <= utc < LATEST_TS:
            raise ValueError("out of range: must be between 1970-01-01 and 2200-01-01")
        return utc


ProfileFeatures = Annotated[
    dict[str, Any], Field(json_schema_extra=lambda s: s.update(profile_schema.json_schema()))
]


class ScoreRequest(_Strict):
    user_id: UserId
    candidates: list[CandidateIn] = Field(
        ...,
        min_length=1,
        max_length=MAX_CANDIDATES,
        description="Tips to rank: 1 to 1000 (or TIPML_MAX_CANDIDATES), each tip_id once "
        "(a repeated tip_id is a 422 naming it).",
        json_schema_extra={"uniqueItems": True},
    )
    profile_features: ProfileFeatures | None = None
    context: RequestContext | None = None
    k: int | None = Field(None, ge=1, le=MAX_K, description="Return only the top k (default: all).")

    _k_is_json_int = field_validator("k", mode="before")(lambda cls, v: _opt_json_int(v))

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
    policy: str = Field(
        ...,
        description="The ranking policy used: greedy, epsilon_greedy:<ε>, softmax:<t>, thompson.",
    )
    results: list[ScoredTip]
    experiment: str | None = Field(
        None, description="The experiment that chose the policy (TIPML_SCORE_POLICY), if any."
    )
    variant: str | None = Field(None, description="The experiment's variant (arm) for this call.")


def _enum(values: list[str]) -> Any:
    return lambda s: s.update({"enum": values})


Topic = Annotated[
    str,
    StringConstraints(max_length=64),
    Field(json_schema_extra=_enum(topic_names())),
]
Category = Annotated[str, Field(json_schema_extra=_enum(list(CATEGORIES)))]


def _prompt_versions() -> list[str]:
    from tipml.serving.prompts import known_versions

    return known_versions()


PromptVersionKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=32),
    Field(json_schema_extra=lambda s: s.update({"enum": _prompt_versions()})),
]


class GenerateRequest(_Strict):
    user_id: UserId
    topic: Topic | None = Field(
        None,
        description="What the tip is about: one of the topic vocabulary (free text is not "
        "accepted: it would reach the prompt).",
    )
    category: Category | None = Field(None, description="Alias of topic; topic wins.")
    prompt_version: PromptVersionKey | None = Field(
        None,
        description="A released prompt version; default: DEFAULT_PROMPT_VERSION, then v1.",
    )
    profile_features: ProfileFeatures | None = None
    locale: Locale | None = Field(None, description="BCP 47 language tag, e.g. en or de-AT.")
    max_chars: int | None = Field(
        None, ge=20, le=MAX_CHARS_CEILING, description="At most TIPML_GENERATE_MAX_CHARS."
    )

    _max_chars_is_json_int = field_validator("max_chars", mode="before")(
        lambda cls, v: _opt_json_int(v)
    )
    context: RequestContext | None = None

    @field_validator("topic")
    @classmethod
    def _known_topic(cls, value: str | None) -> str | None:
        if value is not None and value not in TOPICS:
            raise ValueError(f"not a known topic; known: {', '.join(topic_names())}")
        return value

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str | None) -> str | None:
        if value is not None and value not in CATEGORIES:
            raise ValueError(f"not a known category; known: {', '.join(CATEGORIES)}")
        return value

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
        None, description="Why the fallback text was served (timeout, overloaded, guard_…)."
    )
    usage: Usage
    latency_ms: float
    experiment: str | None = Field(
        None,
        description="The experiment that chose prompt_version (DEFAULT_PROMPT_VERSION="
        "experiment:<name>), null when the body or the default chose.",
    )
    variant: str | None = Field(None, description="The experiment's variant (arm) for this call.")
    propensity: float | None = Field(
        None,
        description="Probability of this variant: its traffic weight (A/B test) or the "
        "bandit's probability of playing this arm now; null when no experiment chose.",
    )


class Interval(BaseModel):
    mean: float
    ci: list[float] = Field(..., min_length=2, max_length=2, description="[low, high], 95 %.")


class VariantReport(BaseModel):
    name: str
    exposures: int = Field(..., description="Decisions logged, each once.")
    units: int = Field(..., description="Distinct users among them.")
    reactions: dict[str, int] = Field(..., description="Reaction events by type, each once.")
    reward: Interval = Field(..., description="Mean reward per exposure, Bayesian interval.")
    diff_vs_control: Interval | None = Field(
        None, description="Difference of the means against the control, normal interval."
    )


class SampleRatio(BaseModel):
    chi2: float
    p_value: float
    mismatch: bool = Field(..., description="p < 0.001: the split itself is broken.")


class ExperimentReport(BaseModel):
    target: str
    kind: str
    control: str | None
    exposures: int
    variants: list[VariantReport]
    srm: SampleRatio | None = Field(None, description="A/B tests: units per variant vs weights.")
    policy: str | None = Field(None, description="Bandits: the policy.")


class ExperimentsReport(BaseModel):
    decisions: int
    reactions: int
    experiments: dict[str, ExperimentReport]
    prompt_versions: list[VariantReport] = Field(
        ..., description="Every /generate decision by prompt version (control: v1)."
    )


class ErrorBody(BaseModel):
    error: str
    detail: str
    field: str | None = None
    request_id: str | None = Field(None, description="The X-Request-ID of the failed request.")


class ComponentStatus(BaseModel):
    ok: bool
    detail: str


class ReadyResponse(BaseModel):
    ready: bool
    components: dict[str, ComponentStatus]
