"""Marks for tests of the C module (``router._ngrams``): outside CI they skip where it was not
built; in CI, which builds it, they run and fail, so a broken build cannot pass unnoticed on the
Python fallbacks."""

from __future__ import annotations

import os
from typing import Any

import pytest

from router.features import NATIVE_AVAILABLE

IN_CI = bool(os.environ.get("CI"))  # as the other service checks of the suite read it
needs_native = pytest.mark.skipif(not NATIVE_AVAILABLE and not IN_CI, reason="router._ngrams is not built")


def in_c_and_python(in_c: str, in_python: str) -> list[Any]:
    """Parameters True (the C path, *in_c* as its id) and False (*in_python*) for a ``native`` argument."""
    return [pytest.param(True, id=in_c, marks=needs_native), pytest.param(False, id=in_python)]
