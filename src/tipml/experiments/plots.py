"""Charts for the reward report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_report(result: dict[str, Any], path: Path) -> Path:
    """Reward per variant with its interval, one panel per experiment and one for the prompt
    versions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, e["variants"]) for name, e in result["experiments"].items()]
    panels.append(("prompt versions", result["prompt_versions"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels, strict=True):
        names = [r["name"] for r in rows]
        means = [r["reward"]["mean"] for r in rows]
        lower = [r["reward"]["mean"] - r["reward"]["ci"][0] for r in rows]
        upper = [r["reward"]["ci"][1] - r["reward"]["mean"] for r in rows]
        ax.bar(names, means, yerr=[lower, upper], capsize=4, color="#4c78a8")
        for i, r in enumerate(rows):
            ax.annotate(f"n={r['exposures']}", (i, 0), ha="center", va="bottom", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("reward per exposure (95% interval)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
