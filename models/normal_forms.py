"""Which texts of a batch are already in a Unicode normal form, answered for the whole batch at once.

``unicodedata.normalize("NFKC", text)`` returns at once when Unicode's quick check says the text
is normalized. For most text of the Indic scripts it says *Maybe* instead: their vowel signs are
the second half of a few composed characters (U+09BE after U+09C7 makes U+09CB), so the whole
text is normalized, about 10 µs for a 100-character Bengali message: 6 % of a router's time.
Yet a *Maybe* character changes only next to particular neighbours, and one vectorized pass over
the batch's code points finds those neighbourhoods; a text without any is left as it is, any
other goes to ``unicodedata``, so the result is the same either way (tests compare them on every
character pair of the affected scripts and on random strings).

A text holding none of these is normalized (for NFKC, leave out the compatibility characters
first; what remains is normalized in NFKC exactly when it is in NFC):

- a character the form replaces wherever it stands (quick check *No*; for NFKC also every
  character whose compatibility decomposition differs from its canonical one);
- two adjacent combining characters (canonical combining class above 0), which may need
  reordering, or a combining character after one whose decomposition ends in one;
- a starter followed by a character it composes with: a *Maybe* character composes only with
  the starter right before it, since anything in between either blocks it or is a combining
  character next to it (the rule above);
- Hangul vowel and trailing consonant jamo, which compose by algorithm, not by table.
"""

from __future__ import annotations

import functools
import itertools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["DECOMPOSITION_LIMIT", "Form", "already_normalized"]

Form = Literal["NFC", "NFKC"]

DECOMPOSITION_LIMIT = 0x30000
"""Every character with a decomposition or a combining class lies below this code point (a test
proves it for the running Python's Unicode data); any character above it is left to unicodedata."""

_HANGUL_VOWELS_AND_TRAILS = (range(0x1161, 0x1176), range(0x11A8, 0x11C3))

# Flags per code point.
_UNSURE = 1  # unicodedata decides
_COMBINING = 2  # canonical combining class above 0
_MARK_ENDING = 4  # its canonical decomposition ends in a combining character
_FIRST = 8  # first half of a two-character canonical decomposition
_SECOND = 16  # second half of one


@dataclass(frozen=True, slots=True)
class _Tables:
    flags: npt.NDArray[np.uint8]
    """One entry per code point below DECOMPOSITION_LIMIT, and an unsure one for all above."""
    pairs: frozenset[tuple[int, int]]
    """The halves of every character whose canonical decomposition is two characters."""


@functools.cache
def _tables(form: Form) -> _Tables:
    """The flags for *form*, from the running Python's Unicode data: ~0.1 s, on first use."""
    flags = np.zeros(DECOMPOSITION_LIMIT + 1, dtype=np.uint8)
    flags[DECOMPOSITION_LIMIT] = _UNSURE
    pairs: set[tuple[int, int]] = set()
    for point in range(0x80, DECOMPOSITION_LIMIT):
        character = chr(point)
        if unicodedata.combining(character):
            flags[point] |= _COMBINING
        mapping = unicodedata.decomposition(character)
        if mapping:
            flags[point] |= _decomposition_flags(character, form)
            halves = mapping.split()
            if not flags[point] & _UNSURE and not mapping.startswith("<") and len(halves) == 2:
                first, second = (int(half, 16) for half in halves)
                pairs.add((first, second))
    for first, second in pairs:
        flags[first] |= _FIRST
        flags[second] |= _SECOND
    for span in _HANGUL_VOWELS_AND_TRAILS:
        flags[span.start : span.stop] |= _UNSURE
    return _Tables(flags, frozenset(pairs))


def _decomposition_flags(character: str, form: Form) -> int:
    decomposed = unicodedata.normalize("NFD", character)
    if unicodedata.normalize("NFC", character) != character:
        return _UNSURE
    if form == "NFKC" and unicodedata.normalize("NFKD", character) != decomposed:
        return _UNSURE
    # A starter after a combining character inside one decomposition would take part in
    # composing with what follows instead of the character itself: none does; kept exact anyway.
    if any(
        unicodedata.combining(a) and not unicodedata.combining(b) for a, b in itertools.pairwise(decomposed)
    ):
        return _UNSURE
    return _MARK_ENDING if unicodedata.combining(decomposed[-1]) else 0


def already_normalized(texts: Sequence[str], form: Form) -> list[bool]:
    """For each text, whether ``unicodedata.normalize(form, text) == text``.

    Cheap for a batch (one pass in numpy over all its code points): only texts with a
    neighbourhood that may change are handed to ``unicodedata.is_normalized``.
    """
    answers = [text.isascii() for text in texts]
    pending = [i for i, ascii_only in enumerate(answers) if not ascii_only]
    if not pending:
        return answers
    tables = _tables(form)
    # NUL between texts: neither combining nor half of a pair, so no neighbourhood spans two.
    joined = "\x00".join(texts[i] for i in pending)
    codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    flags = tables.flags.take(codes, mode="clip")
    unsure = (flags & _UNSURE) != 0
    unsure[:-1] |= ((flags[:-1] & (_COMBINING | _MARK_ENDING)) != 0) & ((flags[1:] & _COMBINING) != 0)
    for at in np.flatnonzero(((flags[:-1] & _FIRST) != 0) & ((flags[1:] & _SECOND) != 0)).tolist():
        unsure[at] |= (int(codes[at]), int(codes[at + 1])) in tables.pairs
    lengths = np.fromiter((len(texts[i]) + 1 for i in pending), dtype=np.int64, count=len(pending))
    owners = np.searchsorted(np.cumsum(lengths), np.flatnonzero(unsure), side="right")
    doubtful = set(owners.tolist())
    for position, i in enumerate(pending):
        answers[i] = unicodedata.is_normalized(form, texts[i]) if position in doubtful else True
    return answers
