"""User text is data: how it is made safe before it reaches a prompt or a feature."""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
_MARKUP = re.compile(r"[<>{}\[\]`#*|\\]")
_ROLE = re.compile(r"(?i)\b(system|assistant|user|human|ai|tip|topic)\s*:")


def clean_user_text(text: str, max_len: int = 60) -> str:
    """Text that came from a user is data: strip control/zero-width chars, cap the length."""
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub(" ", text)
    text = _MARKUP.sub(" ", text)
    # role markers ("system:", "assistant:") lose their colon: they read as words, not turns
    text = _ROLE.sub(lambda m: f"{m.group(1)} -", text)
    text = " ".join(text.split())
    return text[:max_len].strip()
