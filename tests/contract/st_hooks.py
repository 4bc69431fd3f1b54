"""Schemathesis hooks for the contract test (loaded through ``SCHEMATHESIS_HOOKS``).

JSON Schema cannot say "tip_id is unique among candidates" — ``uniqueItems`` only forbids
identical objects — so bodies whose candidates repeat a ``tip_id`` with otherwise different
fields are left out: the service refuses them with a 422 naming the duplicate, as its manual
and the OpenAPI description say, and ``tests/api`` tests exactly that.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def filter_body(ctx: Any, body: Any) -> bool:
    if not isinstance(body, dict):
        return True
    candidates = body.get("candidates")
    if not isinstance(candidates, list):
        return True
    first: dict[str, Any] = {}
    for c in candidates:
        if isinstance(c, dict) and isinstance(c.get("tip_id"), str):
            seen = first.setdefault(c["tip_id"], c)
            if seen != c:
                return False
    return True


@schemathesis.hook
def filter_case(ctx: Any, case: Any) -> bool:
    """The same rule for whole cases (the coverage phase builds cases, not bodies)."""
    return filter_body(ctx, getattr(case, "body", None))
