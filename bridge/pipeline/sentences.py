"""Split a streaming LLM reply into sentences for TTS.

The splitter is fed text pieces as the LLM yields them and hands back every sentence that
is complete, so TTS can speak sentence one while the LLM still writes sentence two.

Rules:

- A sentence ends at `.`, `?`, `!` (a run of them, e.g. `?!` or `...`, plus any closing
  quotes or brackets) followed by whitespace, and at every newline.
- A period is not an end when it sits inside a number (`3.5`, `v1.2`) — the next character
  is not whitespace — nor after a known abbreviation (`Mr.`, `Dr.`, `e.g.`, `i.e.`, `vs.`).
  Because a boundary needs the character after the punctuation, the decision on a trailing
  `.` waits for the next piece; `flush()` returns whatever is left at the end of the reply.
- **Early first chunk (a latency choice):** for the first chunk of a reply only, once at
  least `first_clause_min_chars` characters are buffered, a clause boundary (`,` `;` `:`
  followed by whitespace) also ends the chunk. TTS then starts on "Sure, I can look that
  up for you," instead of waiting for the whole first sentence; the prosody cost of a
  clause split is small, the time saved is one LLM clause (typically 100–300 ms).
- A chunk with no boundary is cut at the last space once it reaches `max_chars`, so a
  run-on reply never starves TTS.
"""

from __future__ import annotations

import re

__all__ = ["ABBREVIATIONS", "SentenceSplitter", "split_sentences"]

ABBREVIATIONS: frozenset[str] = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "cf",
        "approx",
        "inc",
        "ltd",
        "co",
        "corp",
        "dept",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "a.m",
        "p.m",
        "u.s",
    }
)
"""Words (lower case, without their final period) after which a period does not end a sentence."""

_END = re.compile(r"""[.?!]+["')\]]*(?=\s)|\n""")
_CLAUSE = re.compile(r"""[,;:]["')\]]*(?=\s)""")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")


def _is_abbreviation(text: str, period_at: int) -> bool:
    """True when the `.` at `period_at` closes a known abbreviation."""
    match = _WORD_BEFORE.search(text, 0, period_at)
    return match is not None and match.group(1).lower() in ABBREVIATIONS


class SentenceSplitter:
    """Incremental sentence splitter for one LLM reply (make a new one per reply)."""

    def __init__(self, first_clause_min_chars: int = 24, max_chars: int = 240) -> None:
        self.first_clause_min_chars = first_clause_min_chars
        self.max_chars = max_chars
        self._buffer = ""
        self._emitted = 0

    def feed(self, piece: str) -> list[str]:
        """Add the next piece of text; return the sentences it completed (maybe none)."""
        self._buffer += piece
        out: list[str] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                break
            chunk, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if chunk:
                out.append(chunk)
                self._emitted += 1
        return out

    def flush(self) -> list[str]:
        """End of reply: return what is left as a last sentence (if any text)."""
        rest, self._buffer = self._buffer.strip(), ""
        if rest:
            self._emitted += 1
            return [rest]
        return []

    def _next_cut(self) -> int | None:
        text = self._buffer
        for match in _END.finditer(text):
            if match.group(0) == "\n":
                if text[: match.start()].strip():
                    return match.end()
                continue
            if match.group(0).startswith(".") and len(match.group(0).rstrip("\"')]")) == 1:
                if _is_abbreviation(text, match.start()):
                    continue
            return match.end()
        if self._emitted == 0:
            for match in _CLAUSE.finditer(text):
                if len(text[: match.start()].strip()) >= self.first_clause_min_chars:
                    return match.end()
        if len(text) >= self.max_chars:
            space = text.rfind(" ", 0, self.max_chars)
            return space if space > 0 else self.max_chars
        return None


def split_sentences(text: str, first_clause_min_chars: int = 24) -> list[str]:
    """Split a whole text with the streaming rules (handy for tests and tools)."""
    splitter = SentenceSplitter(first_clause_min_chars=first_clause_min_chars)
    return splitter.feed(text) + splitter.flush()
