"""``switchboard train``, ``eval`` and ``classify``: the department model outside the service.

All three read text through the same function of (subject, text) as the routing service
(:func:`router.features.model_input`), and ``classify`` runs the service's own pipeline on one
message, so what an admin sees here is what the router does.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models import InboundMessage, Routing, Sender
from models.config import Settings
from models.errors import InvalidInput
from router.examples import Example, read_examples
from router.features import SMALL_BATCH, FeatureSpec, Featurizer
from router.linear import LinearModel, fit_linear
from router.pipeline import ConversationContext, build_decider, packaged_model_path

__all__ = ["classify", "evaluate", "format_report", "train", "train_model"]

# Character 1-grams add nothing the 2- to 5-grams and words do not already say (held-out
# macro-F1 0.9109 without them, 0.9112 with) and cost a sixth of the featurizing time.
DEFAULT_SPEC = FeatureSpec(char_orders=(2, 3, 4, 5))
BATCH = 2048


def _message(text: str, subject: str, now: datetime) -> InboundMessage:
    return InboundMessage(
        message_id="classify",
        channel="cli",
        channel_instance="cli",
        native_id="classify",
        received_at=now,
        sender=Sender(id="cli"),
        conversation_id="cli:classify",
        subject=subject or None,
        text=text,
        body=text,
    )


def classify(text: str, subject: str, settings: Settings) -> Routing:
    """The routing decision the router would take for this message as a new conversation."""
    if not text.strip():
        raise InvalidInput("the message text is empty")
    pipeline = build_decider(settings.router, lambda: datetime.now(UTC))
    now = datetime.now(UTC)
    return pipeline.decide_batch([_message(text, subject, now)], [ConversationContext()])[0].routing


def train_model(examples: Sequence[Example], *, name: str, spec: FeatureSpec = DEFAULT_SPEC) -> LinearModel:
    """A department model trained on labelled *examples*."""
    labels = [e.department or "" for e in examples]
    counts = Counter(labels)
    features = Featurizer(spec).transform([e.model_input for e in examples])
    languages = Counter(e.language or "unlabelled" for e in examples)
    info = {
        "trained_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "examples": len(examples),
        "per_department": dict(sorted(counts.items())),
        "per_language": dict(sorted(languages.items())),
    }
    return fit_linear(name, features, labels, spec=spec, kind="svm", regularization=1.0, info=info)


def _refuse_packaged(output: Path) -> None:
    packaged = packaged_model_path("department").parent.resolve()
    if output.resolve().parent == packaged:
        raise InvalidInput(f"{output}: refusing to write into the packaged models' folder")


def train(path: Path, output: Path, settings: Settings) -> str:
    """Train on *path*, write the model to *output*; returns a one-line summary."""
    _refuse_packaged(output)
    examples = read_examples(path)
    unknown = sorted({e.department or "" for e in examples} - set(settings.router.departments))
    name = f"{output.stem}-{datetime.now(UTC):%Y.%m.%d}"
    started = time.perf_counter()
    model = train_model(examples, name=name)
    model.save(output)
    note = f"; not configured as departments: {', '.join(map(str, unknown))}" if unknown else ""
    return (
        f"trained {name} on {len(examples)} examples, {len(model.classes)} departments, "
        f"in {time.perf_counter() - started:.1f}s -> {output}{note}"
    )


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _per_class(
    truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]
) -> dict[str, dict[str, Any]]:
    scores: dict[str, dict[str, Any]] = {}
    for label in classes:
        true_positive = sum(1 for t, p in zip(truth, predicted, strict=True) if t == label and p == label)
        predicted_count = sum(1 for p in predicted if p == label)
        support = sum(1 for t in truth if t == label)
        precision = true_positive / predicted_count if predicted_count else 0.0
        recall = true_positive / support if support else 0.0
        scores[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(_f1(precision, recall), 4),
            "support": support,
        }
    return scores


def _summary(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    present = sorted(set(truth))
    per_class = _per_class(truth, predicted, present)
    accuracy = sum(1 for t, p in zip(truth, predicted, strict=True) if t == p) / len(truth)
    macro = sum(s["f1"] for s in per_class.values()) / len(per_class)
    return {"n": len(truth), "accuracy": round(accuracy, 4), "macro_f1": round(macro, 4)}


def evaluate(path: Path, model_path: Path | None, settings: Settings) -> dict[str, Any]:
    """Score the model (default: the packaged one) on labelled examples; see the contract's ``eval``."""
    examples = read_examples(path)
    router = settings.router
    if model_path is not None:
        router = router.model_copy(update={"model": str(model_path)})
    # A model trained on other labels (a public data set) is scored on its own classes.
    model = LinearModel.load(Path(router.model) if router.model else packaged_model_path("department"))
    router = router.model_copy(update={"departments": tuple(model.classes), "rules": ()})
    pipeline = build_decider(router, lambda: datetime.now(UTC))
    now = datetime.now(UTC)
    messages = [_message(e.text, e.subject, now) for e in examples]
    pipeline.decide_batch(
        messages[: SMALL_BATCH + 1], [ConversationContext()] * min(len(messages), SMALL_BATCH + 1)
    )
    started = time.perf_counter()  # after one batch: lazy imports and model loads are not the rate
    routings: list[Routing] = []
    for start in range(0, len(messages), BATCH):
        batch = messages[start : start + BATCH]
        routings.extend(d.routing for d in pipeline.decide_batch(batch, [ConversationContext()] * len(batch)))
    elapsed = time.perf_counter() - started
    truth = [e.department or "" for e in examples]
    predicted = [r.department for r in routings]
    report = _summary(truth, predicted)
    per_language: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[int]] = {}
    for index, (example, routing) in enumerate(zip(examples, routings, strict=True)):
        groups.setdefault(example.language or routing.language, []).append(index)
    for language, indexes in sorted(groups.items()):
        per_language[language] = _summary([truth[i] for i in indexes], [predicted[i] for i in indexes])
    report["per_language"] = per_language
    report["per_department"] = _per_class(truth, predicted, sorted(set(truth)))
    report["triage_rate"] = round(
        sum(1 for r in routings if r.confidence < settings.router.min_confidence) / len(routings), 4
    )
    labelled = [
        (e.escalate, r.escalate) for e, r in zip(examples, routings, strict=True) if e.escalate is not None
    ]
    if labelled:
        hits = sum(1 for t, p in labelled if t and p)
        flagged = sum(1 for _, p in labelled if p)
        actual = sum(1 for t, _ in labelled if t)
        precision = hits / flagged if flagged else 0.0
        recall = hits / actual if actual else 0.0
        report["escalate"] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(_f1(precision, recall), 4),
        }
    report["messages_per_second"] = round(len(messages) / elapsed, 1) if elapsed > 0 else None
    report["model"] = model.name
    return report


def format_report(report: dict[str, Any], *, as_json: bool) -> str:
    """One compact JSON line, or a table for people."""
    if as_json:
        return json.dumps(report, ensure_ascii=False, separators=(",", ":"))
    lines = [
        f"model {report['model']}: n={report['n']} accuracy={report['accuracy']:.4f} "
        f"macro_f1={report['macro_f1']:.4f} triage_rate={report['triage_rate']:.4f} "
        f"messages/s={report['messages_per_second']}",
        "",
        f"{'language':<12}{'n':>7}{'accuracy':>10}{'macro_f1':>10}",
    ]
    for language, scores in report["per_language"].items():
        lines.append(f"{language:<12}{scores['n']:>7}{scores['accuracy']:>10.4f}{scores['macro_f1']:>10.4f}")
    lines += ["", f"{'department':<24}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for department, scores in report["per_department"].items():
        lines.append(
            f"{department[:23]:<24}{scores['precision']:>10.4f}{scores['recall']:>10.4f}"
            f"{scores['f1']:>10.4f}{scores['support']:>9}"
        )
    if "escalate" in report:
        scores = report["escalate"]
        lines += [
            "",
            f"escalate: precision={scores['precision']:.4f} recall={scores['recall']:.4f} f1={scores['f1']:.4f}",
        ]
    return "\n".join(lines)
