"""Hashed character and word n-gram features, computed for a whole batch at once.

Every model in the router (department, language, escalation) reads text through this one
featurizer, so training, evaluation, ``classify`` and the routing service see the same features
for the same (subject, text).

Why hashing, and why numpy: the features must work for any script (Tamil, Bengali, Devanagari,
Latin, romanized and code-mixed text) with no vocabulary to ship, and the router must featurize
tens of thousands of messages per second on one core. A Python loop over n-grams manages a few
thousand. Here the batch becomes one array of code points; a polynomial prefix hash gives the hash
of any substring in O(1) array arithmetic (all modulo 2**64, where numpy's unsigned integers wrap),
so every character n-gram and every word of every message is hashed by a handful of vector
operations. Hashes are deterministic across processes and machines (no ``PYTHONHASHSEED``).

Why also C: even vectorized, numpy materialises every n-gram of the batch and sorts them all to
count repeats, the largest single cost of a routing decision. ``router/_ngrams.c`` counts each
message in a small hash table that stays in cache, about three times faster, and is used when it
was built (``NATIVE_AVAILABLE``; ``pip install`` compiles it when a C compiler is there). The
numpy path is the fallback on machines without one and the reference: the C counter gives the
same entries in the same order, bit for bit, which the tests check on the corpus and on random
text. ``Featurizer(native=False)`` picks the numpy path explicitly. For the router,
:meth:`Featurizer.scores` goes one step further: the same C pass weighs each message's counts
and multiplies them by the models' weights, so no features are built at all.

A message's features are the distinct buckets of its n-grams with their counts; each model turns
them into values with its own inverse document frequencies (see :meth:`Features.weights`), so
long emails and one-line chats land on the same scale.
"""

from __future__ import annotations

import importlib
import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from models.normal_forms import already_normalized

__all__ = [
    "MAX_MODEL_CHARS",
    "NATIVE_AVAILABLE",
    "SMALL_BATCH",
    "FeatureSpec",
    "Features",
    "Featurizer",
    "load_native",
    "model_input",
    "normalize",
]

_RADIX = np.uint64(0x100000001B3)  # odd, so it has an inverse modulo 2**64
_RADIX_INVERSE = np.uint64(pow(0x100000001B3, -1, 2**64))
_ORDER_SALT = np.uint64(0x9E3779B97F4A7C15)
_WORD_SALT = np.uint64(0xC2B2AE3D27D4EB4F)
_BIGRAM_SALT = np.uint64(0x165667B19E3779F9)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_SEPARATOR = "\x00"
SMALL_BATCH = 16


def load_native() -> ModuleType | None:
    """``router._ngrams`` if it was compiled; an install without a C compiler has only the numpy
    and Python paths."""
    try:
        return importlib.import_module("router._ngrams")
    except ImportError:
        return None


_NATIVE = load_native()
NATIVE_AVAILABLE: bool = _NATIVE is not None
"""Whether ``router._ngrams`` imports, i.e. whether featurizers count n-grams in C by default."""

# Punctuation separates words but carries no meaning for routing. Letters, digits and the
# combining marks of Indic scripts (which str.isalnum() rejects) are kept. ASCII is mapped on the
# UTF-8 bytes (bytes.translate is a table lookup; str.translate with a dict costs ~100 ns a
# character, most of the router's time on a long mail), the few others by one regex.
_ASCII_PUNCTUATION = string.punctuation + "\x00"
# Whitespace as str.split() knows it. Words are split on the UTF-8 bytes, where split() knows
# only " \t\n\v\f\r": the ASCII separators \x1c-\x1f are mapped to spaces with the punctuation,
# the rest (a test checks the list against str.isspace) by the regex.
_ASCII_SEPARATORS = "\x1c\x1d\x1e\x1f"
_OTHER_WHITESPACE = (
    "\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)
_ASCII_FOLD = bytes.maketrans(
    (_ASCII_PUNCTUATION + _ASCII_SEPARATORS + "123456789").encode(),
    (" " * (len(_ASCII_PUNCTUATION) + len(_ASCII_SEPARATORS)) + "0" * 9).encode(),
)
_OTHER_PUNCTUATION = re.compile(
    "[" + re.escape("¡¿«»“”‘’„‚…–—·•।॥،؛؟。、！？：；（）［］｛｝" + _OTHER_WHITESPACE) + "]"
)


def normalize(text: str) -> str:
    """The form every model sees: NFKC, case-folded, digits as ``0``, punctuation as spaces.

    Digits are folded so that order numbers generalise ("OD4471902356" and "OD1234567890"
    share their n-grams); whitespace runs become one space.
    """
    # ASCII is its own NFKC form; isascii() reads a flag CPython keeps on every str.
    return _fold(text if text.isascii() else unicodedata.normalize("NFKC", text))


def normalize_all(texts: Sequence[str]) -> list[str]:
    """:func:`normalize` of each text; which texts are NFKC already is found for the whole batch
    (see :mod:`models.normal_forms`), so most Indic texts are not normalized again."""
    plain = already_normalized(texts, "NFKC")
    return [
        _fold(text if ok else unicodedata.normalize("NFKC", text))
        for text, ok in zip(texts, plain, strict=True)
    ]


def _fold(text: str) -> str:
    folded = text.casefold()
    if not folded.isascii():
        folded = _OTHER_PUNCTUATION.sub(" ", folded)
    # On bytes: splitting and joining a str of Indic text costs several times more.
    # surrogatepass: a lone surrogate passes through as it did before, never raises.
    encoded = folded.encode("utf-8", "surrogatepass").translate(_ASCII_FOLD)
    return b" ".join(encoded.split()).decode("utf-8", "surrogatepass")


MAX_MODEL_CHARS = 4000
"""Characters of a message the models read: the opening of a long mail says what it is about,
and a bound keeps one batch's classification short (see ``RouterTuning.decide_in_thread``)."""


def model_input(subject: str, text: str) -> str:
    """The one function of (subject, text) that train, eval, classify and the router feed to models."""
    combined = f"{subject}\n{text}" if subject else text
    return combined[:MAX_MODEL_CHARS]


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """What a model was trained on; stored in the model file and checked when it is loaded."""

    bits: int = 18
    char_orders: tuple[int, ...] = (1, 2, 3, 4, 5)
    words: bool = True
    word_bigrams: bool = True

    def __post_init__(self) -> None:
        if not 8 <= self.bits <= 24:
            raise ValueError("bits must be between 8 and 24")
        if not self.char_orders or min(self.char_orders) < 1 or max(self.char_orders) > 8:
            raise ValueError("char_orders must be between 1 and 8")

    @property
    def dimensions(self) -> int:
        return 1 << self.bits


@dataclass(frozen=True)
class Features:
    """The hashed features of a batch: one entry per distinct (message, block, bucket).

    Entries are sorted by message, so rows of the sparse matrix come straight from them. The
    *words* flag separates the two blocks a message's features fall in (character n-grams, and
    words with word pairs); :meth:`weights` normalizes each block on its own, so neither drowns
    the other.
    """

    documents: npt.NDArray[np.int64]
    buckets: npt.NDArray[np.int64]
    counts: npt.NDArray[np.float32]
    words: npt.NDArray[np.bool_]
    size: int
    dimensions: int

    def weights(self, idf: npt.NDArray[np.float32] | None) -> npt.NDArray[np.float32]:
        """Each entry's value for a model with these inverse document frequencies.

        With *idf*: ``(1 + log count) * idf``, scaled so each block of each message has unit
        length (TF-IDF with sublinear term frequency; on the team corpus it gains four points of
        macro-F1 over raw counts). Without (models of file format 1): ``count / sqrt(n)``, with
        *n* the message's number of n-grams, the weighting those models were trained with.
        """
        if idf is None:
            totals = np.bincount(self.documents, weights=self.counts, minlength=self.size)
            return (self.counts / np.sqrt(np.maximum(totals, 1.0))[self.documents]).astype(np.float32)
        values = (1.0 + np.log(self.counts)) * idf[self.buckets]
        blocks = self.documents * 2 + self.words
        norms = np.sqrt(np.bincount(blocks, weights=values * values, minlength=2 * self.size))
        return (values / np.maximum(norms, 1e-12)[blocks]).astype(np.float32)

    def product(
        self, weights: npt.NDArray[np.float32], idf: npt.NDArray[np.float32] | None = None
    ) -> npt.NDArray[np.float32]:
        """``matrix(idf) @ weights``: the batch's feature values times a ``dimensions x k`` matrix.

        A handful of messages (``classify``) are summed with numpy alone, so a one-off command
        never pays for importing scipy; batches go through the sparse product, ten times faster.
        """
        if self.size > SMALL_BATCH:
            return np.asarray(self.matrix(idf) @ weights)
        out = np.zeros((self.size, weights.shape[1]), dtype=np.float32)
        np.add.at(out, self.documents, weights[self.buckets] * self.weights(idf)[:, None])
        return out

    def matrix(self, idf: npt.NDArray[np.float32] | None = None) -> Any:
        """The batch as a sparse ``size x dimensions`` matrix under a model's weighting.

        A bucket hit by both a character n-gram and a word is two entries of one column, which
        products sum anyway; use :meth:`canonical_matrix` where a library needs them merged.
        """
        from scipy import sparse  # imported on the first batch: it costs a third of a second

        pointers = np.zeros(self.size + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.documents, minlength=self.size), out=pointers[1:])
        return sparse.csr_matrix(
            (self.weights(idf), self.buckets, pointers), shape=(self.size, self.dimensions)
        )

    def canonical_matrix(self, idf: npt.NDArray[np.float32] | None = None) -> Any:
        """The same matrix with duplicates summed and indices sorted (for training)."""
        matrix = self.matrix(idf).copy()
        matrix.sum_duplicates()
        return matrix

    def inverse_document_frequencies(self) -> npt.NDArray[np.float32]:
        """Smoothed ``1 + log((1 + n) / (1 + df))`` per bucket, learnt from this (training) batch."""
        frequency = np.bincount(self.buckets, minlength=self.dimensions).astype(np.float32)
        idf: npt.NDArray[np.float32] = np.float32(1.0) + np.log((1.0 + self.size) / (1.0 + frequency))
        return idf.astype(np.float32)


def _code_points(texts: Sequence[str]) -> npt.NDArray[np.uint32]:
    """The counters' input: each text framed by spaces (word edges become n-grams) and separated
    from the next by a separator no n-gram may cross, as uint32 code points."""
    joined = _SEPARATOR.join(f" {t} " for t in texts)
    return np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)


def _mix(hashes: npt.NDArray[np.uint64], salt: np.uint64) -> npt.NDArray[np.uint64]:
    """A 64-bit finaliser (splitmix64's), so nearby hashes spread over all buckets."""
    h = hashes ^ salt
    h ^= h >> np.uint64(30)
    h *= _MIX_1
    h ^= h >> np.uint64(27)
    h *= _MIX_2
    h ^= h >> np.uint64(31)
    return h


def _power_table(base: np.uint64, size: int) -> npt.NDArray[np.uint64]:
    """``base**i mod 2**64`` for i in ``range(size)``, exactly, by repeated doubling of the table."""
    powers = np.empty(size, dtype=np.uint64)
    powers[0] = 1
    filled = 1
    with np.errstate(over="ignore"):
        while filled < size:
            end = min(2 * filled, size)
            powers[filled:end] = powers[: end - filled] * (powers[filled - 1] * base)
            filled = end
    return powers


def _distinct(
    documents: list[npt.NDArray[np.int64]],
    hashes: list[npt.NDArray[np.uint64]],
    word_blocks: int,
    size: int,
    spec: FeatureSpec,
) -> Features:
    """One entry per distinct (document, block, bucket), counted, sorted by document.

    The three parts are packed into one integer so that a single sort groups a message's
    entries and brings repeats of an n-gram together.
    """
    bits = spec.bits
    packed = [
        (document << (bits + 1))
        | (np.int64(i >= len(hashes) - word_blocks) << bits)
        | (hashed >> np.uint64(64 - bits)).astype(np.int64)
        for i, (document, hashed) in enumerate(zip(documents, hashes, strict=True))
    ]
    keys = np.sort(np.concatenate(packed)) if packed else np.zeros(0, dtype=np.int64)
    if not len(keys):  # no texts, or none with an n-gram ("", "!!!"): nothing to count
        return _unpack(keys, np.zeros(0, dtype=np.float32), size, spec)
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    counts = np.diff(np.append(starts, len(keys))).astype(np.float32)
    return _unpack(keys[starts], counts, size, spec)


def _unpack(
    keys: npt.NDArray[np.int64], counts: npt.NDArray[np.float32], size: int, spec: FeatureSpec
) -> Features:
    """Features from distinct packed keys (see :func:`_distinct`) and their counts."""
    bits = spec.bits
    return Features(
        documents=keys >> (bits + 1),
        buckets=keys & ((1 << bits) - 1),
        counts=counts,
        words=((keys >> bits) & 1).astype(bool),
        size=size,
        dimensions=spec.dimensions,
    )


@dataclass
class Featurizer:
    """Turns batches of model inputs into :class:`Features` according to a :class:`FeatureSpec`.

    *native* chooses the counter: True the C one (an error where it was not built), False the
    numpy reference, None (the default) the C one when ``NATIVE_AVAILABLE``. Both give the same
    features.
    """

    spec: FeatureSpec = field(default_factory=FeatureSpec)
    native: bool | None = None
    _powers: npt.NDArray[np.uint64] = field(init=False, repr=False)
    _inverse_powers: npt.NDArray[np.uint64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.native and not NATIVE_AVAILABLE:
            raise RuntimeError("router._ngrams was not built (reinstall with a C compiler present)")
        self._powers = np.ones(0, dtype=np.uint64)
        self._inverse_powers = np.ones(0, dtype=np.uint64)
        if not self.uses_native:
            self._grow(4096)

    @property
    def uses_native(self) -> bool:
        """Whether this featurizer counts in C."""
        return NATIVE_AVAILABLE if self.native is None else self.native

    def _grow(self, length: int) -> None:
        """Extend the tables of RADIX**i and RADIX**-i (mod 2**64) to at least *length* entries."""
        if len(self._powers) >= length:
            return
        size = max(length, 2 * len(self._powers))
        self._powers = _power_table(_RADIX, size)
        self._inverse_powers = _power_table(_RADIX_INVERSE, size)

    def transform(self, texts: Sequence[str]) -> Features:
        """Features of combined model inputs (see :func:`model_input`)."""
        return self.transform_normalized(normalize_all(texts))

    def transform_normalized(self, texts: Sequence[str]) -> Features:
        """Features of texts that already went through :func:`normalize`."""
        if not texts:
            return _distinct([], [], 0, 0, self.spec)
        if self.uses_native:
            return self._count_native(_code_points(texts), len(texts))
        return self._count_numpy(_code_points(texts), len(texts))

    def scores(
        self, texts: Sequence[str], idf: npt.NDArray[np.float32] | None, weights: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """``transform_normalized(texts).product(weights, idf)``, for texts already normalized.

        With the C counter and an *idf* (models of file format 2), one pass in C counts each
        message and adds its TF-IDF values times their weight rows straight into its scores,
        without the entries, values and sparse matrix the reference builds; *weights* must then be
        a C-contiguous float32 ``dimensions x k`` matrix. It repeats the reference's arithmetic in
        the same order, so scores differ only where C's and numpy's float32 logarithms round apart
        (by 2e-6 at most on the corpus).
        """
        if not (self.uses_native and idf is not None and texts):
            return self.transform_normalized(texts).product(weights, idf)
        assert _NATIVE is not None
        spec, columns = self.spec, weights.shape[1]
        pairs = spec.words and spec.word_bigrams  # as in the reference: pairs come with words
        counting = (_code_points(texts), len(texts), spec.bits, bytes(spec.char_orders), spec.words, pairs)
        scores = _NATIVE.score(*counting, idf, weights, columns)
        # A copy, as for the counts: the reference's scores are writable.
        return np.frombuffer(scores, dtype=np.float32).reshape(len(texts), columns).copy()

    def _count_native(self, code_points: npt.NDArray[np.uint32], size: int) -> Features:
        """The C counter's features: the same entries as :meth:`_count_numpy`, in the same order."""
        assert _NATIVE is not None
        spec = self.spec
        pairs = spec.words and spec.word_bigrams  # as in the reference: pairs come with words
        keys, counts = _NATIVE.count(code_points, size, spec.bits, bytes(spec.char_orders), spec.words, pairs)
        # A copy, since arrays over bytes are read-only and the numpy path's counts are not.
        return _unpack(
            np.frombuffer(keys, dtype=np.int64), np.frombuffer(counts, dtype=np.float32).copy(), size, spec
        )

    def _count_numpy(self, code_points: npt.NDArray[np.uint32], size: int) -> Features:
        """The reference counter: every n-gram of the batch hashed by vector operations, then sorted."""
        codes = code_points.astype(np.uint64)
        length = len(codes)
        self._grow(length + 1)
        is_separator = codes == ord(_SEPARATOR)
        document_of = np.cumsum(is_separator, dtype=np.int64)
        with np.errstate(over="ignore"):
            # prefix[i] = sum_{j<i} (code[j] + 1) * RADIX**j, so a substring [a, b) hashes to
            # (prefix[b] - prefix[a]) * RADIX**-a: the same value wherever the substring sits.
            prefix = np.zeros(length + 1, dtype=np.uint64)
            np.cumsum((codes + np.uint64(1)) * self._powers[:length], out=prefix[1:])
            documents: list[npt.NDArray[np.int64]] = []
            hashes: list[npt.NDArray[np.uint64]] = []
            word_blocks = 0  # the last word_blocks arrays hold words and word pairs
            for order in self.spec.char_orders:
                if order > length:
                    continue
                starts = np.arange(length - order + 1)
                ends = starts + order
                valid = document_of[starts] == document_of[ends - 1]
                valid &= ~is_separator[starts] & ~is_separator[ends - 1]
                # A space alone, or an n-gram that starts and ends in one, says nothing.
                valid &= ~((codes[starts] == 32) & (codes[ends - 1] == 32))
                starts, ends = starts[valid], ends[valid]
                substring = (prefix[ends] - prefix[starts]) * self._inverse_powers[starts]
                hashes.append(_mix(substring, _ORDER_SALT * np.uint64(order)))
                documents.append(document_of[starts])
            if self.spec.words:
                word_documents, word_hashes = self._words(codes, prefix, document_of)
                documents.append(word_documents)
                hashes.append(_mix(word_hashes, _WORD_SALT))
                word_blocks = 1
                if self.spec.word_bigrams and len(word_hashes) > 1:
                    same = word_documents[1:] == word_documents[:-1]
                    pairs = word_hashes[:-1][same] * _RADIX + word_hashes[1:][same]
                    documents.append(word_documents[1:][same])
                    hashes.append(_mix(pairs, _BIGRAM_SALT))
                    word_blocks = 2
        return _distinct(documents, hashes, word_blocks, size, self.spec)

    def _words(
        self,
        codes: npt.NDArray[np.uint64],
        prefix: npt.NDArray[np.uint64],
        document_of: npt.NDArray[np.int64],
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64]]:
        """Hashes of every space-delimited word, in document order."""
        blank = (codes == 32) | (codes == ord(_SEPARATOR))
        # Documents are framed by spaces, so every word has a blank before and after it.
        starts = np.flatnonzero(~blank[1:] & blank[:-1]) + 1
        ends = np.flatnonzero(~blank[:-1] & blank[1:]) + 1
        with np.errstate(over="ignore"):
            word_hashes = (prefix[ends] - prefix[starts]) * self._inverse_powers[starts]
        return document_of[starts], word_hashes
