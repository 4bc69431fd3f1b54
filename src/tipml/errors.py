"""One error root for the whole package.

Core code raises these; the HTTP edge (``serving/app.py``) translates them once into
``{"error": code, "detail": message}`` with ``status_code``. Nothing below the edge raises
``HTTPException``.
"""

from __future__ import annotations


class TipmlError(Exception):
    """Root of every error tipml raises on purpose."""

    code: str = "internal_error"
    status_code: int = 500

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class ConfigError(TipmlError):
    """The configuration is unusable; the process refuses to start."""

    code = "config_error"


class InvalidRequest(TipmlError):
    """A client sent something we cannot accept; ``field`` names it."""

    code = "invalid_request"
    status_code = 422


class InvalidFeature(InvalidRequest):
    """A profile feature has the wrong dtype or range."""

    code = "invalid_profile_feature"


class UnknownPromptVersion(InvalidRequest):
    code = "unknown_prompt_version"


class Unauthorized(TipmlError):
    code = "unauthorized"
    status_code = 401


class PayloadTooLarge(TipmlError):
    code = "payload_too_large"
    status_code = 413


class ModelLoadError(TipmlError):
    """A model artifact could not be loaded or does not fit the serving features."""

    code = "model_load_error"
    status_code = 503


class GatewayError(TipmlError):
    """An LLM call failed; ``reason`` is a short, metric-friendly label.

    Never reaches a client: ``/generate`` turns it into the fallback text.
    """

    code = "llm_error"
    status_code = 502

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason
