"""Byte automata walked over a batch of texts: py3langid's feature finder and the cue finder.

An automaton is three tables: ``nextmove`` (the next state for row base + byte), ``rowbase``
(each state's row base) and ``output`` (what a state marks, -1 for nothing). A walk reports
``text << 32 | output`` for every marked state it reaches, texts in order. It runs in C
(``router._ngrams.walk``, tables checked at every step) or, where the module was not built,
in Python at ~300 ns a byte.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt

from router.features import load_native

__all__ = ["TEXT_SHIFT", "ByteAutomaton", "phrase_finder"]

TEXT_SHIFT = 32
"""A walk's keys are ``text << TEXT_SHIFT | output``."""

_BYTES = 256


def _native_walker() -> Callable[..., bytes] | None:
    """``router._ngrams.walk`` where the module was built."""
    walk: Callable[..., bytes] | None = getattr(load_native(), "walk", None)
    return walk


class ByteAutomaton:
    """An automaton's tables and a walk over them (see the module docstring)."""

    def __init__(
        self,
        nextmove: npt.NDArray[np.uint32],
        rowbase: npt.NDArray[np.uint32],
        output: npt.NDArray[np.int32],
        *,
        native: bool | None = None,
    ) -> None:
        """*native*: walk in C (True), in Python (False), or in C where it was built."""
        self._nextmove = np.ascontiguousarray(nextmove, dtype=np.uint32)
        self._rowbase = np.ascontiguousarray(rowbase, dtype=np.uint32)
        self._output = np.ascontiguousarray(output, dtype=np.int32)
        walk = _native_walker() if native is not False else None
        if native and walk is None:
            raise RuntimeError("router._ngrams is not built")
        self._walk_native = walk

    @property
    def native(self) -> bool:
        return self._walk_native is not None

    def walk(self, encoded: Sequence[bytes]) -> npt.NDArray[np.int64]:
        """``text << 32 | output`` for every marked state the walk of each text reaches."""
        if self._walk_native is not None:
            ends = np.cumsum([len(data) for data in encoded], dtype=np.int64)
            packed = self._walk_native(self._nextmove, self._rowbase, self._output, b"".join(encoded), ends)
            return np.frombuffer(packed, dtype=np.int64)
        return self._walk_in_python(encoded)

    def _walk_in_python(self, encoded: Sequence[bytes]) -> npt.NDArray[np.int64]:
        nextmove, rowbase, output = self._nextmove, self._rowbase.tolist(), self._output.tolist()
        keys: list[int] = []
        for index, data in enumerate(encoded):
            state = 0
            for byte in data:
                state = int(nextmove[rowbase[state] + byte])
                if output[state] >= 0:
                    keys.append(index << TEXT_SHIFT | output[state])
        return np.array(keys, dtype=np.int64)


def phrase_finder(phrases: Iterable[bytes], *, native: bool | None = None) -> ByteAutomaton:
    """An Aho–Corasick automaton whose walk marks (output 0) every place where one of *phrases*
    ends, overlapping occurrences included: one step a byte, however many phrases there are.

    Built as a complete table (256 moves a state): the trie of the phrases, each state's
    missing moves copied from its failure state, which comes earlier in breadth-first order.
    """
    children: list[dict[int, int]] = [{}]
    ends = [False]
    for phrase in phrases:
        if not phrase:
            continue
        state = 0
        for byte in phrase:
            following = children[state].get(byte)
            if following is None:
                following = children[state][byte] = len(children)
                children.append({})
                ends.append(False)
            state = following
        ends[state] = True
    nextmove = np.zeros((len(children), _BYTES), dtype=np.uint32)
    output = np.where(ends, 0, -1).astype(np.int32)
    failure = [0] * len(children)
    order = deque(children[0].values())
    for byte, child in children[0].items():
        nextmove[0, byte] = child
    while order:
        state = order.popleft()
        fallback = failure[state]
        nextmove[state] = nextmove[fallback]
        if output[fallback] >= 0:  # a phrase ending at the failure state ends here too
            output[state] = 0
        for byte, child in children[state].items():
            nextmove[state, byte] = child
            failure[child] = int(nextmove[fallback, byte])
            order.append(child)
    rowbase = np.arange(len(children), dtype=np.uint32) * np.uint32(_BYTES)
    return ByteAutomaton(nextmove.reshape(-1), rowbase, output, native=native)
