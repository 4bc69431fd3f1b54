"""The training set: ``/score`` decisions joined with how users reacted, as model rows.

One row per *shown* candidate (rank ≤ ``shown_ranks`` in the decision — the recommender shows
the top of the ranking) with the features serving scored it with, rebuilt from the decision
log through the same definitions (``pipelines.skew.rebuild_matrix`` →
``features.tip_features``), so no value from after the decision can enter a row. Its label is
the reward (``domain.rewards``) of the first reaction to that tip that names the decision and
arrives within ``wait_s`` of it; no reaction within the wait → ``default_reward``. A decision
whose wait has not yet passed at ``as_of`` has no label yet and is left out (it would
otherwise count as a no-reaction).

The builder refuses — ``DatasetError``, one line — a window with no decisions, a set with no
positive or no negative outcomes, a log that lacks the features (decisions logged before
serving recorded them), and a log whose rebuilt matrices do not match serving's hashes (the
skew check, on a deterministic sample of ``skew_sample`` decisions).

Every set has a content hash (features, labels, decision ids, spec) and a recorded window, so
a registered model names exactly what it learnt from. DuckDB reads the Parquet archive;
duplicates (a decision or a reaction re-published under a new message id) count once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import orjson

from tipml.domain.decisions import decode_decision
from tipml.domain.rewards import RewardTable
from tipml.errors import TipmlError
from tipml.events.location import ArchiveLocation
from tipml.features.profile_schema import ValidatedProfile, validate_profile
from tipml.features.tip_features import FEATURE_NAMES, FEATURE_SET, Candidate, feature_rows
from tipml.pipelines.skew import SkewReport, rebuild_matrix, skew_report

POSITIVE_REWARD = 0.5  # a reward at or above this is a positive outcome (AUC, balance check)
NEW_USER_DAYS = 30  # "new" vs "tenured" cohort
_CHUNK_ROWS = 50_000
_NEEDED = ("local_hour", "candidates", "ts")
_NEEDED_CANDIDATE = ("tip_impressions", "tip_reward_sum", "rank")


class DatasetError(TipmlError):
    """The log cannot make a training set: no data, one-sided outcomes, missing features."""

    code = "invalid_dataset"


@dataclass(frozen=True)
class DatasetSpec:
    start: datetime | None = None  # decision time, inclusive
    end: datetime | None = None  # decision time, exclusive
    wait_s: float = 3600.0  # how long after a decision a reaction still counts
    default_reward: float = 0.0  # the label of a shown tip nobody reacted to in time
    shown_ranks: int = 1  # candidates at rank ≤ this were shown to the user
    skew_sample: int = 2000  # decisions the skew check rebuilds (0: all)
    max_skew_rate: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("start", "end"):
            out[key] = out[key].isoformat() if out[key] else None
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DatasetSpec:
        """The inverse of ``as_dict`` (a deployment's JSON parameters)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise DatasetError(f"spec: unknown field(s) {unknown}; known: {sorted(names)}")
        values = dict(raw)
        for key in ("start", "end"):
            if isinstance(values.get(key), str):
                values[key] = datetime.fromisoformat(values[key])
        return cls(**values)


@dataclass
class TrainingSet:
    x: npt.NDArray[np.float64]  # rows x FEATURE_NAMES
    y: npt.NDArray[np.float64]  # rewards in [0, 1]
    decision_ids: list[str]
    tip_ids: list[str]
    users: list[str]
    ts: npt.NDArray[np.float64]  # decision time, unix seconds
    cohorts: dict[str, list[str]]  # cohort column -> value per row
    window: tuple[str, str]  # first and last decision time included (ISO)
    spec: DatasetSpec
    skew: SkewReport
    content_hash: str = ""
    offline_root: ArchiveLocation | None = None
    decision_labels: dict[str, float] = field(default_factory=dict)  # the top tip's label
    feature_names: tuple[str, ...] = FEATURE_NAMES

    def load_decisions(self, decision_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The logged payloads of these decisions, in the given order (read back from the
        archive: a training set does not hold every decision's candidates in memory)."""
        path = _parquet(self.offline_root, "decisions") if self.offline_root else None
        if path is None or self.offline_root is None or not decision_ids:
            return []
        found: dict[str, dict[str, Any]] = {}
        con = self.offline_root.connect()
        con.execute("CREATE TEMP TABLE wanted (id VARCHAR)")
        con.executemany("INSERT INTO wanted VALUES (?)", [(i,) for i in decision_ids])
        for decision_id, payload in con.execute(
            "SELECT decision_id, payload FROM read_parquet(?) WHERE valid AND kind = 'score' "
            "AND decision_id IN (SELECT id FROM wanted) ORDER BY stream_seq",
            [path],
        ).fetchall():
            found.setdefault(decision_id, decode_decision(payload))
        return [found[i] for i in decision_ids if i in found]

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def positives(self) -> int:
        return int((self.y >= POSITIVE_REWARD).sum())

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.n,
            "decisions": len(self.decision_labels),
            "positives": self.positives,
            "mean_reward": float(self.y.mean()) if self.n else None,
            "window": list(self.window),
            "content_hash": self.content_hash,
            "spec": self.spec.as_dict(),
            "skew": self.skew.as_dict(),
            "features": list(self.feature_names),
        }


def _parse_ts(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


def cohorts_of(decision: Mapping[str, Any]) -> dict[str, str]:
    """The fairness cohorts of a decision: platform, region (the profile time zone's area —
    ``/score`` carries no locale) and tenure (new: signed up < ``NEW_USER_DAYS`` days ago)."""
    profile = decision.get("profile_features") or {}
    days = profile.get("days_since_signup")
    tz = profile.get("timezone")
    return {
        "platform": str(decision.get("platform") or "unknown"),
        "region": tz.split("/", 1)[0] if isinstance(tz, str) else "unknown",
        "tenure": "unknown" if days is None else ("new" if days < NEW_USER_DAYS else "tenured"),
    }


def _parquet(root: ArchiveLocation, stream: str) -> list[str] | None:
    return root.files(stream) or None


def _decisions(con: duckdb.DuckDBPyConnection, path: list[str]) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    # No ORDER BY: sorting would hold every payload in memory at once. DuckDB keeps the
    # files' order (preserve_insertion_order), which the archiver and `compact` write in
    # stream order, so the set's row order — and its content hash — is deterministic.
    cursor = con.execute(
        "SELECT decision_id, payload FROM read_parquet(?) "
        "WHERE valid AND kind = 'score' AND decision_id IS NOT NULL",
        [path],
    )
    while rows := cursor.fetchmany(10_000):
        for decision_id, payload in rows:
            if decision_id in seen:
                continue  # re-published outside the duplicate window
            seen.add(decision_id)
            yield decode_decision(payload)


def _reactions(
    con: duckdb.DuckDBPyConnection, path: list[str] | None, rewards: RewardTable
) -> dict[tuple[str, str], tuple[float, float]]:
    """(decision id, tip id) -> (event time, reward) of the first reaction, by stream order."""
    out: dict[tuple[str, str], tuple[float, float]] = {}
    if path is None:
        return out
    seen: set[str] = set()
    for event_id, decision_id, tip_id, reaction, ts in con.execute(
        "SELECT event_id, decision_id, tip_id, reaction, ts FROM read_parquet(?) "
        "WHERE valid AND decision_id IS NOT NULL ORDER BY stream_seq",
        [path],
    ).fetchall():
        if event_id in seen or reaction not in rewards.table:
            continue
        seen.add(event_id)
        at = ts.timestamp() if isinstance(ts, datetime) else _parse_ts(ts)
        if at is not None:
            out.setdefault((decision_id, tip_id), (at, rewards.reward(reaction)))
    return out


def _missing(decision: Mapping[str, Any]) -> str | None:
    for key in _NEEDED:
        if decision.get(key) is None:
            return key
    for c in decision["candidates"]:
        for key in _NEEDED_CANDIDATE:
            if key not in c:
                return f"candidates.{key}"
    return None


def _hash(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], ids: Sequence[str], spec: DatasetSpec
) -> str:
    h = hashlib.sha256()
    h.update(orjson.dumps({"features": list(FEATURE_NAMES), "spec": spec.as_dict()}))
    h.update(np.ascontiguousarray(x, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(y, dtype="<f8").tobytes())
    h.update("\n".join(ids).encode())
    return h.hexdigest()


def build_training_set(
    offline: ArchiveLocation | Path | str,
    rewards: RewardTable,
    spec: DatasetSpec = DatasetSpec(),
    *,
    as_of: datetime | None = None,
) -> TrainingSet:
    """The training set of the ``/score`` decisions in ``spec``'s window whose wait has passed
    at ``as_of`` (default: now)."""
    offline_root = ArchiveLocation.of(offline)
    decisions_path = _parquet(offline_root, "decisions")
    if decisions_path is None:
        raise DatasetError(f"no decisions archived under {offline_root.url}")
    horizon = (as_of or datetime.now(UTC)).timestamp() - spec.wait_s
    start = spec.start.timestamp() if spec.start else -np.inf
    end = spec.end.timestamp() if spec.end else np.inf
    con = offline_root.connect()
    reactions = _reactions(con, _parquet(offline_root, "feedback"), rewards)
    total = con.execute(
        "SELECT count(*) FROM read_parquet(?) WHERE valid AND kind = 'score'", [decisions_path]
    ).fetchone()
    step = max(1, int(total[0] if total else 0) // spec.skew_sample) if spec.skew_sample else 1
    chunks: list[npt.NDArray[np.float64]] = []
    candidates: list[Candidate] = []
    profiles: list[ValidatedProfile] = []
    hours: list[int] = []
    impressions: list[float] = []
    reward_sums: list[float] = []
    y: list[float] = []
    ids: list[str] = []
    tips: list[str] = []
    users: list[str] = []
    times: list[float] = []
    cohorts: dict[str, list[str]] = {"platform": [], "region": [], "tenure": []}
    sample: list[tuple[dict[str, Any], int, list[int]]] = []  # decision, first row, shown
    labels_of: dict[str, float] = {}
    missing: dict[str, int] = {}
    in_window = kept = other_set = 0
    onlines: list[Mapping[str, float]] = []
    for n, d in enumerate(_decisions(con, decisions_path)):
        at = _parse_ts(d.get("ts"))
        if at is None or not start <= at < end:
            continue
        in_window += 1
        if at > horizon:
            continue  # its reactions may still arrive: no label yet
        if d.get("feature_set") != FEATURE_SET:
            other_set += 1  # logged under another column set: its rows would not match
            continue
        gap = _missing(d)
        if gap is not None:
            missing[gap] = missing.get(gap, 0) + 1
            continue
        try:
            profile = validate_profile(d.get("profile_features") or {})
        except TipmlError:
            missing["profile_features"] = missing.get("profile_features", 0) + 1
            continue
        cands = d["candidates"]
        shown = sorted(
            (i for i, c in enumerate(cands) if int(c["rank"]) <= spec.shown_ranks),
            key=lambda i: int(cands[i]["rank"]),
        )
        if n % step == 0:
            sample.append((d, len(y), shown))
        kept += 1
        cohort = cohorts_of(d)
        decision_id = str(d["decision_id"])
        hour = int(d["local_hour"])
        online = d.get("user_online") or {}
        for i in shown:
            c = cands[i]
            tip = str(c["tip_id"])
            candidates.append(
                Candidate(tip, c.get("category"), tuple(c.get("tags", ())), c["source"])
            )
            profiles.append(profile)
            onlines.append(online)
            hours.append(hour)
            impressions.append(float(c["tip_impressions"]))
            reward_sums.append(float(c["tip_reward_sum"]))
            reaction = reactions.get((decision_id, tip))
            label = spec.default_reward
            if reaction is not None and reaction[0] - at <= spec.wait_s:
                label = reaction[1]
            y.append(label)
            ids.append(decision_id)
            tips.append(tip)
            users.append(str(d.get("user_id")))
            times.append(at)
            for name, value in cohort.items():
                cohorts[name].append(value)
        if shown:
            labels_of[decision_id] = y[-len(shown)]
        if len(candidates) >= _CHUNK_ROWS:  # bounded memory: rows become matrix chunks
            chunks.append(
                feature_rows(candidates, profiles, hours, impressions, reward_sums, onlines)
            )
            for part in (candidates, profiles, hours, impressions, reward_sums, onlines):
                part.clear()
    if not in_window:
        raise DatasetError("no /score decisions in the window" + _window_text(spec))
    if other_set and not kept:
        raise DatasetError(
            f"all {other_set} decisions in the window were logged under another feature "
            "set (the model columns changed since): train on decisions logged after the change"
        )
    if missing and not kept:
        worst = max(missing, key=lambda k: missing[k])
        raise DatasetError(
            f"features missing from the log: {worst} absent in {missing[worst]} decisions "
            "(logged before serving recorded it)"
        )
    if not kept:
        raise DatasetError(
            f"none of the {in_window} decisions in the window is older than the "
            f"{spec.wait_s:g} s reaction wait yet"
        )
    labels = np.array(y, dtype=np.float64)
    positives = int((labels >= POSITIVE_REWARD).sum())
    if positives == 0 or positives == len(labels):
        side = "positive" if positives == 0 else "negative"
        raise DatasetError(
            f"no {side} outcomes in {len(labels)} rows (reward ≥ {POSITIVE_REWARD} is positive)"
        )
    chunks.append(feature_rows(candidates, profiles, hours, impressions, reward_sums, onlines))
    matrix = chunks[0] if len(chunks) == 1 else np.vstack(chunks)
    del candidates, profiles, hours, impressions, reward_sums, onlines, chunks
    # The skew check, on the sample: serving's logged hash against the matrix rebuilt from the
    # log one request at a time, and the batch-built rows against that same rebuild.
    skew = skew_report(d for d, _, _ in sample)
    skew.checked = max(skew.checked, len(sample))
    skew.other_feature_set = other_set
    for d, first, shown in sample:
        rebuilt = rebuild_matrix(d)[shown]
        if not np.array_equal(rebuilt, matrix[first : first + len(shown)], equal_nan=True):
            skew.mismatches += 1
            if len(skew.examples) < 10:
                skew.examples.append(str(d.get("decision_id")))
    if skew.rate > spec.max_skew_rate:
        raise DatasetError(
            f"skew check failed: {skew.mismatches} of {skew.checked} rebuilt feature matrices "
            f"differ from what serving scored (e.g. decision {skew.examples[0]}); "
            "serving and training disagree on a feature definition"
        )
    stamps = np.array(times)
    window = (
        datetime.fromtimestamp(float(stamps.min()), UTC).isoformat(),
        datetime.fromtimestamp(float(stamps.max()), UTC).isoformat(),
    )
    return TrainingSet(
        x=matrix,
        y=labels,
        decision_ids=ids,
        tip_ids=tips,
        users=users,
        ts=stamps,
        cohorts=cohorts,
        window=window,
        spec=spec,
        skew=skew,
        content_hash=_hash(matrix, labels, ids, spec),
        offline_root=offline_root,
        decision_labels=labels_of,
    )


def _window_text(spec: DatasetSpec) -> str:
    if spec.start is None and spec.end is None:
        return ""
    lo = spec.start.isoformat() if spec.start else "the beginning"
    hi = spec.end.isoformat() if spec.end else "now"
    return f" [{lo}, {hi})"
