"""The logic behind ``/score`` and ``/generate``: no HTTP here, only plain objects.

Services are stateless between requests: per-tip aggregates come from a read-only view
(``tip_stats``) that the event backbone keeps fresh, the model from the scorer given at
construction.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from tipml.domain.tips import NO_STATS, TipStatsView
from tipml.errors import GatewayError, InvalidRequest
from tipml.experiments.live import NO_EXPERIMENT, ExperimentRouter
from tipml.experiments.policies import RankingPolicy, Uncertainty, parse_score_policy
from tipml.features.context import build_context, local_time
from tipml.features.profile_schema import ValidatedProfile, shown, validate_profile
from tipml.features.store import OnlineFeatureStore
from tipml.features.tip_features import (
    COLUMN,
    FEATURE_SET,
    Candidate,
    candidates_matrix,
    feature_hash,
    online_columns,
)
from tipml.serving import guard
from tipml.serving.gateway import LLMGateway
from tipml.serving.metrics import Metrics
from tipml.serving.prompts import CANARY, resolve_version
from tipml.serving.schemas import (
    GenerateRequest,
    GenerateResponse,
    RequestContext,
    ScoreRequest,
    Usage,
)
from tipml.serving.scoring import Scorer
from tipml.settings import Settings

log = logging.getLogger("tipml.serving")


class DecisionSink(Protocol):
    """Where every answer is logged (``events.decisions.DecisionLog``). Neither method may
    block: both are called on the request path. ``new_id`` reserves the id of a decision that
    ``record`` logs once the answer is sent (the log's blocks, ADR 0028)."""

    def new_id(self, kind: str) -> str: ...

    def record(self, kind: str, decision_id: str, payload: dict[str, Any]) -> None: ...


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


_FEATURE_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MAX_UNKNOWN_LABELS = 200
_MAX_NAMES_PER_REQUEST = 20
_LABEL_TTL_S = 3600.0


class UnknownFeatureCounter:
    """Counts unknown profile feature names with a bounded label set: at most
    ``_MAX_NAMES_PER_REQUEST`` names of one request get their own label (the rest count as
    ``_other``), and a label unseen for an hour gives its slot back, so neither one request
    with 20,000 names nor a slow drift of names can fill the metric for the process's life."""

    def __init__(self, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # label -> last seen

    def _label(self, name: str, now: float) -> str:
        label = name if _FEATURE_LABEL.match(name) else "_invalid_name"
        if label not in self._seen and len(self._seen) >= _MAX_UNKNOWN_LABELS:
            oldest, seen_at = next(iter(self._seen.items()))
            if now - seen_at < _LABEL_TTL_S:
                return "_other"
            del self._seen[oldest]
            with contextlib.suppress(KeyError), warnings.catch_warnings():
                # prometheus_client's multi-process mode cannot remove a label: it warns and
                # keeps the series (our slot count still bounds the labels)
                warnings.simplefilter("ignore", UserWarning)
                self._metrics.unknown_features.remove(oldest)
        self._seen[label] = now
        self._seen.move_to_end(label)
        return label

    def count(self, names: tuple[str, ...], *, route: str) -> None:
        if not names:
            return
        now = self._clock()
        for name in names[:_MAX_NAMES_PER_REQUEST]:
            self._metrics.unknown_features.labels(self._label(name, now)).inc()
        if len(names) > _MAX_NAMES_PER_REQUEST:
            self._metrics.unknown_features.labels("_other").inc(len(names) - _MAX_NAMES_PER_REQUEST)
        log.info(
            "unknown profile features ignored",
            extra={"route": route, "n": len(names), "features": [n[:64] for n in names[:20]]},
        )


def _profile(
    raw: Mapping[str, object] | None, unknown: UnknownFeatureCounter, route: str
) -> ValidatedProfile:
    profile = validate_profile(raw)
    unknown.count(profile.unknown, route=route)
    return profile


@dataclass(slots=True)
class ScoreInput:
    """A ``/score`` request as the service reads it: ``ScoreRequest``'s fields with the
    candidates as ``Candidate`` tuples. Built from a validated ``ScoreRequest`` (``of``) or
    straight from the body by ``serving.score_decoder``."""

    user_id: str
    candidates: list[Candidate]
    profile_features: Mapping[str, Any] | None
    context: RequestContext | None
    k: int | None

    @classmethod
    def of(cls, req: ScoreRequest) -> ScoreInput:
        # tuple.__new__ straight: the named tuple's own __new__ is a Python function, ≈ 40 %
        # of building 100 candidates
        new = tuple.__new__
        candidates = [
            new(
                Candidate,
                (
                    c["tip_id"],
                    c.get("category"),
                    tuple(c.get("tags", ())),
                    c.get("source", "curated"),
                ),
            )
            for c in req.candidates
        ]
        return cls(req.user_id, candidates, req.profile_features, req.context, req.k)


class ScoreService:
    """``policy``: the ranking policy, or — with ``router`` — the one for units no experiment
    takes (holdout, outside every experiment: greedy)."""

    def __init__(
        self,
        settings: Settings,
        scorer: Scorer,
        policy: RankingPolicy,
        tip_stats: TipStatsView,
        metrics: Metrics,
        decisions: DecisionSink,
        *,
        router: ExperimentRouter | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.settings = settings
        self.scorer = scorer
        self.policy = policy
        self.router = router
        self.rng = rng if rng is not None else np.random.default_rng()
        self.tip_stats = tip_stats
        self.metrics = metrics
        self.decisions = decisions
        self._unknown = UnknownFeatureCounter(metrics)
        self._policies: dict[str, RankingPolicy] = {}
        # the registry's shadow model (serving/models.py): scores logged, never returned
        self.shadow: Scorer | None = None

    def _policy_named(self, spec: str) -> RankingPolicy:
        policy = self._policies.get(spec)
        if policy is None:
            policy = self._policies[spec] = parse_score_policy(spec)  # checked at start-up
        return policy

    def _candidates(self, candidates: list[Candidate]) -> list[Candidate]:
        if not candidates:
            raise InvalidRequest("candidates: must contain at least one tip", field="candidates")
        limit = self.settings.max_candidates
        if len(candidates) > limit:
            raise InvalidRequest(
                f"candidates: {len(candidates)} given, at most {limit} allowed",
                field="candidates",
            )
        if len({c[0] for c in candidates}) < len(candidates):  # the slow way to name it
            seen: dict[str, int] = {}
            for i, c in enumerate(candidates):
                if c.tip_id in seen:
                    raise InvalidRequest(
                        f"candidates.{i}.tip_id: duplicate tip_id {shown(c.tip_id)} "
                        f"(also at candidates.{seen[c.tip_id]})",
                        field=f"candidates.{i}.tip_id",
                    )
                seen[c.tip_id] = i
        return candidates

    def score(
        self,
        req: ScoreRequest | ScoreInput,
        defer: Callable[[Callable[[], None]], None] | None = None,
        online: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Rank ``req``'s candidates; returns the response body (``ScoreResponse``'s shape).
        ``online``: the user's online features (``None``: not known, or not read in time —
        the online columns are then missing). ``defer`` runs a callable after the response is
        sent: the decision record (and the shadow model's scores) go there."""
        stage, started = self.metrics.stage, time.perf_counter()
        if isinstance(req, ScoreRequest):
            req = ScoreInput.of(req)
        candidates = self._candidates(req.candidates)
        profile = _profile(req.profile_features, self._unknown, "/score")
        ts = req.context.ts if req.context else None
        hour = local_time(ts, profile).hour
        snapshot = self.tip_stats.snapshot()
        seen = online_columns(online, time.time())
        tips = [snapshot.get(c[0], NO_STATS) for c in candidates]
        x = candidates_matrix(candidates, profile, hour, tips, seen)
        mark = time.perf_counter()
        stage["features"].observe(mark - started)
        scorer, shadow = self.scorer, self.shadow  # one of each per request, even mid-swap
        scores = scorer.score(x)
        mark = _lap(stage["model"], mark)
        decision = self.router.decide(req.user_id) if self.router else NO_EXPERIMENT
        policy = self.policy if decision.value is None else self._policy_named(decision.value)
        uncertainty = Uncertainty(
            rate=x[:, COLUMN["tip_reward_rate"]],
            impressions=np.expm1(x[:, COLUMN["tip_log_impressions"]]),
        )
        ranking = policy.rank(scores, self.rng, uncertainty)
        mark = _lap(stage["policy"], mark)
        k = min(req.k or len(candidates), len(candidates))
        # The body as plain data, serialised once by orjson: every value is ours and already
        # of its wire type, so no response model is built or validated (ScoreResponse
        # documents this shape; the contract tests check the served bodies against it).
        score_list: list[float] = scores.tolist()
        propensities: list[float] = ranking.propensities.tolist()
        order: list[int] = ranking.order.tolist()
        response: dict[str, Any] = {
            "score_id": self.decisions.new_id("score"),
            "model_version": scorer.version,
            "policy": policy.name,
            "results": [
                {
                    "tip_id": candidates[i].tip_id,
                    "score": score_list[i],
                    "rank": r + 1,
                    "propensity": propensities[i],
                }
                for r, i in enumerate(order[:k])
            ],
            "experiment": decision.experiment,
            "variant": decision.variant,
        }
        self.metrics.candidates_per_call.observe(len(candidates))
        score_id: str = response["score_id"]
        ranks = [0] * len(order)
        for r, i in enumerate(order):
            ranks[i] = r + 1
        _lap(stage["response"], mark)

        def record() -> None:
            began = time.perf_counter()
            shadow_log = None
            if shadow is not None:
                try:
                    shadow_scores = shadow.score(x).tolist()
                except Exception as exc:  # a shadow's failure never touches the decision
                    shadow_log = {"model_version": shadow.version, "error": repr(exc)[:200]}
                else:
                    shadow_log = {"model_version": shadow.version, "scores": shadow_scores}
            self.decisions.record(
                "score",
                score_id,
                {
                    "decision_id": score_id,
                    "kind": "score",
                    "user_id": req.user_id,
                    "ts": _now_iso(),
                    "request_ts": ts.isoformat() if ts else None,
                    "platform": req.context.platform if req.context else None,
                    "model_version": scorer.version,
                    "policy": policy.name,
                    **decision.log_fields(),
                    "k": k,
                    "local_hour": hour,
                    "profile_features": dict(profile.values),
                    "unknown_features": list(profile.unknown),
                    # what the matrix was built from is logged below; its hash lets the
                    # training-set builder prove it rebuilds the same matrix (the skew check)
                    "feature_hash": feature_hash(x),
                    "feature_set": FEATURE_SET,
                    # the user's online columns as serving saw them (point in time)
                    "user_online": seen,
                    # the shadow model's scores of the same matrix, in candidate order
                    "shadow": shadow_log,
                    # every candidate, not only the top k: off-policy evaluation needs them all;
                    # as columns, in candidate order (domain.decisions; ADR 0022). The tip
                    # aggregates are as serving saw them (point in time).
                    "candidates": {
                        "tip_id": [c[0] for c in candidates],
                        "category": [c[1] for c in candidates],
                        "source": [c[3] for c in candidates],
                        "tags": [c[2] for c in candidates],
                        "tip_impressions": [t.impressions for t in tips],
                        "tip_reward_sum": [t.reward_sum for t in tips],
                        "score": score_list,
                        "propensity": propensities,
                        "rank": ranks,
                    },
                },
            )
            _lap(stage["record"], began)

        if defer is not None:
            defer(record)  # after the response is sent: the record and shadow are off its path
        else:
            record()
        return response


class GenerateService:
    def __init__(
        self,
        settings: Settings,
        gateway: Callable[[], LLMGateway | None],
        metrics: Metrics,
        decisions: DecisionSink,
        online: OnlineFeatureStore,
        *,
        router: ExperimentRouter | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        # with an experiment configured, units it does not take get the built-in default
        self.default_version = "v1" if router else settings.default_prompt_version
        self._gateway = gateway
        self.metrics = metrics
        self.decisions = decisions
        self.online = online
        self._unknown = UnknownFeatureCounter(metrics)

    async def generate(self, req: GenerateRequest) -> GenerateResponse:
        started = time.perf_counter()
        decision = NO_EXPERIMENT
        if req.prompt_version is None and self.router is not None:
            decision = self.router.decide(req.user_id)
        version = resolve_version(req.prompt_version or decision.value, self.default_version)
        ceiling = self.settings.generate_max_chars
        max_chars = req.max_chars or ceiling
        if max_chars > ceiling:
            raise InvalidRequest(
                f"max_chars: {max_chars} is above the maximum {ceiling}", field="max_chars"
            )
        profile = _profile(req.profile_features, self._unknown, "/generate")
        ctx = build_context(
            topic=req.topic or req.category,
            profile=profile,
            ts=req.context.ts if req.context else None,
            max_chars=max_chars,
            locale=req.locale,
            online=await self.online.user_features(req.user_id),
            budget_chars=self.settings.context_budget_chars,
        )
        gateway = self._gateway()
        reason: str | None = None
        text = ""
        model = "fallback"
        usage = Usage()
        if gateway is None:
            reason = "gateway_not_ready"
        else:
            try:
                if gateway.mode == "completion":
                    result = await gateway.complete(
                        prompt=version.render_completion(ctx),
                        params=version.params,
                        deadline_s=self.settings.generate_deadline_s,
                    )
                else:
                    result = await gateway.complete(
                        messages=version.render_chat(ctx),
                        params=version.params,
                        deadline_s=self.settings.generate_deadline_s,
                    )
            except GatewayError as exc:
                reason = exc.reason
                log.warning(
                    "llm call failed: %s: %s",
                    exc.reason,
                    exc.detail,
                    extra={"reason": exc.reason, "error": exc.detail},
                )
            else:
                model = result.model
                usage = Usage(
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                    total_tokens=result.prompt_tokens + result.completion_tokens,
                )
                route = result.route
                self.metrics.llm_latency.labels(route).observe(result.latency_s)
                self.metrics.llm_tokens.labels(route, "prompt").inc(result.prompt_tokens)
                self.metrics.llm_tokens.labels(route, "completion").inc(result.completion_tokens)
                verdict = guard.check(
                    result.text,
                    max_chars=max_chars,
                    canary=CANARY,
                    system_text=version.system,
                    examples=version.example_tips(),
                    user_texts=ctx.user_texts(),
                )
                if result.finish_reason == "length" and verdict.ok:
                    verdict = guard.GuardResult(False, verdict.text, "truncated")
                if verdict.ok:
                    text = verdict.text
                else:
                    reason = f"guard_{verdict.reason}"
                    model = "fallback"  # the served text is the fallback, not the model's
                    log.info(
                        "guard rejected llm text",
                        extra={"reason": verdict.reason, "text": verdict.text[:300]},
                    )
        if reason is not None:
            text = version.render_fallback(ctx)
            self.metrics.fallbacks.labels(reason, version.key).inc()
        self.metrics.generations.labels(version.key, "fallback" if reason else "llm").inc()
        response = GenerateResponse(
            generation_id=str(uuid.uuid4()),
            text=text,
            prompt_version=version.key,
            model=model,
            fallback=reason is not None,
            fallback_reason=reason,
            usage=usage,
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
            experiment=decision.experiment,
            variant=decision.variant,
            propensity=decision.propensity,
        )
        self.decisions.record(
            "generate",
            response.generation_id,
            {
                "decision_id": response.generation_id,
                "kind": "generate",
                "user_id": req.user_id,
                "ts": _now_iso(),
                "topic": ctx.topic,
                "prompt_version": version.key,
                "prompt_hash": version.content_hash,
                **decision.log_fields(),
                "model": model,
                "fallback": response.fallback,
                "fallback_reason": reason,
                "text": text,
                "usage": usage.model_dump(),
                "latency_ms": response.latency_ms,
                "profile_features": dict(profile.values),
                "context_facts": list(ctx.facts),
                "context_recent": list(ctx.recent),
            },
        )
        return response


def _lap(child: Any, since: float) -> float:
    """Observe the time since ``since`` on a histogram child; the new mark."""
    now = time.perf_counter()
    child.observe(now - since)
    return now
