"""The topic vocabulary of ``/generate``: the only words a caller can put into a prompt.

``topic`` used to be free text, and free text in a prompt is an injection channel ("Ignore
previous instructions and …"). It is now one of these names — every category plus a few
finer topics, each mapped to the category whose fallback and few-shot examples fit it. The
list is part of the HTTP contract (an ``enum`` in the OpenAPI document); adding a topic is
a backwards-compatible change, removing one is not.
"""

from __future__ import annotations

from collections.abc import Mapping

from tipml.features.profile_schema import CATEGORIES

_FINER: Mapping[str, str] = {
    "bedtime": "sleep",
    "naps": "sleep",
    "deep work": "focus",
    "screen time": "focus",
    "planning": "focus",
    "walking": "movement",
    "stretching": "movement",
    "posture": "movement",
    "exercise": "movement",
    "breathing": "mindfulness",
    "meditation": "mindfulness",
    "gratitude": "mindfulness",
    "journaling": "mindfulness",
    "hydration": "nutrition",
    "healthy eating": "nutrition",
    "breaks": "stress",
    "relaxation": "stress",
    "friends": "social",
    "family": "social",
}

#: topic -> category; ``wellbeing`` is the general topic (no category).
TOPICS: Mapping[str, str | None] = {
    **{c: c for c in CATEGORIES},
    **_FINER,
    "wellbeing": None,
}


def topic_names() -> list[str]:
    return sorted(TOPICS)
