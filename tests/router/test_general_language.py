"""The batched general identifier answers as py3langid's own ``classify`` does, text by text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.features import Featurizer, normalize
from router.general_language import BatchIdentifier
from router.language import GENERAL_SAMPLE, LanguageIdentifier
from router.linear import LinearModel
from router.training import packaged_model_path
from tests.router.native import in_c_and_python, needs_native

HELDOUT = Path(__file__).resolve().parents[2] / "router" / "corpus" / "split" / "heldout.jsonl"
WALKS = in_c_and_python("walk in C", "walk in Python")
BEYOND_THE_SIX = [
    "Bonjour, je voudrais retourner ma commande, elle est arrivée cassée.",
    "Guten Tag, meine Bestellung ist noch nicht angekommen. Wo ist sie?",
    "Здравствуйте, где мой заказ? Я жду уже две недели.",
    "مرحبا، لم يصل طلبي بعد",
    "注文した商品がまだ届いていません。",
    "สวัสดีครับ สินค้ายังไม่ได้รับ",
    "Olá, gostaria de cancelar a minha encomenda.",
]
EDGES = ["", "12345 678", "!!!", "HELLO I NEED HELP WITH MY ORDER", "a", "\ud800 lone surrogate"]


@cache
def py3langid() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@cache
def heldout_texts() -> list[str]:
    with HELDOUT.open(encoding="utf-8") as lines:
        return [normalize(json.loads(line)["text"])[:GENERAL_SAMPLE] for line in lines]


@pytest.mark.parametrize("native", WALKS)
def test_every_answer_is_the_one_py3langid_gives_text_by_text(native: bool) -> None:
    texts = heldout_texts() + BEYOND_THE_SIX + EDGES
    batched = BatchIdentifier(py3langid(), native=native)(texts)
    one_by_one = [py3langid().classify(text) for text in texts]
    assert [language for language, _ in batched] == [language for language, _ in one_by_one]
    # The sums run in another order (a sparse product instead of a dot product per text).
    assert np.allclose([p for _, p in batched], [p for _, p in one_by_one], atol=1e-3)


def test_languages_beyond_the_six_come_back_right() -> None:
    answers = BatchIdentifier(py3langid())(BEYOND_THE_SIX)
    assert [language for language, _ in answers] == ["fr", "de", "ru", "ar", "ja", "th", "pt"]


@cache
def identifier_walking(native: bool) -> BatchIdentifier:
    return BatchIdentifier(py3langid(), native=native)


@needs_native
@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=60), max_size=6))
def test_the_c_walk_reaches_the_features_the_python_walk_reaches(texts: list[str]) -> None:
    encoded = [py3langid()._encode(text) for text in texts]
    in_c = identifier_walking(True)._features(encoded).tolist()
    assert in_c == identifier_walking(False)._features(encoded).tolist()


@needs_native
def test_a_malformed_automaton_is_refused_not_read_out_of_bounds() -> None:
    from router._ngrams import walk  # type: ignore[import-not-found]

    nextmove = np.array([5] * 256, dtype=np.uint32)  # every move leads to state 5, of 1 state
    rowbase = np.zeros(1, dtype=np.uint32)
    output = np.full(1, -1, dtype=np.int32)
    with pytest.raises(ValueError, match="outside"):
        walk(nextmove, rowbase, output, b"ab", np.array([2], dtype=np.int64))
    with pytest.raises(ValueError, match="ends"):
        walk(nextmove, rowbase, output, b"ab", np.array([3], dtype=np.int64))


def test_an_identifier_whose_tables_disagree_with_its_classes_is_not_batched() -> None:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    odd = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    odd.nb_pc = odd.nb_pc[:-1]  # one prior short
    with pytest.raises(TypeError, match="agree"):
        BatchIdentifier(odd)


class Recording:
    """A general identifier that answers "fr" and remembers what it was asked, batch by batch."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def __call__(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        self.asked.append(list(texts))
        return [("fr", 0.99)] * len(texts)


def test_the_general_identifier_is_asked_once_a_batch_and_only_about_unsure_texts() -> None:
    general = Recording()
    identifier = LanguageIdentifier(LinearModel.load(packaged_model_path("language")), general)
    texts = [
        normalize("hello, my order has not arrived and I want a refund"),
        normalize("வணக்கம் என் ஆர்டர் வரவில்லை"),
        normalize("Здравствуйте, где мой заказ?"),
        normalize("ok"),
    ]
    guesses = identifier.identify(texts, Featurizer(identifier.model.spec).transform_normalized(texts))
    assert len(general.asked) == 1
    assert texts[2] in general.asked[0] and texts[1] not in general.asked[0]
    assert guesses[1].method == "script" and guesses[2] == ("fr", 0.99, "general")
