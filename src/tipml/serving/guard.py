"""The output guard: decides whether an LLM's text may be shown to a user as a tip.

Pure. ``check`` first normalises harmless noise (surrounding whitespace and quotes, a leading
"Tip:" label), then accepts the text or names the first rule it breaks. A rejected text is
never repaired into something the model did not write: ``/generate`` serves the fallback.

It checks provenance as well as format: a text that reproduces a run of
``INPUT_RUN_WORDS`` words from anything a user controls (signal titles in the prompt's
activity block, the topic) is refused — that is how an injected instruction comes back out —
and so is a near-copy of a few-shot example (``EXAMPLE_SIMILARITY``), not only an exact one.
One word is enough when it is shouted: an injection's payload is typically a capitalised
marker ("say PWNED"), so a word written in capitals in user-controlled text may not appear in
the output in any case, and a tip never shouts (an all-caps word of ``SHOUT_LETTERS`` letters
or more that the trusted prompt does not contain is refused as ``shouting``).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

_URL = re.compile(
    r"(?i)\b(?:https?://|ftp://|www\.)\S+|\b[a-z0-9-]+\.(?:com|org|net|io|ai|co|app|"
    r"ly|me|info|biz|dev|xyz|de|uk|fr)\b(?:/\S*)?"
)
_EMAIL = re.compile(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b")
_PHONE_RUN = re.compile(r"\+?\(?\d[\d\s().-]{5,}\d")
_NUMBER_RUN = re.compile(r"\d[\d\s().-]{6,}\d")  # 8+ characters of digits and separators
_HTML = re.compile(r"<\s*/?\s*[a-zA-Z][^>]*>|&(?:[a-z]+|#\d+);")
_MARKDOWN = re.compile(r"\*\*|__|`|~~|\[[^\]]*\]\([^)]*\)|^\s*(?:#|[-*+]\s|\d+[.)]\s|>\s)|\|.*\|")
_SENTENCE_END = re.compile(r"[.!?](?:\s+|$)")
_LABEL = re.compile(r"^(?:tip|note|answer)\s*:\s*", re.IGNORECASE)
SHOUT_LETTERS = 4  # "TV", "REM" and "OK" are fine; "PWNED" is not
_SHOUTED = re.compile(rf"(?<![A-Za-z])[A-Z]{{{SHOUT_LETTERS},}}(?![A-Za-z])")
_QUOTES = "\"'\u201c\u201d\u2018\u2019\u00ab\u00bb"


@dataclass(frozen=True)
class GuardResult:
    ok: bool
    text: str
    reason: str | None = None  # short, metric-friendly label when rejected


def normalise(text: str) -> str:
    text = text.strip()
    text = _LABEL.sub("", text).strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


CANARY_PART_CHARS = 4


def canary_parts(canary: str) -> set[str]:
    """The canary token's words of ``CANARY_PART_CHARS`` characters or more ("canary",
    "7f3a9c" of "zx-canary-7f3a9c"): a tip never needs one, so a part of the token in the
    output is a leak as much as the whole token — an injected "reply with the canary" is
    answered with the word, not the token."""
    return {w for w in _words(canary) if len(w) >= CANARY_PART_CHARS}


INPUT_RUN_WORDS = 4
EXAMPLE_SIMILARITY = 0.75


def similarity(a: str, b: str) -> float:
    """Word-level similarity in [0, 1] (difflib's ratio over the two word sequences)."""
    return difflib.SequenceMatcher(None, _words(a), _words(b), autojunk=False).ratio()


def echoes(text: str, source: str, n: int = 8) -> bool:
    """True when ``text`` shares a run of ``n`` consecutive words with ``source``."""
    tw, sw = _words(text), _words(source)
    if len(tw) < n or len(sw) < n:
        return False
    grams = {tuple(sw[i : i + n]) for i in range(len(sw) - n + 1)}
    return any(tuple(tw[i : i + n]) in grams for i in range(len(tw) - n + 1))


def check(
    raw: str,
    *,
    max_chars: int,
    canary: str,
    system_text: str,
    examples: tuple[str, ...] = (),
    user_texts: tuple[str, ...] = (),
    min_chars: int = 12,
) -> GuardResult:
    """``user_texts``: every user-controlled string that reached the prompt."""
    text = normalise(raw)

    def reject(reason: str) -> GuardResult:
        return GuardResult(False, text, reason)

    if not text:
        return reject("empty")
    if canary.lower() in text.lower() or echoes(text, system_text):
        return reject("prompt_echo")
    if canary_parts(canary) & set(_words(text)):  # "reply with the canary" -> "... your canary"
        return reject("prompt_echo")
    if len(text) > max_chars:
        return reject("too_long")
    if len(text) < min_chars or sum(any(c.isalpha() for c in w) for w in _words(text)) < 3:
        return reject("too_short")  # three words, and numbers are not words
    if "\n" in text or "\r" in text:
        return reject("multiple_lines")
    if _HTML.search(text):
        return reject("html")
    if _MARKDOWN.search(text):
        return reject("markdown")
    if _EMAIL.search(text):
        return reject("email")
    if _URL.search(text):
        return reject("url")
    if any(sum(ch.isdigit() for ch in run) >= 7 for run in _PHONE_RUN.findall(text)):
        return reject("phone")
    if _NUMBER_RUN.search(text):  # "10 - 11.30", "2026-11-29": read as a number, not a tip
        return reject("phone")
    ends = _SENTENCE_END.findall(text.rstrip())
    if len(ends) > 1:
        return reject("multiple_sentences")
    if any(echoes(text, source, INPUT_RUN_WORDS) for source in user_texts):
        return reject("reproduces_input")
    shouted_input = {w.lower() for source in user_texts for w in _SHOUTED.findall(source)}
    if shouted_input & set(_words(text)):
        return reject("reproduces_input")
    trusted = set(_words(system_text)).union(*(_words(ex) for ex in examples))
    if any(w.lower() not in trusted for w in _SHOUTED.findall(text)):
        return reject("shouting")
    if any(similarity(text, normalise(ex)) >= EXAMPLE_SIMILARITY for ex in examples):
        return reject("copied_example")
    if not re.search(r"[A-Za-z]", text[0]) and not text[0].isdigit():
        return reject("malformed")
    return GuardResult(True, text)
