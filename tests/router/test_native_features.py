"""The C n-gram counter (router/_ngrams.c) gives exactly the features of the numpy reference path."""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import InboundMessage, Sender
from models.config import RouterConfig
from router.features import NATIVE_AVAILABLE, Features, FeatureSpec, Featurizer, model_input, normalize
from router.pipeline import ConversationContext, Decision, Pipeline, build_decider
from tests.router.native import needs_native

ROUTER = Path(__file__).resolve().parents[2] / "router"
NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
pytestmark = needs_native

SPECS = [
    FeatureSpec(),
    FeatureSpec(bits=8),
    FeatureSpec(bits=24),
    FeatureSpec(bits=12, char_orders=(2, 3, 4, 5)),
    FeatureSpec(bits=16, char_orders=(3,)),
    FeatureSpec(bits=20, words=False),
    FeatureSpec(bits=18, word_bigrams=False),
    FeatureSpec(bits=10, char_orders=(3,), words=False, word_bigrams=False),
    FeatureSpec(bits=14, char_orders=(1, 2, 3, 4, 5, 6, 7, 8)),
    FeatureSpec(bits=9, char_orders=(1, 1, 2)),  # a repeated order counts twice in both paths
]


def _sorted_entries(features: Features) -> list[npt.NDArray[Any]]:
    """documents, words, buckets and counts with each document's entries sorted by (block, bucket).

    The features' contract leaves the order inside a document open; comparing in this order checks
    the entries themselves.
    """
    order = np.lexsort((features.buckets, features.words, features.documents))
    return [array[order] for array in (features.documents, features.words, features.buckets, features.counts)]


def _assert_same(native: Features, reference: Features) -> None:
    assert (native.size, native.dimensions) == (reference.size, reference.dimensions)
    for mine, theirs in zip(_sorted_entries(native), _sorted_entries(reference), strict=True):
        assert mine.dtype == theirs.dtype
        np.testing.assert_array_equal(mine, theirs)
    # Sparse matrix rows are cut from the entries, so documents must come in order.
    assert bool(np.all(np.diff(native.documents) >= 0))


def _both(spec: FeatureSpec, texts: Sequence[str], *, normalized: bool = True) -> tuple[Features, Features]:
    native, reference = Featurizer(spec, native=True), Featurizer(spec, native=False)
    if normalized:
        return native.transform_normalized(texts), reference.transform_normalized(texts)
    return native.transform(texts), reference.transform(texts)


def _corpus_inputs() -> list[str]:
    """Every fourth message of every corpus file: a few thousand, of all languages and forms."""
    rows = [
        row
        for path in sorted(ROUTER.glob("corpus/*.jsonl"))
        for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())
    ]
    return [normalize(model_input(row.get("subject") or "", row["text"])) for row in rows[::4]]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    texts = _corpus_inputs()
    assert len(texts) > 4000
    return texts


def test_the_native_counter_is_built_where_ci_runs() -> None:
    assert NATIVE_AVAILABLE
    assert Featurizer().uses_native


def test_the_numpy_path_can_be_chosen() -> None:
    assert not Featurizer(native=False).uses_native
    assert Featurizer(native=True).uses_native


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_corpus_features_are_the_reference_ones(corpus: list[str], spec: FeatureSpec) -> None:
    _assert_same(*_both(spec, corpus))


def test_corpus_entries_come_in_the_reference_order(corpus: list[str]) -> None:
    # Stronger than the contract: the models sum a message's values in entry order, so the same
    # order makes their floating point results identical, not just close.
    native, reference = _both(FeatureSpec(), corpus)
    for field in ("documents", "buckets", "counts", "words"):
        np.testing.assert_array_equal(getattr(native, field), getattr(reference, field))


def test_batch_boundaries_do_not_matter(corpus: list[str]) -> None:
    featurizer, texts = Featurizer(native=True), corpus[:300]
    whole = featurizer.transform_normalized(texts)
    for size in (1, 16, 17, 100):
        for start in range(0, len(texts), size):
            part = featurizer.transform_normalized(texts[start : start + size])
            inside = (whole.documents >= start) & (whole.documents < start + size)
            np.testing.assert_array_equal(part.documents + start, whole.documents[inside])
            np.testing.assert_array_equal(part.buckets, whole.buckets[inside])
            np.testing.assert_array_equal(part.counts, whole.counts[inside])


_NO_SEPARATOR = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
_FEW_CHARACTERS = st.sampled_from(" ab\u0b95\u0bcd\U0001f600\U00020000\u00a0\t")
_TEXT = st.one_of(
    st.text(_NO_SEPARATOR, max_size=80),  # any script, astral planes included
    st.text(_FEW_CHARACTERS, max_size=40),  # repeated n-grams, runs of blanks
    st.sampled_from(["", " ", "   ", "a", "\U0001f600", "ஆ", "a a", " a "]),
    st.builds(
        lambda unit, times: unit * times,
        st.text(_NO_SEPARATOR, min_size=1, max_size=6),
        st.integers(50, 2000),
    ),
)
_SPEC = st.builds(
    FeatureSpec,
    bits=st.integers(8, 24),
    char_orders=st.sampled_from([(1, 2, 3, 4, 5), (2, 3, 4, 5), (3,), (1,), (8,), (1, 1, 2), (5, 1)]),
    words=st.booleans(),
    word_bigrams=st.booleans(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TEXT, min_size=1, max_size=30), _SPEC)
def test_any_text_has_the_reference_features(texts: list[str], spec: FeatureSpec) -> None:
    # Unnormalized on purpose: runs of blanks, tabs and capitals reach the counters unchanged.
    _assert_same(*_both(spec, texts))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=60), min_size=1, max_size=30), _SPEC
)
def test_any_model_input_has_the_reference_features(texts: list[str], spec: FeatureSpec) -> None:
    _assert_same(*_both(spec, texts, normalized=False))


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.lists(st.text(st.sampled_from(" abc\u0b95\U0001f600"), max_size=12), min_size=200, max_size=1000))
def test_many_documents_have_the_reference_features(texts: list[str]) -> None:
    _assert_same(*_both(FeatureSpec(), texts))


def test_one_very_long_text_has_the_reference_features(corpus: list[str]) -> None:
    text = " ".join(corpus)[:300_000]
    for spec in (FeatureSpec(bits=8), FeatureSpec(), FeatureSpec(bits=24)):
        _assert_same(*_both(spec, [text, "short", text[:5000]]))


@pytest.mark.parametrize("native", [True, False])
def test_a_batch_without_any_n_gram_has_no_entries(native: bool) -> None:
    # The reference path used to fail here (an IndexError on a batch of only "!!!").
    features = Featurizer(native=native).transform(["", "!!!", "  "])
    assert features.size == 3 and len(features.buckets) == 0
    assert features.matrix().shape == (3, features.dimensions)


def test_a_separator_inside_a_text_is_refused() -> None:
    # normalize() removes U+0000; a text that skipped it would shift every later document.
    with pytest.raises(ValueError, match="documents"):
        Featurizer(native=True).transform_normalized(["one\x00two", "three"])


def _codes(texts: Sequence[str]) -> npt.NDArray[np.uint32]:
    joined = "\x00".join(f" {t} " for t in texts)
    return np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"bits": 7}, "bits"),
        ({"bits": 25}, "bits"),
        ({"orders": b"\x00"}, "orders"),
        ({"orders": b"\x09"}, "orders"),
        ({"documents": 3}, "documents"),
        ({"documents": 0}, "documents"),
        ({"codes": np.zeros(4, dtype=np.int64)}, "uint32"),
        ({"codes": np.zeros(4, dtype=np.float32)}, "uint32"),
        ({"codes": np.zeros((2, 2), dtype=np.uint32)}, "uint32"),
        ({"codes": b"\x20\x00\x00\x00"}, "uint32"),
        ({"codes": _codes(["a", "b"])[::2]}, "contiguous"),
    ],
)
def test_the_counter_refuses_bad_arguments(arguments: dict[str, Any], message: str) -> None:
    counter = importlib.import_module("router._ngrams")
    valid: dict[str, Any] = {
        "codes": _codes(["a", "b"]),
        "documents": 2,
        "bits": 8,
        "orders": b"\x01\x02",
        "words": True,
        "word_pairs": True,
    }
    with pytest.raises(ValueError, match=message):
        counter.count(**{**valid, **arguments})


def _in_four_threads(work: Callable[[], None]) -> None:
    """Run *work* in four threads at once (the C code releases the GIL) and wait for them."""
    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_the_counter_runs_in_threads(corpus: list[str]) -> None:
    # The GIL is released while counting: threads must not disturb each other's tables.
    featurizer = Featurizer(native=True)
    expected = featurizer.transform_normalized(corpus[:500])
    results: list[Features] = []

    def work() -> None:
        for _ in range(5):
            results.append(Featurizer(native=True).transform_normalized(corpus[:500]))

    _in_four_threads(work)
    assert len(results) == 20
    for result in results:
        np.testing.assert_array_equal(result.buckets, expected.buckets)
        np.testing.assert_array_equal(result.counts, expected.counts)


def _heldout_messages() -> list[InboundMessage]:
    rows = [
        json.loads(line) for line in (ROUTER / "corpus/split/heldout.jsonl").read_text("utf-8").splitlines()
    ]
    return [
        InboundMessage(
            message_id=f"m{i}",
            channel="webhook",
            channel_instance="test",
            native_id=str(i),
            received_at=NOW,
            sender=Sender(id=f"customer-{i}"),
            conversation_id=f"test:{i}",
            subject=row.get("subject") or None,
            text=row["text"],
            body=row["text"],
        )
        for i, row in enumerate(rows)
    ]


def _pipeline(native: bool) -> Pipeline:
    pipeline = build_decider(RouterConfig(), lambda: NOW)
    # The pipeline makes its own featurizers; swap in ones with the counter chosen explicitly.
    pipeline._featurizers = {spec: Featurizer(spec, native=native) for spec in pipeline._featurizers}
    return pipeline


def _decided(decision: Decision) -> tuple[object, ...]:
    """What a routing decision decides (its reasons quote the same numbers)."""
    routing = decision.routing
    return (routing.department, routing.language, routing.escalate, routing.priority, routing.confidence)


def test_the_packaged_pipeline_decides_the_same_either_way() -> None:
    messages = _heldout_messages()
    assert len(messages) > 3000
    native, reference = _pipeline(native=True), _pipeline(native=False)
    differing = []
    for start in range(0, len(messages), 512):
        batch = messages[start : start + 512]
        contexts = [ConversationContext()] * len(batch)
        mine, theirs = native.decide_batch(batch, contexts), reference.decide_batch(batch, contexts)
        differing += [
            m.message_id for m, a, b in zip(batch, mine, theirs, strict=True) if _decided(a) != _decided(b)
        ]
        texts = [normalize(model_input(m.subject or "", m.text)) for m in batch]
        for probabilities, expected in zip(
            native._probabilities(texts), reference._probabilities(texts), strict=True
        ):
            # Not bit for bit: C's logf and numpy's float32 log differ in the last bit now and then.
            np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)
    assert differing == []


# Scoring: Featurizer.scores in C against the reference, transform_normalized(...).product(...).

SCORE_TOLERANCE = 1e-5


@cache
def _model(bits: int, columns: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Inverse document frequencies and weights of a made-up model: as a trained one, idf in [1, 12]."""
    generator = np.random.default_rng(bits * 1000 + columns)
    idf = generator.uniform(1.0, 12.0, size=1 << bits).astype(np.float32)
    weights = generator.normal(0.0, 1.0, size=(1 << bits, columns)).astype(np.float32)
    return idf, weights


def _assert_same_scores(
    spec: FeatureSpec,
    texts: Sequence[str],
    idf: npt.NDArray[np.float32] | None,
    weights: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    native, reference = Featurizer(spec, native=True), Featurizer(spec, native=False)
    mine, theirs = native.scores(texts, idf, weights), reference.scores(texts, idf, weights)
    assert mine.dtype == theirs.dtype == np.float32
    assert mine.shape == theirs.shape == (len(texts), weights.shape[1])
    assert mine.flags.writeable
    np.testing.assert_allclose(mine, theirs, rtol=0, atol=SCORE_TOLERANCE)
    return mine


@pytest.mark.parametrize(
    ("spec", "columns"),
    # 21 columns: a full tile of 16 and a narrower one; 2**24 rows of more than one take gigabytes.
    [(spec, columns) for spec in SPECS for columns in (1, 16, 21) if spec.bits <= 20 or columns == 1],
    ids=str,
)
def test_corpus_scores_are_the_reference_ones(corpus: list[str], spec: FeatureSpec, columns: int) -> None:
    _assert_same_scores(spec, corpus, *_model(spec.bits, columns))


def test_the_packaged_models_score_the_corpus_as_the_reference(corpus: list[str]) -> None:
    pipeline = build_decider(RouterConfig(), lambda: NOW)
    for spec, _, idf, weights, _ in pipeline._stacks:
        for start in range(0, len(corpus), 512):
            scores = _assert_same_scores(spec, corpus[start : start + 512], idf, weights)
        assert bool(np.all(np.isfinite(scores)))


def test_scores_come_in_documents_order(corpus: list[str]) -> None:
    featurizer, texts = Featurizer(native=True), corpus[:200]
    idf, weights = _model(18, 16)
    whole = featurizer.scores(texts, idf, weights)
    for size in (1, 7, 17):
        parts = [featurizer.scores(texts[s : s + size], idf, weights) for s in range(0, len(texts), size)]
        np.testing.assert_array_equal(np.vstack(parts), whole)


_SCORE_SPEC = st.builds(
    FeatureSpec,
    bits=st.integers(8, 16),  # weights of up to 2**16 x 33: hypothesis makes hundreds of examples
    char_orders=st.sampled_from([(1, 2, 3, 4, 5), (2, 3, 4, 5), (3,), (1,), (8,), (1, 1, 2), (5, 1)]),
    words=st.booleans(),
    word_bigrams=st.booleans(),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TEXT, min_size=1, max_size=30), _SCORE_SPEC, st.sampled_from([1, 2, 16, 17, 33]))
def test_any_text_has_the_reference_scores(texts: list[str], spec: FeatureSpec, columns: int) -> None:
    # Batches of up to 16 take the reference's numpy product, larger ones its sparse product.
    _assert_same_scores(spec, texts, *_model(spec.bits, columns))


def test_a_document_without_n_grams_scores_zero() -> None:
    idf, weights = _model(18, 3)
    texts = [normalize(text) for text in ("", "!!!", "hello")]  # punctuation is no n-gram
    scores = Featurizer(native=True).scores(texts, idf, weights)
    np.testing.assert_array_equal(scores[:2], np.zeros((2, 3), dtype=np.float32))
    assert bool(np.any(scores[2] != 0))


@pytest.mark.parametrize("native", [True, False])
def test_an_empty_batch_has_no_scores(native: bool) -> None:
    idf, weights = _model(18, 3)
    assert Featurizer(native=native).scores([], idf, weights).shape == (0, 3)


def test_models_without_idf_are_scored_by_the_reference(corpus: list[str]) -> None:
    # Format 1 models weigh counts by the message's length; the C scorer knows only TF-IDF.
    _, weights = _model(18, 4)
    native = Featurizer(native=True)
    expected = native.transform_normalized(corpus[:100]).product(weights, None)
    np.testing.assert_array_equal(native.scores(corpus[:100], None, weights), expected)


def test_the_scorer_runs_in_threads(corpus: list[str]) -> None:
    idf, weights = _model(18, 16)
    expected = Featurizer(native=True).scores(corpus[:500], idf, weights)
    results: list[npt.NDArray[np.float32]] = []

    def work() -> None:
        for _ in range(5):
            results.append(Featurizer(native=True).scores(corpus[:500], idf, weights))

    _in_four_threads(work)
    assert len(results) == 20
    for result in results:
        np.testing.assert_array_equal(result, expected)


def _valid_score_arguments() -> dict[str, Any]:
    return {
        "codes": _codes(["a b", "c"]),
        "documents": 2,
        "bits": 8,
        "orders": b"\x01\x02",
        "words": True,
        "word_pairs": True,
        "idf": np.ones(256, dtype=np.float32),
        "weights": np.ones((256, 3), dtype=np.float32),
        "columns": 3,
    }


def test_the_scorer_takes_valid_arguments() -> None:
    scorer = importlib.import_module("router._ngrams")
    scores = np.frombuffer(scorer.score(**_valid_score_arguments()), dtype=np.float32)
    assert scores.shape == (6,) and bool(np.all(scores > 0))
    # A flat buffer of the same floats is the same matrix.
    flat = {**_valid_score_arguments(), "weights": np.ones(256 * 3, dtype=np.float32).tobytes()}
    with pytest.raises(ValueError, match="float32"):  # bytes are unsigned chars, not floats
        scorer.score(**flat)
    flat["weights"] = np.ones(256 * 3, dtype=np.float32)
    assert scorer.score(**flat) == scorer.score(**_valid_score_arguments())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"bits": 7}, "bits"),
        ({"bits": 25}, "bits"),
        ({"orders": b"\x00"}, "orders"),
        ({"documents": 3}, "documents"),
        ({"documents": 0}, "documents"),
        ({"codes": np.zeros(4, dtype=np.int64)}, "uint32"),
        ({"codes": _codes(["a", "b"])[::2]}, "contiguous"),
        ({"idf": np.ones(256, dtype=np.float64)}, "idf"),
        ({"idf": np.ones(255, dtype=np.float32)}, "idf"),
        ({"idf": np.ones(512, dtype=np.float32)}, "idf"),
        ({"idf": np.ones((16, 16), dtype=np.float32)}, "idf"),
        ({"idf": np.ones(256, dtype=">f4")}, "idf"),
        ({"idf": np.ones(512, dtype=np.float32)[::2]}, "contiguous"),
        ({"weights": np.ones((256, 3), dtype=np.float64)}, "weights"),
        ({"weights": np.ones((256, 3), dtype=np.int32)}, "weights"),
        ({"weights": np.ones((256, 4), dtype=np.float32)}, "weights"),
        ({"weights": np.ones((255, 3), dtype=np.float32)}, "weights"),
        ({"weights": np.ones((3, 256), dtype=np.float32)}, "weights"),
        ({"weights": np.ones((256, 3, 1), dtype=np.float32)}, "weights"),
        ({"weights": np.ones(256 * 3 + 1, dtype=np.float32)}, "weights"),
        ({"weights": np.ones((256, 3), dtype=np.float32, order="F")}, "contiguous"),
        ({"columns": 0}, "columns"),
        ({"columns": -1}, "columns"),
        ({"columns": 2**62}, "columns"),
    ],
)
def test_the_scorer_refuses_bad_arguments(arguments: dict[str, Any], message: str) -> None:
    scorer = importlib.import_module("router._ngrams")
    with pytest.raises(ValueError, match=message):
        scorer.score(**{**_valid_score_arguments(), **arguments})
