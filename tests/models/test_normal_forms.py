"""Which texts are already in a normal form: the same answers as unicodedata, found in one pass."""

from __future__ import annotations

import itertools
import sys
import unicodedata
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import normal_forms
from models.normal_forms import DECOMPOSITION_LIMIT, Form, already_normalized

FORMS = get_args(Form)

# The characters the shortcut reasons about, from the scripts the desk serves and beyond: Indic
# letters and signs (vowel signs that compose, nukta, virama), Latin letters with the combining
# marks they compose with, Hangul jamo and a syllable, compatibility and excluded characters.
TRICKY = "".join(
    [
        *map(chr, range(0x0900, 0x0980)),  # Devanagari
        *map(chr, range(0x0980, 0x0A00)),  # Bengali
        *map(chr, range(0x0B80, 0x0C00)),  # Tamil
        *map(chr, range(0x0B00, 0x0B80)),  # Oriya
        *map(chr, range(0x0D00, 0x0D80)),  # Malayalam
        *map(chr, range(0x0300, 0x0370)),  # combining diacritical marks
        "aeinoucsAEINOUCS",
        "éñüçÁÉÍÓÚ\u00c7\u1e08\u1ea1\u1ead\u0131",  # precomposed, some composable further
        "\u1100\u1161\u11a8\uac00\uac01",  # Hangul: L, V, T jamo and two syllables
        "\ufb01\u2126\u212b\u017f\u1e9b\u0f73\u0f71\u0f72\u0344\uff21",  # compatibility, singletons
    ]
)


def _expected(texts: list[str], form: Form) -> list[bool]:
    return [unicodedata.is_normalized(form, text) for text in texts]


def test_nothing_above_the_limit_decomposes_or_combines() -> None:
    above = (chr(p) for p in range(DECOMPOSITION_LIMIT, sys.maxunicode + 1))
    assert [c for c in above if unicodedata.decomposition(c) or unicodedata.combining(c)] == []


@pytest.mark.parametrize("form", FORMS)
def test_every_pair_of_tricky_characters_gets_unicodedatas_answer(form: Form) -> None:
    pairs = ["".join(pair) for pair in itertools.product(TRICKY, repeat=2)]
    assert already_normalized(pairs, form) == _expected(pairs, form)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet=TRICKY + " kx", max_size=12), max_size=20),
    st.sampled_from(FORMS),
)
def test_any_batch_of_tricky_text_gets_unicodedatas_answer(texts: list[str], form: Form) -> None:
    assert already_normalized(texts, form) == _expected(texts, form)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(alphabet=st.characters(codec=None), max_size=30), max_size=10), st.sampled_from(FORMS)
)
def test_any_text_at_all_gets_unicodedatas_answer(texts: list[str], form: Form) -> None:
    assert already_normalized(texts, form) == _expected(texts, form)


def test_typical_indic_and_spanish_text_is_cleared_without_normalizing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts = [
        "আমার অর্ডার এখনও আসেনি, দয়া করে দেখুন",  # Bengali: vowel sign AA after consonants
        "என் ஆர்டர் இன்னும் வரவில்லை, தயவுசெய்து பாருங்கள்",  # Tamil
        "मेरा ऑर्डर अभी तक नहीं आया",  # Hindi
        "¿Dónde está mi pedido? Señor, ayúdeme",  # Spanish, precomposed
        "plain ascii",
    ]
    normal_forms._tables("NFKC")  # built first: building reads unicodedata too

    def refuse(form: str, text: str) -> bool:
        raise AssertionError(f"unicodedata was asked about {text!r}")

    monkeypatch.setattr(normal_forms.unicodedata, "is_normalized", refuse)
    assert already_normalized(texts, "NFKC") == [True] * len(texts)


def test_texts_that_would_change_are_found_whatever_their_neighbours() -> None:
    changing = [
        "\u09c7\u09be",  # Bengali e + aa signs: they compose into U+09CB
        "ক\u09c7\u09be",
        "a\u0301",  # a + acute compose
        "\u00e9\u0323",  # é then a dot below: the marks reorder
        "ｆｕｌｌ ｗｉｄｔｈ",  # compatibility forms (NFKC only)
        "\u1100\u1161",  # Hangul jamo compose
    ]
    batch = ["ok", *changing, "still fine"]
    for form in FORMS:
        assert already_normalized(batch, form) == _expected(batch, form)
    assert already_normalized(batch, "NFKC") == [True] + [False] * len(changing) + [True]
