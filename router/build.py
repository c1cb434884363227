"""Build the packaged models from the team corpus: ``python -m router.build``.

The corpus (``router/corpus/<language>.jsonl``) is split once, by content, into a training
part and a held-out fifth that no model is ever trained on; both are written to
``router/corpus/split/`` so that ``switchboard train`` and ``switchboard eval`` can reproduce
every figure. Three models are then trained on the training part and written to
``router/data/``: the departments, the language of Latin-script text, and escalation.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from router.examples import Example, held_out, read_examples, write_examples
from router.features import Featurizer
from router.linear import fit_linear
from router.pipeline import packaged_model_path
from router.training import DEFAULT_SPEC, train_model

__all__ = ["build"]

CORPUS = Path(__file__).parent / "corpus"


def corpus_examples(corpus: Path) -> list[Example]:
    examples: list[Example] = []
    for path in sorted(corpus.glob("*.jsonl")):
        examples.extend(read_examples(path))
    return examples


def build(corpus: Path, version: str) -> None:
    examples = corpus_examples(corpus)
    train = [e for e in examples if not held_out(e)]
    test = [e for e in examples if held_out(e)]
    split = corpus / "split"
    split.mkdir(exist_ok=True)
    write_examples(split / "train.jsonl", train)
    write_examples(split / "heldout.jsonl", test)
    print(f"corpus: {len(examples)} examples, {len(train)} for training, {len(test)} held out")

    department = train_model(train, name=f"default-{version}")
    department.save(packaged_model_path("department"))

    # The same examples, so the same inverse document frequencies: the router then scores the
    # three models with one sparse product.
    features = Featurizer(DEFAULT_SPEC).transform([e.model_input for e in train])
    idf = department.idf
    languages = [e.language or "und" for e in train]
    language = fit_linear(
        f"language-{version}", features, languages, spec=DEFAULT_SPEC, regularization=10.0, idf=idf
    )
    language.save(packaged_model_path("language"))

    escalation_labels = ["true" if e.escalate else "false" for e in train]
    escalation = fit_linear(
        f"escalation-{version}",
        features,
        escalation_labels,
        spec=DEFAULT_SPEC,
        kind="svm",
        regularization=1.0,
        idf=idf,
    )
    escalation.save(packaged_model_path("escalation"))
    print(f"models written to {packaged_model_path('department').parent}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--version", default=f"{datetime.now(UTC):%Y.%m}")
    arguments = parser.parse_args()
    build(arguments.corpus, arguments.version)


if __name__ == "__main__":
    main()
