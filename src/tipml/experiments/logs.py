"""Reading logged decisions for evaluation and reports: a CSV/Parquet table, or the project's
own Parquet archive (decisions joined with their feedback). The I/O shell around ``ope`` and
``report``; DuckDB does the reading.

The join: a decision's *reactions* are the distinct feedback events (by ``event_id``) that
name its ``decision_id``; its *reward* is the reward of its first reaction by stream order,
0 when no reaction was logged (``no_reaction_reward``). A decision re-published outside the
duplicate window is archived twice and read once (by decision id); a feedback event
re-published under a new message id likewise. So every exposure and every reaction counts
once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from tipml.domain.decisions import decode_decision
from tipml.domain.rewards import RewardTable
from tipml.events.location import ArchiveLocation
from tipml.experiments.ope import LoggedData, OPEError


def read_table(
    path: Path,
    *,
    action_col: str,
    reward_col: str,
    propensity_col: str,
    n_actions: int | None = None,
) -> LoggedData:
    """A flat log from a CSV or Parquet file (by suffix)."""
    if not path.exists():
        raise OPEError(f"{path}: no such file")
    reader = "read_parquet" if path.suffix in (".parquet", ".pq") else "read_csv_auto"
    con = duckdb.connect()
    try:
        rel = con.sql(f"SELECT * FROM {reader}(?)", params=[str(path)])  # noqa: S608
        columns = list(rel.columns)
    except duckdb.Error as exc:
        raise OPEError(f"{path}: cannot be read: {str(exc).splitlines()[0]}") from None
    for flag, col in (
        ("--action-col", action_col),
        ("--reward-col", reward_col),
        ("--propensity-col", propensity_col),
    ):
        if col not in columns:
            raise OPEError(f"{flag}: no column {col!r} in {path.name} (has: {', '.join(columns)})")
    rows = con.execute(
        f'SELECT CAST("{action_col}" AS VARCHAR), TRY_CAST("{reward_col}" AS DOUBLE), '  # noqa: S608
        f'TRY_CAST("{propensity_col}" AS DOUBLE) FROM {reader}(?)',
        [str(path)],
    ).fetchall()
    if not rows:
        raise OPEError(f"{path.name}: no rows")
    actions = [r[0] for r in rows]
    rewards = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=np.float64)
    props = np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64)
    if any(a is None for a in actions):
        raise OPEError(f"--action-col: row {actions.index(None)} has no action")
    return LoggedData.from_table(actions, rewards, props, n_actions=n_actions)


@dataclass
class Exposure:
    """One logged decision with what followed."""

    decision_id: str
    kind: str
    user_id: str | None
    payload: dict[str, Any]
    reactions: list[str] = field(default_factory=list)  # distinct feedback events, in order
    reward: float = 0.0  # the first reaction's; no_reaction_reward without one


def _parquet(root: ArchiveLocation, stream: str) -> list[str] | None:
    return root.files(stream) or None


def exposures(
    offline: ArchiveLocation | Path | str,
    rewards: RewardTable,
    *,
    kind: str | None = None,
    no_reaction_reward: float = 0.0,
) -> list[Exposure]:
    """Every logged decision (of ``kind``, if given) once, joined with its reactions."""
    offline_root = ArchiveLocation.of(offline)
    decisions = _parquet(offline_root, "decisions")
    if decisions is None:
        return []
    con = offline_root.connect()
    where = "AND kind = ?" if kind else ""
    params: list[Any] = [decisions] + ([kind] if kind else [])
    out: dict[str, Exposure] = {}
    for decision_id, row_kind, user_id, payload in con.execute(
        "SELECT decision_id, kind, user_id, payload FROM read_parquet(?) "  # noqa: S608
        f"WHERE valid AND decision_id IS NOT NULL {where} ORDER BY stream_seq",
        params,
    ).fetchall():
        if decision_id in out:
            continue  # re-published outside the duplicate window
        out[decision_id] = Exposure(decision_id, row_kind, user_id, decode_decision(payload))
    feedback = _parquet(offline_root, "feedback")
    if feedback is None or not out:
        for e in out.values():
            e.reward = no_reaction_reward
        return list(out.values())
    seen: set[str] = set()
    for event_id, decision_id, reaction in con.execute(
        "SELECT event_id, decision_id, reaction FROM read_parquet(?) "
        "WHERE valid AND decision_id IS NOT NULL ORDER BY stream_seq",
        [feedback],
    ).fetchall():
        exposure = out.get(decision_id)
        if exposure is None or event_id in seen or reaction not in rewards.table:
            continue
        seen.add(event_id)
        exposure.reactions.append(reaction)
    for e in out.values():
        e.reward = rewards.reward(e.reactions[0]) if e.reactions else no_reaction_reward
    return list(out.values())


def logged_scores(items: Sequence[Exposure]) -> LoggedData:
    """``/score`` decisions as evaluation data: each decision's candidates with their logged
    scores, the top-ranked one as the action taken (the tip shown first), its logged
    propensity, and the decision's reward."""
    rows = [e for e in items if e.kind == "score" and e.payload.get("candidates")]
    if not rows:
        raise OPEError("the decision log holds no /score decisions with candidates")
    names: dict[str, int] = {}
    width = max(len(e.payload["candidates"]) for e in rows)
    ids = np.full((len(rows), width), -1, dtype=np.int64)
    scores = np.full((len(rows), width), np.nan)
    taken = np.zeros(len(rows), dtype=np.int64)
    props = np.zeros(len(rows))
    for i, e in enumerate(rows):
        for j, c in enumerate(e.payload["candidates"]):
            ids[i, j] = names.setdefault(str(c["tip_id"]), len(names))
            scores[i, j] = float(c.get("score", np.nan))
            if c.get("rank") == 1:
                taken[i] = j
                props[i] = float(c.get("propensity", 0.0))
    return LoggedData(
        ids=ids,
        taken=taken,
        rewards=np.array([e.reward for e in rows]),
        propensities=props,
        scores=scores,
        actions=tuple(names),
    )


def logged_prompts(items: Sequence[Exposure]) -> LoggedData:
    """``/generate`` decisions an experiment made: the prompt version as the action, the
    variant's logged propensity."""
    rows = [
        e for e in items if e.kind == "generate" and e.payload.get("variant_propensity") is not None
    ]
    if not rows:
        raise OPEError("the decision log holds no /generate decisions made by an experiment")
    return LoggedData.from_table(
        [e.payload["prompt_version"] for e in rows],
        [e.reward for e in rows],
        [float(e.payload["variant_propensity"]) for e in rows],
    )
