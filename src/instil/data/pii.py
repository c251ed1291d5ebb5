"""A PII and secret scan: emails, phone numbers, payment cards (Luhn-checked), IBANs and API keys.

    scan_pii("mail jane.doe@example.org")      # [PiiMatch(kind="email", start=5, end=25, ...)]
    redact(example)                            # a copy with [EMAIL], [PHONE], [CARD], [IBAN], [SECRET] in place

Precision first: dates, prices, versions, UUIDs, order and invoice numbers are not flagged.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from instil.data.records import Example, canonical_json

__all__ = ["PiiMatch", "redact", "redact_text", "scan_example", "scan_pii"]


@dataclass(frozen=True)
class PiiMatch:
    """One match of :func:`scan_pii` in a text."""

    kind: str
    """``email``, ``phone``, ``card``, ``iban`` or ``secret``."""
    start: int
    """Start offset in the text."""
    end: int
    """End offset (exclusive)."""
    preview: str
    """The match, masked: safe to print in a report."""


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[\s-]?){12,18}\d(?![\d-])")
# International numbers start with +; without it only the North American (xxx) xxx-xxxx shape is taken, which
# leaves dates (2024-01-15), versions (1.2.3), prices and IPs alone.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w-])"
)
_NOT_PHONE_BEFORE = re.compile(r"(?:order|invoice|ref|reference|id|no|number|ticket|#)\W{0,3}$", re.I)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_SECRETS = re.compile(
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bgh[pousr]_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|\bAIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|\bBearer\s+[A-Za-z0-9._~+/-]{20,}=*"
)
_ASSIGNED = re.compile(
    r"(?i)(?<![a-z])(?:api[_-]?key|secret|token|password|passwd|access[_-]?key|private[_-]?key|auth)\w*\"?\s*[:=]\s*"
    r"[\"']?([A-Za-z0-9_\-+/=.]{16,})"
)
# Cheap checks every text goes through; only texts that pass them are scanned by the patterns above. (Plain
# substring tests: one regex alternation of these words costs ~5x more per text.)
_DIGIT_RUN = re.compile(r"\d[\d ().-]{5,}\d")
_HINTS = (
    "@",
    "key",
    "secret",
    "token",
    "passw",
    "auth",
    "bearer",
    "sk-",
    "akia",
    "asia",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xox",
    "aiza",
)


def _maybe_pii(text: str) -> bool:
    if _DIGIT_RUN.search(text):
        return True
    low = text.lower()
    return any(h in low for h in _HINTS)


_PLACEHOLDERS = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "card": "[CARD]",
    "iban": "[IBAN]",
    "secret": "[SECRET]",
}


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_ok(digits: str) -> bool:
    # Issuer prefixes (Visa 4, Mastercard 51-55/22-27, Amex 34/37, Discover/UnionPay 6, JCB/Diners 35/36/30) and
    # the Luhn check; together they reject order numbers and random digit runs.
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and len(set(digits)) > 1 and _luhn(digits)


def _iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _mask(kind: str, text: str) -> str:
    if kind == "email":
        user, _, domain = text.partition("@")
        host, _, tld = domain.rpartition(".")
        return f"{user[:1]}***@{host[:1]}***.{tld}"
    if kind in ("card", "phone", "iban"):
        return "*" * max(len(text) - 4, 0) + text[-4:]
    return text[:4] + "***"


def scan_pii(text: str) -> list[PiiMatch]:
    """Emails, phone numbers, payment cards (Luhn-checked), IBANs (mod-97) and secrets in a text, by position.

    Overlaps go to the more specific kind (secret, card, iban, email, phone).
    """
    if not _maybe_pii(text):
        return []
    found: list[tuple[int, int, str]] = []
    for m in _SECRETS.finditer(text):
        found.append((m.start(), m.end(), "secret"))
    for m in _ASSIGNED.finditer(text):
        value = m.group(1)
        # Identifiers and words are not secrets: demand mixed character classes and high entropy.
        classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d"))
        if classes >= 2 and _entropy(value) >= 3.5:
            found.append((m.start(1), m.end(1), "secret"))
    for m in _CARD.finditer(text):
        if _card_ok(re.sub(r"\D", "", m.group())):
            found.append((m.start(), m.end(), "card"))
    for m in _IBAN.finditer(text):
        if _iban_ok(m.group()):
            found.append((m.start(), m.end(), "iban"))
    for m in _EMAIL.finditer(text):
        found.append((m.start(), m.end(), "email"))
    for m in _PHONE.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 7 <= len(digits) <= 15 and not _NOT_PHONE_BEFORE.search(text[max(0, m.start() - 12) : m.start()]):
            found.append((m.start(), m.end(), "phone"))
    rank = {"secret": 0, "card": 1, "iban": 2, "email": 3, "phone": 4}
    taken: list[tuple[int, int, str]] = []
    for start, end, kind in sorted(found, key=lambda f: (rank[f[2]], f[0])):
        if all(end <= s or start >= e for s, e, _ in taken):
            taken.append((start, end, kind))
    return [PiiMatch(k, s, e, _mask(k, text[s:e])) for s, e, k in sorted(taken)]


def redact_text(text: str) -> str:
    """The text with every :func:`scan_pii` match replaced by ``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IBAN]``
    or ``[SECRET]``."""
    for m in reversed(scan_pii(text)):
        text = text[: m.start] + _PLACEHOLDERS[m.kind] + text[m.end :]
    return text


def _text_fields(example: Example) -> Iterator[tuple[str, str, Callable[[str], None]]]:
    """(field path, text, setter) of every string a person may have typed into an example."""
    for side in ("messages", "rejected"):
        for i, msg in enumerate(getattr(example, side) or []):
            if isinstance(msg.content, str):
                yield f"{side}[{i}].content", msg.content, lambda v, m=msg: setattr(m, "content", v)
            elif isinstance(msg.content, list):
                for j, part in enumerate(msg.content):
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        yield (
                            f"{side}[{i}].content[{j}].text",
                            part["text"],
                            lambda v, p=part: p.__setitem__("text", v),
                        )


def scan_example(example: Example) -> list[tuple[str, str, int, int, str]]:
    """(field, kind, start, end, preview) of every PII match in an example's messages."""
    return [
        (path, m.kind, m.start, m.end, m.preview) for path, text, _ in _text_fields(example) for m in scan_pii(text)
    ]


def redact(example: Example) -> Example:
    """A copy of the example with PII in its messages replaced by placeholders (the input is not changed)."""
    copy = Example.from_dict(json.loads(canonical_json(example.to_dict())), source=example.source)
    for _, text, set_text in _text_fields(copy):
        new = redact_text(text)
        if new != text:
            set_text(new)
    return copy
