"""The featurizer: deterministic, position-independent hashes, the same for any batch."""

from __future__ import annotations

import json
import string
import unicodedata
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from router.features import MAX_MODEL_CHARS, FeatureSpec, Featurizer, model_input, normalize, normalize_all

CORPUS = Path(__file__).resolve().parents[2] / "router" / "corpus"


def _buckets(features, document: int) -> list[int]:  # type: ignore[no-untyped-def]
    return sorted(features.buckets[features.documents == document].tolist())


def test_normalize_folds_case_digits_punctuation_and_spaces() -> None:
    assert normalize("Order #4471  NOT delivered!!") == "order 0000 not delivered"
    assert normalize("ＡＢＣ") == "abc"  # full-width forms (NFKC)


# normalize() as first written (one str.translate): the models were trained on its output, so the
# faster byte-level version must give exactly the same text for any input.
_REFERENCE_FOLD = {
    **dict.fromkeys(map(ord, string.punctuation + "¡¿«»“”‘’„‚…–—·•।॥،؛؟。、！？：；（）［］｛｝\x00"), " "),
    **dict.fromkeys(map(ord, "123456789"), "0"),
}


def _reference_normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().translate(_REFERENCE_FOLD).split())


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet=st.characters(codec=None), max_size=60)
    | st.text("Ab1 !?¡。\u0964ß①Ⅻ\x00\ud800\x1c\x85\u1680\u2028\u3000", max_size=30)
)
def test_normalize_matches_its_reference_definition(text: str) -> None:
    assert normalize(text) == _reference_normalize(text)


def test_every_whitespace_character_separates_words() -> None:
    spaces = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
    assert normalize(f"a{spaces}b") == "a b"
    assert all(normalize(f"a{space}b") == "a b" for space in spaces)


def test_normalize_matches_its_reference_on_the_corpus() -> None:
    texts = [
        model_input(row.get("subject") or "", row["text"])
        for path in sorted(CORPUS.glob("*.jsonl"))
        for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())
    ]
    assert len(texts) > 10_000
    assert [normalize(t) for t in texts] == [_reference_normalize(t) for t in texts]


def test_indic_combining_marks_stay_inside_words() -> None:
    assert normalize("ஆர்டர் எங்கே?") == "ஆர்டர் எங்கே"


def test_a_message_has_the_same_features_alone_and_inside_a_batch() -> None:
    featurizer = Featurizer()
    alone = featurizer.transform(["where is my parcel"])
    batch = featurizer.transform(["something else first", "where is my parcel", "and after"])
    assert _buckets(alone, 0) == _buckets(batch, 1)


def test_hashes_are_pinned_across_processes_and_versions() -> None:
    # A model trained in one process must score the same in another: the buckets are fixed values.
    # "hi" is framed as " hi ": 1-grams h, i; 2-grams " h", hi, "i "; 3-grams " hi", "hi "; the word.
    features = Featurizer(FeatureSpec(bits=18)).transform(["hi"])
    assert sorted(features.buckets.tolist()) == [26525, 35179, 48483, 64354, 73306, 73980, 136786, 150182]


def test_weights_put_long_and_short_messages_on_one_scale() -> None:
    features = Featurizer().transform(["short", "a much longer message " * 20])
    idf = features.inverse_document_frequencies()
    weights = features.weights(idf)
    for document in (0, 1):
        for words in (False, True):  # characters and words are each one unit long
            block = weights[(features.documents == document) & (features.words == words)]
            assert np.isclose(float((block**2).sum()), 1.0, atol=1e-4)


def test_each_distinct_n_gram_is_one_entry_with_its_count() -> None:
    features = Featurizer().transform(["refund refund refund", "refund"])
    word = features.words & (features.counts == 3)
    assert word.sum() >= 1 and set(features.documents[word].tolist()) == {0}
    keys = list(
        zip(features.documents.tolist(), features.words.tolist(), features.buckets.tolist(), strict=True)
    )
    assert len(keys) == len(set(keys))
    assert features.documents.tolist() == sorted(features.documents.tolist())


def test_repeating_a_word_counts_less_than_linearly() -> None:
    featurizer = Featurizer()
    training = featurizer.transform(["refund my order", "where is my order", "refund please"])
    idf = training.inverse_document_frequencies()
    once = featurizer.transform(["refund"])
    thrice = featurizer.transform(["refund refund refund"])
    one = once.weights(idf)[(once.documents == 0) & once.words]
    three = thrice.weights(idf)[thrice.words]
    assert len(three) > len(one)  # the word pairs "refund refund" join the word
    assert float(three.max()) < 3 * float(one.max())


def test_rare_n_grams_weigh_more_than_common_ones() -> None:
    training = Featurizer().transform(["my order", "my parcel", "my invoice", "my refund"])
    idf = training.inverse_document_frequencies()
    common = Featurizer().transform(["my"]).buckets
    rare = Featurizer().transform(["invoice"]).buckets
    assert float(idf[rare].mean()) > float(idf[common].mean())


def test_matrix_rows_follow_the_batch_order() -> None:
    features = Featurizer().transform(["a", "", "b c"])
    matrix = features.matrix()
    assert matrix.shape == (3, FeatureSpec().dimensions)
    assert matrix[1].nnz == 0
    assert matrix[0].nnz > 0 and matrix[2].nnz > 0


def test_subject_and_text_are_combined_one_way_everywhere() -> None:
    assert model_input("", "hello") == "hello"
    assert model_input("Refund", "hello") == "Refund\nhello"


def test_models_read_a_bounded_opening_of_long_messages() -> None:
    long_text = "refund please " * 2000
    assert len(model_input("Subject", long_text)) == MAX_MODEL_CHARS
    assert model_input("Subject", long_text).startswith("Subject\nrefund please")


def test_a_batch_is_normalized_as_each_text_alone() -> None:
    texts = [
        model_input(row.get("subject") or "", row["text"])
        for path in sorted(CORPUS.glob("*.jsonl"))
        for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())
    ]
    texts += ["ｆｕｌｌ ｗｉｄｔｈ", "\u09c7\u09be", "a\u0301", "\ud800 lone", ""]
    assert normalize_all(texts) == [normalize(t) for t in texts]
