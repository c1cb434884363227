"""Cue matching: whole phrases at word starts, prefixes marked with "*", the longest cue wins."""

from __future__ import annotations

import pytest

from router.escalation import CUES, CueMatcher
from router.features import normalize
from tests.router.native import in_c_and_python

WALKS = in_c_and_python("ruled out in C", "pattern only")

SAMPLE = {
    "supervisor": ("manager", "talk to your manager"),
    "leaving": ("cancel*", "close my account"),
    "anger": ("angry",),
}


def test_a_phrase_matches_only_as_whole_words() -> None:
    cues = CueMatcher(SAMPLE)
    assert cues.kinds("i want the manager now") == {"supervisor"}
    assert cues.kinds("the managers meeting") == frozenset()
    assert cues.kinds("very angry") == {"anger"}
    assert cues.kinds("angrybird") == frozenset()


def test_a_starred_phrase_matches_as_a_prefix_of_a_longer_word() -> None:
    cues = CueMatcher(SAMPLE)
    assert cues.kinds("i cancelled it") == {"leaving"}
    assert cues.kinds("please cancel") == {"leaving"}


def test_multi_word_cues_and_adjacent_cues_are_all_found() -> None:
    cues = CueMatcher(SAMPLE)
    assert cues.kinds("angry close my account") == {"anger", "leaving"}
    assert cues.kinds("talk to your manager angry") == {"supervisor", "anger"}


def test_the_longest_cue_at_a_word_start_wins() -> None:
    cues = CueMatcher({"short": ("talk",), "long": ("talk to a human",)})
    assert cues.kinds("let me talk to a human") == {"long"}
    assert cues.kinds("let me talk to you") == {"short"}


def test_the_default_cues_are_matched_on_normalized_text() -> None:
    cues = CueMatcher(CUES)
    assert "supervisor" in cues.kinds(normalize("I want to speak to your SUPERVISOR!"))
    assert cues.kinds(normalize("Quiero hablar con el supervisor")) >= {"supervisor"}
    assert cues.kinds(normalize("ok thanks")) == frozenset()


@pytest.mark.parametrize("native", WALKS)
def test_a_batch_gets_the_kinds_each_text_gets_alone(native: bool) -> None:
    cues = CueMatcher(CUES, native=native)
    texts = [
        normalize(text)
        for text in (
            "I want to speak to your SUPERVISOR!",
            "ok thanks",
            "this is a scam, cancel my account",
            "मुझे आपके मैनेजर से बात करनी है, यह धोखा है",
            "",
            "scamp talked to the manager's assistant",
            "let me talk to a human",
        )
    ]
    assert cues.kinds_of_batch(texts) == [cues.kinds(text) for text in texts]
    assert sum(1 for kinds in cues.kinds_of_batch(texts) if kinds) >= 3
