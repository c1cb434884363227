"""Script counting: each text's letters, whatever the other texts of the batch contain."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from router import language as language_module
from router.language import script_counts


def test_letters_are_counted_per_script_and_per_text() -> None:
    counts = script_counts(["hi there", "ஆர்டர்", "অর্ডার", "ऑर्डर", "Привет", "123 !!"])
    latin, devanagari, bengali, tamil, other = counts.T
    assert latin.tolist() == [7, 0, 0, 0, 0, 0]
    assert tamil[1] > 0 and bengali[2] > 0 and devanagari[3] > 0 and other[4] > 0
    assert counts[5].sum() == 0


def test_a_nul_inside_one_text_does_not_shift_the_others() -> None:
    counts = script_counts(["a\x00b", "அ"])
    assert counts[0].tolist() == [2, 0, 0, 0, 0]
    assert counts[1].tolist() == [0, 0, 0, 1, 0]


def _letters_by_script(text: str) -> list[int]:
    counts = [0] * len(language_module._COLUMNS)
    for char in text:
        for first, last, script in language_module._SCRIPTS:
            if first <= ord(char) <= last:
                counts[language_module._COLUMNS.index(script)] += 1
                break
    return counts


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.characters(codec="utf-8"), max_size=40), max_size=8))
def test_script_counts_are_each_texts_letters_per_script(texts: list[str]) -> None:
    assert script_counts(texts).tolist() == [_letters_by_script(t) for t in texts]
