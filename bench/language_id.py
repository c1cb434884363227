"""Language identification on the team corpus's held-out split: the router against general libraries.

    python bench/language_id.py [--data router/corpus/split/heldout.jsonl] [--runs 3] [--cpu N | --no-pin]

Accuracy by language, by form (native script, romanized, code-mixed) and by both, for:

- ``router``: the router's ``LanguageIdentifier`` as the pipeline runs it (script, then the
  packaged language model on the batch's hashed n-grams, then py3langid when unsure), on the
  pipeline's normalized model input, the whole split as one batch;
- ``py3langid``: py3langid alone, all of its languages, on the raw text, one call per message;
- ``py3langid-6``: py3langid restricted to the six first-class languages (ta, bn, tl, hi, en, es);
- ``lingua-6``: lingua-language-detector restricted to the same six, one call per message (its
  default, high-accuracy mode); the column says "not installed" when the package is missing.

Speed is messages per second of each tool over the split, best of *runs*, on one CPU (the
process is pinned, BLAS/OpenMP one thread): by the thread's CPU time (the machine is shared) and
by the wall clock.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # one core: set before numpy (and its BLAS) is first imported

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from router.features import Featurizer, model_input, normalize  # noqa: E402
from router.language import FIRST_CLASS, LanguageIdentifier, general_identifier  # noqa: E402
from router.linear import LinearModel  # noqa: E402
from router.pipeline import packaged_model_path  # noqa: E402

HELDOUT = Path(__file__).resolve().parent.parent / "router" / "corpus" / "split" / "heldout.jsonl"
FORMS = ("native", "romanized", "code-mixed")

Tool = Callable[[Sequence[str]], list[str]]


@dataclass(frozen=True)
class Speed:
    cpu_rate: float
    wall_rate: float


def read_split(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def router_tool() -> tuple[Tool, Callable[[], Counter[str]]]:
    """The pipeline's language step on a batch, and a view of how each guess was made."""
    model = LinearModel.load(packaged_model_path("language"))
    identifier = LanguageIdentifier(model, general_identifier())
    featurizer = Featurizer(model.spec)
    methods: Counter[str] = Counter()

    def identify(texts: Sequence[str]) -> list[str]:
        normalized = [normalize(t) for t in texts]
        guesses = identifier.identify(normalized, featurizer.transform_normalized(normalized))
        methods.clear()
        methods.update(g.method for g in guesses)
        return [g.language for g in guesses]

    return identify, lambda: methods


def py3langid_tool(restrict: bool) -> Tool:
    from py3langid.langid import MODEL_FILE
    from py3langid.langid import LanguageIdentifier as Langid

    identifier = Langid.from_model_file(MODEL_FILE, norm_probs=False)
    if restrict:
        identifier.set_languages(list(FIRST_CLASS))

    def identify(texts: Sequence[str]) -> list[str]:
        return [str(identifier.classify(t)[0]) for t in texts]

    return identify


def lingua_tool() -> Tool | None:
    if importlib.util.find_spec("lingua") is None:
        return None
    from lingua import Language, LanguageDetectorBuilder

    six = [
        Language.TAMIL,
        Language.BENGALI,
        Language.TAGALOG,
        Language.HINDI,
        Language.ENGLISH,
        Language.SPANISH,
    ]
    detector = LanguageDetectorBuilder.from_languages(*six).build()

    def identify(texts: Sequence[str]) -> list[str]:
        found = [detector.detect_language_of(t) for t in texts]
        return [f.iso_code_639_1.name.lower() if f is not None else "und" for f in found]

    return identify


def timed(tool: Tool, texts: Sequence[str], runs: int) -> tuple[list[str], Speed]:
    """The tool's answers and its best speed over *runs* passes (after one warm-up pass)."""
    answers = tool(texts)
    best = Speed(0.0, 0.0)
    for _ in range(runs):
        gc.collect()
        began, began_cpu = time.perf_counter(), time.thread_time()
        tool(texts)
        cpu, wall = time.thread_time() - began_cpu, time.perf_counter() - began
        if len(texts) / cpu > best.cpu_rate:
            best = Speed(len(texts) / cpu, len(texts) / wall)
    return answers, best


def accuracy(truth: Sequence[str], answers: Sequence[str], rows: Sequence[int]) -> str:
    if not rows:
        return "-"
    return f"{sum(truth[i] == answers[i] for i in rows) / len(rows):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=HELDOUT)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last one)")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()

    pinned = "not pinned"
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinned = f"pinned to CPU {cpu}"

    records = read_split(args.data)
    texts = [model_input(r.get("subject") or "", r["text"]) for r in records]
    truth = [str(r["language"]) for r in records]
    router, methods = router_tool()
    tools: list[tuple[str, Tool | None]] = [
        ("router", router),
        ("py3langid", py3langid_tool(restrict=False)),
        ("py3langid-6", py3langid_tool(restrict=True)),
        ("lingua-6", lingua_tool()),
    ]
    results: dict[str, tuple[list[str], Speed] | None] = {}
    for name, tool in tools:
        results[name] = timed(tool, texts, args.runs) if tool is not None else None
    router_methods = methods().copy()

    groups: list[tuple[str, list[int]]] = [("all", list(range(len(records))))]
    languages = sorted(set(truth), key=lambda c: FIRST_CLASS.index(c) if c in FIRST_CLASS else 99)
    groups += [(f"lang {code}", [i for i, t in enumerate(truth) if t == code]) for code in languages]
    forms = [str(r.get("form") or "native") for r in records]
    groups += [(f"form {form}", [i for i, f in enumerate(forms) if f == form]) for form in FORMS]
    groups += [
        (f"{code} {form}", rows)
        for code in languages
        for form in FORMS
        if (rows := [i for i, (t, f) in enumerate(zip(truth, forms, strict=True)) if t == code and f == form])
    ]

    print(
        f"\nlanguage identification on {args.data.name}: {len(records)} messages, {pinned}, "
        f"best of {args.runs}; load average {os.getloadavg()[0]:.1f}"
    )
    header = f"{'group':22} {'n':>5}" + "".join(f" {name:>13}" for name, _ in tools)
    print(header)
    for label, rows in groups:
        cells = []
        for name, _ in tools:
            result = results[name]
            cells.append(accuracy(truth, result[0], rows) if result is not None else "not installed")
        print(f"{label:22} {len(rows):5d}" + "".join(f" {cell:>13}" for cell in cells))
    for label, attribute in (("msg/s (cpu)", "cpu_rate"), ("msg/s (wall)", "wall_rate")):
        cells = []
        for name, _ in tools:
            result = results[name]
            cells.append(f"{getattr(result[1], attribute):,.0f}" if result is not None else "not installed")
        print(f"{label:22} {'':5}" + "".join(f" {cell:>13}" for cell in cells))
    shares = ", ".join(f"{method} {count}" for method, count in router_methods.most_common())
    print(f"\nrouter guesses by method: {shares}")
    wrong = (
        Counter((t, a) for t, a in zip(truth, results["router"][0], strict=True) if t != a)
        if results["router"]
        else Counter()
    )
    print(
        "router's commonest errors (truth->guess): "
        + ", ".join(f"{t}->{a} {n}" for (t, a), n in wrong.most_common(6))
    )


if __name__ == "__main__":
    main()
