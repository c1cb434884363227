"""The phrase finder marks every place a phrase ends, in C as in Python."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.automaton import TEXT_SHIFT, phrase_finder
from tests.router.native import in_c_and_python, needs_native

WALKS = in_c_and_python("walk in C", "walk in Python")


def byte_strings(alphabet: bytes, *, min_size: int = 0, max_size: int) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(alphabet), min_size=min_size, max_size=max_size).map(bytes)


def ends_of(phrases: list[bytes], text: bytes) -> list[int]:
    """Where an occurrence of a phrase ends (the offset of its last byte), the slow way."""
    return sorted(
        {at + len(p) - 1 for p in phrases if p for at in range(len(text)) if text.startswith(p, at)}
    )


def marked_ends(phrases: list[bytes], texts: list[bytes], native: bool) -> list[list[int]]:
    """The walk marks one state a byte at most, so with output 0 its keys count the marked bytes;
    positions come from walking each prefix of the text."""
    finder = phrase_finder(phrases, native=native)
    return [
        [
            end
            for end in range(len(text))
            if len(finder.walk([text[: end + 1]])) > len(finder.walk([text[:end]]))
        ]
        for text in texts
    ]


@pytest.mark.parametrize("native", WALKS)
def test_overlapping_and_nested_phrases_are_all_found(native: bool) -> None:
    phrases = [b" he", b" hers ", b"she", b"his"]
    text = b" ushers his she "
    assert marked_ends(phrases, [text], native) == [ends_of(phrases, text)]


@pytest.mark.parametrize("native", WALKS)
def test_a_walk_reports_each_text_by_its_index(native: bool) -> None:
    finder = phrase_finder([b" scam", " धोखा".encode()], native=native)
    texts = [b" hello ", b" it is a scam ", " यह धोखा है ".encode(), b""]
    assert sorted(set((finder.walk(texts) >> TEXT_SHIFT).tolist())) == [1, 2]


@needs_native
@settings(max_examples=200, deadline=None)
@given(
    st.lists(byte_strings(b"ab ", min_size=1, max_size=4), min_size=1, max_size=6),
    st.lists(byte_strings(b"ab c", max_size=24), max_size=5),
)
def test_the_c_and_python_walks_agree_with_a_direct_search(phrases: list[bytes], texts: list[bytes]) -> None:
    expected = [ends_of(phrases, text) for text in texts]
    assert marked_ends(phrases, texts, native=True) == expected
    assert marked_ends(phrases, texts, native=False) == expected
