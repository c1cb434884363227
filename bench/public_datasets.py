"""``switchboard train``/``eval`` on public labelled data, beside the published figures.

    python bench/public_datasets.py [--datasets /work/shared/datasets] [--runs 3] [--no-peer] [--keep DIR]

- **banking77** (77 intents, official train/test split): the router's model trained on all of
  the training set, and on 10 examples per intent (the ten with the smallest hash of their text),
  scored on the test set; published: BERT fine-tuned 93.66 %, USE+ConveRT 93.36 %, 10-shot
  (USE+ConveRT) 85.19 %.
- **bitext** (both releases, intents mapped to departments as ``datasets/README.md`` says; split
  80/20 by a SHA-256 of the utterance, so a repeated utterance never sits on both sides): the
  router's model trained on the 80 % and scored on the 20 %; and the *packaged* default model
  (trained on the team's multilingual corpus, never on Bitext) scored on the same 20 %. Bitext has
  no sales intents, so every ``sales`` answer of the packaged model counts as an error.

Both data sets are written as the JSON Lines that ``switchboard train``/``eval`` read
(``text``, ``department``) into a temporary folder; training and scoring go through
``router.training.train`` and ``router.training.evaluate``, the functions behind the CLI. msg/s is
``evaluate``'s own figure (the whole decision pipeline, batches of 2048, wall clock), best of
*runs*. Unless ``--no-peer``, a scikit-learn TF-IDF (char_wb 2-5 + word 1-2) + logistic
regression trained on the same files is shown for scale. Takes about 20 minutes on two shared
cores, most of it training the 77-class banking77 model.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.config import Settings
from router.training import evaluate, train

DATASETS = Path("/work/shared/datasets")

BITEXT_DEPARTMENTS = {
    "orders": ("cancel_order", "change_order", "place_order"),
    "shipping": (
        "track_order",
        "delivery_options",
        "delivery_period",
        "change_shipping_address",
        "set_up_shipping_address",
    ),
    "billing": (
        "check_invoice",
        "check_invoices",
        "get_invoice",
        "check_payment_methods",
        "payment_issue",
        "check_cancellation_fee",
    ),
    "returns": ("get_refund", "track_refund", "check_refund_policy"),
    "complaints": ("complaint", "contact_human_agent"),
    "feedback": ("review",),
    "support": ("recover_password", "registration_problems"),
    "general": (
        "contact_customer_service",
        "create_account",
        "delete_account",
        "edit_account",
        "switch_account",
        "newsletter_subscription",
    ),
}
DEPARTMENT_OF = {
    intent: department for department, intents in BITEXT_DEPARTMENTS.items() for intent in intents
}


@dataclass(frozen=True)
class Result:
    dataset: str
    model: str
    train_n: int
    test_n: int
    classes: int
    accuracy: float
    macro_f1: float
    rate: float | None
    train_seconds: float | None
    published: str


def digest(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], 16)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def write_jsonl(path: Path, pairs: Iterable[tuple[str, str]]) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for text, department in pairs:
            handle.write(json.dumps({"text": text, "department": department}, ensure_ascii=False) + "\n")
            count += 1
    return count


def few_shot(pairs: Sequence[tuple[str, str]], per_class: int) -> list[tuple[str, str]]:
    """*per_class* examples of each label: those whose text hashes lowest (deterministic, unbiased)."""
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for pair in pairs:
        by_label[pair[1]].append(pair)
    chosen = [
        p
        for label in sorted(by_label)
        for p in sorted(by_label[label], key=lambda p: digest(p[0]))[:per_class]
    ]
    return sorted(chosen, key=lambda p: digest(p[0]))


def bitext_rows(folder: Path) -> list[tuple[str, str, str]]:
    """(utterance, department, intent) of every row of both releases."""
    rows = []
    for path in sorted(folder.glob("*.csv")):
        for row in read_csv(path):
            department = DEPARTMENT_OF.get(row["intent"])
            if department is None:
                raise SystemExit(f"{path}: intent {row['intent']!r} has no department in the mapping")
            rows.append((row["utterance"].strip(), department, row["intent"]))
    return [r for r in rows if r[0]]


def score(
    settings: Settings, test: Path, model: Path | None, runs: int
) -> tuple[dict[str, Any], float | None]:
    """``evaluate``'s report (from the first run) and its best messages per second over *runs*."""
    reports = [evaluate(test, model, settings) for _ in range(runs)]
    rates = [r["messages_per_second"] for r in reports if r["messages_per_second"] is not None]
    return reports[0], max(rates) if rates else None


def packaged_answers(
    settings: Settings, rows: Sequence[tuple[str, str, str]]
) -> tuple[Counter[str], dict[str, Counter[str]]]:
    """How the packaged pipeline routes *rows* (as ``evaluate`` runs it: all its classes, no
    rules): answers by department, and by Bitext intent."""
    from datetime import UTC, datetime

    from models import InboundMessage, Sender
    from router.linear import LinearModel
    from router.pipeline import ConversationContext, build_decider, packaged_model_path

    classes = LinearModel.load(packaged_model_path("department")).classes
    router = settings.router.model_copy(update={"departments": classes, "rules": ()})
    pipeline = build_decider(router, lambda: datetime.now(UTC))
    now = datetime.now(UTC)
    answers: Counter[str] = Counter()
    by_intent: dict[str, Counter[str]] = defaultdict(Counter)
    for start in range(0, len(rows), 2048):
        batch = [
            InboundMessage(
                message_id=f"b{start + i}",
                channel="cli",
                channel_instance="cli",
                native_id=str(start + i),
                received_at=now,
                sender=Sender(id="cli"),
                conversation_id=f"cli:{start + i}",
                text=text,
                body=text,
            )
            for i, (text, _, _) in enumerate(rows[start : start + 2048])
        ]
        decisions = pipeline.decide_batch(batch, [ConversationContext()] * len(batch))
        for decision, (_, _, intent) in zip(decisions, rows[start : start + 2048], strict=True):
            answers[decision.routing.department] += 1
            by_intent[intent][decision.routing.department] += 1
    return answers, by_intent


def router_row(
    settings: Settings,
    folder: Path,
    dataset: str,
    label: str,
    train_pairs: Sequence[tuple[str, str]],
    test: Path,
    test_n: int,
    runs: int,
    published: str,
) -> Result:
    train_path = folder / f"{dataset}-{label}-train.jsonl"
    write_jsonl(train_path, train_pairs)
    model = folder / f"{dataset}-{label}.npz"
    started = time.perf_counter()
    summary = train(train_path, model, settings)
    seconds = time.perf_counter() - started
    print(f"  {summary.partition('; not configured')[0]}", flush=True)  # the label list is long
    report, rate = score(settings, test, model, runs)
    return Result(
        dataset,
        f"router {label}",
        len(train_pairs),
        test_n,
        len({d for _, d in train_pairs}),
        report["accuracy"],
        report["macro_f1"],
        rate,
        seconds,
        published,
    )


def peer_row(
    dataset: str, train_pairs: Sequence[tuple[str, str]], test_pairs: Sequence[tuple[str, str]], runs: int
) -> Result:
    """The usual scikit-learn text classifier on the same split, scored with the same macro-F1."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import FeatureUnion, make_pipeline

    vectorizer = FeatureUnion(
        [
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
            ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)),
        ]
    )
    model = make_pipeline(vectorizer, LogisticRegression(C=10.0, max_iter=1000))
    started = time.perf_counter()
    model.fit([t for t, _ in train_pairs], [d for _, d in train_pairs])
    seconds = time.perf_counter() - started
    texts, truth = [t for t, _ in test_pairs], [d for _, d in test_pairs]
    predicted = model.predict(texts)
    rate = 0.0
    for _ in range(runs):  # one batch, like evaluate's batches of 2048: the best of *runs*
        began = time.perf_counter()
        model.predict(texts)
        rate = max(rate, len(texts) / (time.perf_counter() - began))
    labels = sorted(set(truth))
    return Result(
        dataset,
        "peer tfidf+LR",
        len(train_pairs),
        len(test_pairs),
        len({d for _, d in train_pairs}),
        round(float(accuracy_score(truth, predicted)), 4),
        round(float(f1_score(truth, predicted, labels=labels, average="macro")), 4),
        rate,
        seconds,
        "-",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=Path, default=DATASETS)
    parser.add_argument("--runs", type=int, default=3, help="evaluate runs; the best msg/s is kept")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="write the JSON Lines and models here")
    args = parser.parse_args()
    settings = Settings()
    results: list[Result] = []
    notes: list[str] = []

    with tempfile.TemporaryDirectory(prefix="bench-public-") as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)

        banking = args.datasets / "banking77"
        b_train = [(r["text"], r["category"]) for r in read_csv(banking / "train.csv")]
        b_test = [(r["text"], r["category"]) for r in read_csv(banking / "test.csv")]
        b_test_path = folder / "banking77-test.jsonl"
        write_jsonl(b_test_path, b_test)
        print(f"banking77: {len(b_train)} train, {len(b_test)} test", flush=True)
        results.append(
            router_row(
                settings,
                folder,
                "banking77",
                "full",
                b_train,
                b_test_path,
                len(b_test),
                args.runs,
                "BERT 93.66 / USE+ConveRT 93.36",
            )
        )
        results.append(
            router_row(
                settings,
                folder,
                "banking77",
                "10-shot",
                few_shot(b_train, 10),
                b_test_path,
                len(b_test),
                args.runs,
                "USE+ConveRT 10-shot 85.19",
            )
        )
        if not args.no_peer:
            results.append(peer_row("banking77", b_train, b_test, args.runs))
            results.append(peer_row("banking77", few_shot(b_train, 10), b_test, args.runs))

        bitext = bitext_rows(args.datasets / "bitext")
        pairs = [(text, department) for text, department, _ in bitext]
        x_train = [p for p in pairs if digest(p[0]) % 5 != 0]
        x_test = [p for p in pairs if digest(p[0]) % 5 == 0]
        x_test_path = folder / "bitext-test.jsonl"
        write_jsonl(x_test_path, x_test)
        print(f"bitext: {len(pairs)} utterances, {len(x_train)} train, {len(x_test)} test", flush=True)
        results.append(
            router_row(
                settings, folder, "bitext", "trained", x_train, x_test_path, len(x_test), args.runs, "-"
            )
        )
        packaged, rate = score(settings, x_test_path, None, args.runs)
        results.append(
            Result(
                "bitext",
                f"packaged {packaged['model']}",
                0,
                len(x_test),
                len({d for _, d in x_test}),
                packaged["accuracy"],
                packaged["macro_f1"],
                rate,
                None,
                "-",
            )
        )
        if not args.no_peer:
            results.append(peer_row("bitext", x_train, x_test, args.runs))
        answers, by_intent = packaged_answers(settings, [r for r in bitext if digest(r[0]) % 5 == 0])
        notes.append(
            f"packaged model on the bitext test split: {answers['sales']} of {len(x_test)} messages "
            f"({answers['sales'] / len(x_test):.1%}) routed to sales, which Bitext never is; answers by "
            "department: " + ", ".join(f"{d} {n}" for d, n in answers.most_common())
        )
        agreement = sorted(
            by_intent.items(), key=lambda item: item[1][DEPARTMENT_OF[item[0]]] / sum(item[1].values())
        )
        notes.append(
            "intents the packaged model routes least as mapped (intent→mapped: share, its commonest answer): "
            + "; ".join(
                f"{intent}→{DEPARTMENT_OF[intent]}: {counts[DEPARTMENT_OF[intent]] / sum(counts.values()):.0%}, "
                f"{counts.most_common(1)[0][0]}"
                for intent, counts in agreement[:8]
            )
        )

    print(f"\npublic data sets through router.training.train/evaluate; load average {os.getloadavg()[0]:.1f}")
    print(
        f"{'dataset':10} {'model':30} {'train':>6} {'test':>6} {'classes':>7} {'accuracy':>9} "
        f"{'macro-F1':>9} {'msg/s':>8} {'train s':>8}  published (accuracy %)"
    )
    for r in results:
        speed = f"{r.rate:8,.0f}" if r.rate is not None else f"{'-':>8}"
        seconds = f"{r.train_seconds:8.1f}" if r.train_seconds is not None else f"{'-':>8}"
        print(
            f"{r.dataset:10} {r.model[:30]:30} {r.train_n:6d} {r.test_n:6d} {r.classes:7d} "
            f"{r.accuracy * 100:8.2f}% {r.macro_f1 * 100:8.2f}% {speed} {seconds}  {r.published}"
        )
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
