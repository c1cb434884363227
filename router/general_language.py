"""The general language identifier (py3langid), asked about a whole batch of texts at once.

py3langid scores one text per call: a Python loop walks a byte automaton over the text to find
its byte n-gram features (~300 ns a byte), then a dozen small numpy operations turn them into
naive Bayes probabilities, ~150 µs a message in all. The router asks it about the few messages of
a batch the team's model is unsure of, and that was a sixth of the router's classification
time. Here the automaton is walked in C for all the texts (``router._ngrams.walk``; the same
walk in Python where the module was not built) and the texts are scored together: one product
of each text's feature rows, one softmax for the whole batch. Same model and the same
arithmetic as py3langid's ``classify`` (its ``norm_probs`` mode); the tests hold the two to the
same answers.

The model is read off py3langid's identifier, whose layout (0.4) is not a public interface. If an
installed version differs, each text goes through ``classify`` one by one, as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from router.automaton import TEXT_SHIFT, ByteAutomaton

__all__ = ["BatchIdentifier", "GeneralIdentifier", "load_py3langid"]

GeneralIdentifier = Callable[[Sequence[str]], list[tuple[str, float]]]
"""Language code and probability for each text of a batch."""


class BatchIdentifier:
    """py3langid's naive Bayes model, scoring many texts per call (see the module docstring)."""

    def __init__(self, identifier: Any, *, native: bool | None = None) -> None:
        """*identifier*: a py3langid ``LanguageIdentifier`` made with ``norm_probs=True``.

        *native*: walk the automaton in C (True), in Python (False), or in C where it was built.
        Raises ``TypeError`` when the identifier's layout is not the one this reads.
        """
        if not getattr(identifier, "_norm_probs", False) or identifier.min_confidence is not None:
            raise TypeError("a py3langid identifier with norm_probs=True and no min_confidence is needed")
        try:
            # float32 (~57 MB, twice py3langid's float16): numpy converts float16 at ~3 ns a
            # value, which on the rows a batch gathers cost more than the whole old call.
            self._table = np.asarray(identifier.nb_ptc, dtype=np.float32)
            self._prior = np.asarray(identifier.nb_pc, dtype=np.float32)
            self._classes: list[str] = [str(c) for c in identifier.nb_classes]
            self._aliases: list[tuple[int, int]] = [(int(i), int(j)) for i, j in identifier._alias_pairs]
            nextmove = np.asarray(identifier.tk_nextmove, dtype=np.uint32)
            rowbase = np.asarray(identifier.tk_row, dtype=np.uint32) << np.uint32(8)
            output = np.asarray(identifier.tk_output, dtype=np.int32)
            self._encode: Callable[[str], bytes] = identifier._encode
        except AttributeError as missing:
            raise TypeError(f"py3langid's identifier has another layout: {missing}") from missing
        if self._table.ndim != 2 or not self._table.shape[1] == len(self._classes) == len(self._prior):
            raise TypeError("py3langid's tables do not agree with its classes")
        self._automaton = ByteAutomaton(nextmove, rowbase, output, native=native)

    def __call__(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        if not texts:
            return []
        encoded = [self._encode(text) for text in texts]
        keys = self._features(encoded)
        probabilities = self._probabilities(keys, [len(data) for data in encoded])
        best = probabilities.argmax(axis=1)
        confidence = probabilities[np.arange(len(texts)), best]
        return [(self._classes[b], c) for b, c in zip(best.tolist(), confidence.tolist(), strict=True)]

    def _features(self, encoded: Sequence[bytes]) -> npt.NDArray[np.int64]:
        """``text << 32 | feature`` for every feature the automaton reaches, texts in order."""
        return self._automaton.walk(encoded)

    def _probabilities(self, keys: npt.NDArray[np.int64], lengths: Sequence[int]) -> npt.NDArray[np.float32]:
        """py3langid's normalised scores: naive Bayes log-posteriors over log1p counts, scaled
        by 1/sqrt(bytes), softmax, and each aliased label's columns folded into its first."""
        scores = np.zeros((len(lengths), len(self._classes)), dtype=np.float32)
        if len(keys):
            distinct, counts = np.unique(keys, return_counts=True)  # sorted: text, then feature
            texts = distinct >> TEXT_SHIFT
            features = distinct & ((1 << TEXT_SHIFT) - 1)
            weights = np.log1p(counts.astype(np.float32))
            starts = np.flatnonzero(np.r_[True, texts[1:] != texts[:-1]])
            ends = np.r_[starts[1:], len(distinct)]
            # Per text, one product with just its features' rows (~20 µs), as py3langid does; a
            # text without features scores 0 for every class (no prior), as in py3langid.
            for text, start, end in zip(texts[starts].tolist(), starts.tolist(), ends.tolist(), strict=True):
                scores[text] = weights[start:end] @ self._table[features[start:end]] + self._prior
        scores *= np.array([1.0 / math.sqrt(n or 1) for n in lengths], dtype=np.float32)[:, None]
        np.exp(scores - scores.max(axis=1, keepdims=True), out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        for first, alias in self._aliases:
            scores[:, first] += scores[:, alias]
            scores[:, alias] = 0.0
        return scores


def load_py3langid() -> GeneralIdentifier:
    """py3langid's model, batched where its layout is the known one, else text by text."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)  # npz, no pickle
    try:
        return BatchIdentifier(identifier)
    except TypeError:
        return lambda texts: [(str(lang), float(p)) for lang, p in map(identifier.classify, texts)]
