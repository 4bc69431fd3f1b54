"""Model cards: what a registered ranker is for, what it reads, what it learnt from, how it
measured, and every alias change since. Pure: a card is built from the registration's facts
and rendered as Markdown; the registry stores it (``model_card.json`` next to the model, the
rollout history as a version tag, since it grows after registration)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tipml.features.tip_features import MODEL_COLUMNS

INTENDED_USE = (
    "Ranks candidate wellbeing tips for one user at /score by predicted reward of showing "
    "the tip (0 = ignored, 1 = completed). For ordering tips already judged safe and "
    "relevant by the recommender; not for any decision about a person."
)
LIMITATIONS = (
    "Learnt from logged decisions of earlier rankers: tips those rankers rarely ranked first "
    "have few outcomes, so their predictions are uncertain (exploration in /score offsets "
    "this). Only the top-ranked tip's reaction is observed. Cohort metrics cover platform, "
    "time-zone region and tenure only; /score carries no locale or other attribute.",
)


@dataclass(frozen=True)
class RolloutEvent:
    at: str  # ISO time
    alias: str
    version: str | None  # the version the alias now points at (None: removed)
    previous: str | None  # the version it pointed at before
    by: str
    reason: str


@dataclass
class ModelCard:
    name: str
    version: str
    sha256: str
    training_window: tuple[str, str]
    training_set_hash: str
    training_rows: int
    metrics: dict[str, float]
    fairness: dict[str, dict[str, dict[str, float]]]
    gaps: dict[str, dict[str, float]]
    ope: dict[str, Any]
    params: dict[str, Any]
    inputs: list[dict[str, str]] = field(default_factory=list)
    intended_use: str = INTENDED_USE
    limitations: tuple[str, ...] = LIMITATIONS
    rollout: list[RolloutEvent] = field(default_factory=list)
    created: str = ""

    @staticmethod
    def inputs_for(names: Sequence[str]) -> list[dict[str, str]]:
        by = {c.name: c for c in MODEL_COLUMNS}
        return [
            {
                "name": n,
                "dtype": by[n].dtype,
                "source": by[n].source,
                "description": by[n].description,
            }
            for n in names
        ]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["training_window"] = list(self.training_window)
        out["limitations"] = list(self.limitations)
        return out

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], rollout: Sequence[Mapping[str, Any]] = ()
    ) -> ModelCard:
        fields = dict(data)
        fields["training_window"] = tuple(fields.get("training_window") or ("", ""))
        fields["limitations"] = tuple(fields.get("limitations") or LIMITATIONS)
        fields["rollout"] = [RolloutEvent(**e) for e in rollout]
        return cls(**fields)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.4f}"
    return str(value)


def render(card: ModelCard) -> str:
    lines = [
        f"# Model card: {card.name} version {card.version}",
        "",
        f"Registered {card.created}. Artifact SHA-256 `{card.sha256}` (LightGBM text format).",
        "",
        "## Intended use",
        "",
        card.intended_use,
        "",
        "## Inputs",
        "",
        "| name | dtype | source | description |",
        "|---|---|---|---|",
        *(
            f"| `{i['name']}` | {i['dtype']} | {i['source']} | {i['description']} |"
            for i in card.inputs
        ),
        "",
        "## Training data",
        "",
        f"- window: {card.training_window[0]} → {card.training_window[1]}",
        f"- training set hash: `{card.training_set_hash}`",
        f"- rows: {card.training_rows}",
        f"- parameters: {', '.join(f'{k}={v}' for k, v in card.params.items())}",
        "",
        "## Offline metrics (held-out, split by time)",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {_num(v)} |" for k, v in card.metrics.items()),
        "",
        "## Fairness (per cohort)",
        "",
    ]
    for cohort, groups in card.fairness.items():
        gaps = card.gaps.get(cohort, {})
        lines += [
            f"**{cohort}** — gaps: " + ", ".join(f"{m} {_num(g)}" for m, g in gaps.items()),
            "",
            "| group | rows | auc | log_loss | ece |",
            "|---|---|---|---|---|",
            *(
                f"| {g} | {int(m.get('rows', 0))} | {_num(m.get('auc'))} | "
                f"{_num(m.get('log_loss'))} | {_num(m.get('ece'))} |"
                for g, m in groups.items()
            ),
            "",
        ]
    lines += ["## Off-policy estimate (rank by this model vs the champion's ranking)", ""]
    if card.ope:
        lines.append(
            f"- decisions: {card.ope.get('decisions')}, top-1 agreement: "
            f"{_num(card.ope.get('top1_agreement'))}"
        )
        for who in ("challenger", "champion"):
            for est, v in (card.ope.get(who) or {}).items():
                lo, hi = v["ci"]
                lines.append(f"- {who} {est}: {v['value']:.4f} [{lo:.4f}, {hi:.4f}]")
    lines += ["", "## Limitations", "", *(f"- {x}" for x in card.limitations), ""]
    lines += ["## Rollout history", ""]
    if not card.rollout:
        lines.append("No alias has pointed at this version yet.")
    else:
        lines += ["| when | alias | change | by | why |", "|---|---|---|---|---|"]
        for e in card.rollout:
            change = f"{e.previous or '—'} → {e.version or '(removed)'}"
            lines.append(f"| {e.at} | {e.alias} | {change} | {e.by} | {e.reason} |")
    return "\n".join(lines) + "\n"
