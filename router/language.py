"""Language identification tuned for short, noisy, romanized and code-mixed customer text.

Measured on the team corpus (see ``bench/language_id.py``), no general-purpose library gets
romanized Hindi, Bengali or Tamil right: they come back as Tagalog, Bikol, Zulu or Indonesian.
So identification is three small steps:

1. **Script.** Tamil, Bengali and Devanagari letters name their language outright, even in a
   message that mixes them with English words; other non-Latin scripts (Arabic, Cyrillic, Han,
   Thai, ...) go to the general identifier, which knows ~97 languages.
2. **The team's model** for Latin-script text: a linear model over the same hashed n-grams as
   the department model, trained on the corpus's English, Spanish, Tagalog and romanized or
   code-mixed Hindi, Bengali and Tamil.
3. **The general identifier** (py3langid) when the team's model is not sure, so a French or
   German message still comes back as ``fr`` or ``de``. It is asked once a batch, about all the
   unsure texts together (:mod:`router.general_language`: ~40 µs a text instead of ~155).

Codes are ISO 639-1; ``und`` (ISO 639-2, undetermined) when a message has no letters at all.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from router.features import Features
from router.general_language import GeneralIdentifier, load_py3langid
from router.linear import LinearModel

__all__ = ["FIRST_CLASS", "LanguageGuess", "LanguageIdentifier", "general_identifier"]

FIRST_CLASS = ("ta", "bn", "tl", "hi", "en", "es")
UNDETERMINED = "und"

# (first code point, last code point, script). Anything not listed counts as "other".
_SCRIPTS: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x005A, "latin"),
    (0x0061, 0x007A, "latin"),
    (0x00C0, 0x024F, "latin"),
    (0x0370, 0x03FF, "other"),
    (0x0400, 0x052F, "other"),
    (0x0590, 0x05FF, "other"),
    (0x0600, 0x06FF, "other"),
    (0x0900, 0x097F, "devanagari"),
    (0x0980, 0x09FF, "bengali"),
    (0x0A00, 0x0B7F, "other"),
    (0x0B80, 0x0BFF, "tamil"),
    (0x0C00, 0x0DFF, "other"),
    (0x0E00, 0x0FFF, "other"),
    (0x1000, 0x109F, "other"),
    (0x10A0, 0x10FF, "other"),
    (0x1100, 0x11FF, "other"),
    (0x1E00, 0x1EFF, "latin"),
    (0x3040, 0x30FF, "other"),
    (0x3400, 0x9FFF, "other"),
    (0xAC00, 0xD7AF, "other"),
)
_COLUMNS = ("latin", "devanagari", "bengali", "tamil", "other")
_SCRIPT_LANGUAGE = {"devanagari": "hi", "bengali": "bn", "tamil": "ta"}


def _column_table() -> npt.NDArray[np.int8]:
    """The ``_COLUMNS`` index of every code point of the Basic Multilingual Plane, -1 for none.

    Every range of ``_SCRIPTS`` lies in the BMP; a lookup in this table is several times faster
    than a binary search over the ranges.
    """
    table = np.full(0x10000, -1, dtype=np.int8)
    for first, last, script in _SCRIPTS:
        table[first : last + 1] = _COLUMNS.index(script)
    if table[0xFFFF] != -1:
        raise ValueError("U+FFFF must belong to no script: script_counts clips to it")
    return table


_COLUMN_OF = _column_table()

INDIC_SHARE = 0.15
"""Share of a message's letters in one Indic script from which that script names the language."""

GENERAL_SAMPLE = 400
"""Characters of a message the general identifier reads: enough to tell a language, and bounded."""

SURE = 0.80
"""The team model's probability from which its answer stands without asking the general identifier."""


class LanguageGuess(NamedTuple):  # one per message: cheaper to build than a frozen dataclass
    language: str
    confidence: float
    method: str  # "script", "model" or "general"


def general_identifier() -> GeneralIdentifier | None:
    """py3langid's identifier, batched (:mod:`router.general_language`), or None when it is not
    installed.

    Its model is read on first use, not here: most messages never need it, and ``classify``
    must start fast.
    """
    if importlib.util.find_spec("py3langid") is None:
        return None
    loaded: list[GeneralIdentifier] = []

    def identify(texts: Sequence[str]) -> list[tuple[str, float]]:
        if not loaded:
            loaded.append(load_py3langid())
        return loaded[0](texts)

    return identify


def script_counts(texts: Sequence[str]) -> npt.NDArray[np.int64]:
    """Letters per script for each text: an ``len(texts) x 5`` array (see ``_COLUMNS``)."""
    counts = np.zeros((len(texts), len(_COLUMNS)), dtype=np.int64)
    if not texts:
        return counts
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    document = np.repeat(np.arange(len(texts)), [len(t) for t in texts])
    # Code points past the BMP clip to U+FFFF, a noncharacter whose column is -1.
    column = _COLUMN_OF.take(codes, mode="clip")
    lettered = column >= 0
    # bincount over (text, column) cells: np.add.at does the same a few times slower.
    cells = document[lettered] * len(_COLUMNS) + column[lettered]
    counts += np.bincount(cells, minlength=counts.size).reshape(counts.shape)
    return counts


class LanguageIdentifier:
    """Identifies the language of each message of a batch (see the module docstring)."""

    def __init__(self, model: LinearModel, general: GeneralIdentifier | None) -> None:
        self.model = model
        self._general = general

    def warm_up(self) -> None:
        """Read the general identifier's model now rather than on the first message needing it."""
        if self._general is not None:
            self._general(["warm up"])

    def identify(self, texts: Sequence[str], features: Features) -> list[LanguageGuess]:
        """One guess per text; *features* are the texts' features under ``model.spec``."""
        return self.identify_with(texts, self.model.probabilities(features))

    def identify_with(
        self, texts: Sequence[str], probabilities: npt.NDArray[np.float32]
    ) -> list[LanguageGuess]:
        """One guess per text, given the team model's probabilities for the batch.

        The arithmetic is done for the whole batch at once; only the branching is per text.
        """
        counts = script_counts(texts)
        letters = counts.sum(axis=1).tolist()
        indic = counts[:, 1:4]
        strongest = indic.argmax(axis=1).tolist()
        strongest_letters = indic.max(axis=1).tolist()
        latin = counts[:, 0].tolist()
        other = counts[:, _COLUMNS.index("other")].tolist()
        best = probabilities.argmax(axis=1).tolist()
        best_probability = probabilities.max(axis=1).tolist()
        guesses: list[LanguageGuess] = []
        unsure: list[int] = []  # texts for the general identifier; their guess is the fallback
        for i in range(len(texts)):
            if letters[i] == 0:
                guesses.append(LanguageGuess(UNDETERMINED, 0.0, "script"))
            elif strongest_letters[i] >= INDIC_SHARE * letters[i]:
                language = _SCRIPT_LANGUAGE[_COLUMNS[1 + strongest[i]]]
                guesses.append(LanguageGuess(language, strongest_letters[i] / letters[i], "script"))
            elif other[i] > latin[i]:
                guesses.append(LanguageGuess(UNDETERMINED, 0.0, "script"))
                unsure.append(i)
            else:
                guesses.append(LanguageGuess(self.model.classes[best[i]], best_probability[i], "model"))
                if best_probability[i] < SURE:
                    unsure.append(i)
        if unsure and self._general is not None:
            answers = self._general([texts[i][:GENERAL_SAMPLE] for i in unsure])
            for i, (language, probability) in zip(unsure, answers, strict=True):
                guesses[i] = _settle(guesses[i], language, probability)
        return guesses


def _settle(fallback: LanguageGuess, language: str, probability: float) -> LanguageGuess:
    """The general identifier's answer, unless the team model's own guess is the better one."""
    if fallback.method == "model" and (language in FIRST_CLASS or probability < fallback.confidence):
        # Between first-class languages the team model knows romanized text better.
        return fallback
    return LanguageGuess(language, probability, "general")
