"""The routing decision: a list of small pure steps over a batch of inbound messages.

language → admin rules → department model → conversation affinity → auto-replies →
escalation and priority. Each step adds its reason to ``routing.reasons``, so every decision can
be explained from the record alone. Nothing here touches Kafka: the routing service hands in a
batch with each message's conversation context and publishes the decisions.

Batches are the unit of work because the featurizer and the linear models are vectorized:
featurizing a thousand messages at once costs a fraction of a thousand single calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from models import InboundMessage, Routing
from models.config import RouterConfig
from models.messages import Priority, record_time
from router.escalation import CueMatcher, judge
from router.features import SMALL_BATCH, FeatureSpec, Featurizer, model_input, normalize_all
from router.language import SURE, LanguageGuess, LanguageIdentifier, general_identifier
from router.linear import LinearModel, ModelFileError, softmax

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

from router.rules import PRIORITY_ORDER, RuleBook, RuleSet, RuleSource, StaticRules

__all__ = [
    "ConversationContext",
    "Decider",
    "Decision",
    "Pipeline",
    "build_decider",
    "packaged_model_path",
]

AUTO_SUBMITTED = frozenset({"auto-reply", "bounce", "list"})
SHORT_MESSAGE_WORDS = 4
UNRESOLVED_HORIZON = timedelta(days=14)
"""How long after the last routed message a return to an unresolved conversation still escalates."""
CONFIDENCE_DIGITS = 4
"""Decimals of a routing's confidence: enough to rank, and short in the JSON."""


# The per-message records below are NamedTuples: immutable like frozen dataclasses, and about
# four times cheaper to build, which counts at thousands of messages a second.
class ConversationContext(NamedTuple):
    """What the router knows of the message's conversation before this message."""

    department: str | None = None
    messages_seen: int = 0
    last_routed_at: datetime | None = None
    unresolved: bool = False


class Decision(NamedTuple):
    """The routing of one message; ``drop`` means publish it nowhere (a configured auto-reply drop)."""

    routing: Routing
    drop: bool = False


class Decider(Protocol):
    """Decides a batch; one decision per message, in order. May raise for a message it cannot read."""

    def decide_batch(
        self, messages: Sequence[InboundMessage], context: Sequence[ConversationContext]
    ) -> list[Decision]: ...


def packaged_model_path(kind: str) -> Path:
    """The path of a model shipped inside the package (``department``, ``language``, ``escalation``)."""
    return Path(str(resources.files("router").joinpath("data", f"{kind}.npz")))


class _Candidate(NamedTuple):
    department: str
    confidence: float


def _scoring_columns(model: LinearModel) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The weight columns and biases the pipeline multiplies for *model*.

    A two-class model needs one column, the second class's score minus the first's: softmax
    depends only on that difference. For the packaged models it makes the stacked matrix 16
    columns instead of 17, and the sparse product, which costs in proportion to the columns, a
    quarter faster.
    """
    if len(model.classes) != 2:
        return model.weights, model.bias
    margin = (model.weights[:, 1] - model.weights[:, 0])[:, None]
    return margin.astype(np.float32), (model.bias[1:] - model.bias[:1]).astype(np.float32)


class Pipeline:
    """The default :class:`Decider`: the steps of the module docstring, vectorized per batch."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        department_model: LinearModel,
        language: LanguageIdentifier,
        escalation_model: LinearModel,
        rules: RuleBook,
        clock: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.department_model = department_model
        self.language = language
        self.escalation_model = escalation_model
        self.rules = rules
        self._clock = clock
        self._cues = CueMatcher()
        configured = [c for c in department_model.classes if c in config.departments]
        if not configured:
            raise ModelFileError(
                f"model {department_model.name!r} knows none of the configured departments "
                f"({', '.join(config.departments)})"
            )
        # A model may know departments this desk does not have: only configured ones may win.
        self._allowed = np.array([c in config.departments for c in department_model.classes])
        self._fallback = "general" if "general" in config.departments else configured[0]
        self._models = (language.model, department_model, escalation_model)
        self._featurizers: dict[FeatureSpec, Featurizer] = {}
        stacks: dict[tuple[FeatureSpec, bytes | None], list[int]] = {}
        for index, model in enumerate(self._models):
            frequencies = None if model.idf is None else model.idf.tobytes()
            stacks.setdefault((model.spec, frequencies), []).append(index)
            self._featurizers.setdefault(model.spec, Featurizer(model.spec))
        self._stacks = [
            (
                spec,
                indexes,
                self._models[indexes[0]].idf,
                np.ascontiguousarray(np.hstack([_scoring_columns(self._models[i])[0] for i in indexes])),
                np.concatenate([_scoring_columns(self._models[i])[1] for i in indexes]),
            )
            for (spec, _), indexes in stacks.items()
        ]

    def _probabilities(self, texts: Sequence[str]) -> list[npt.NDArray[np.float32]]:
        """Each model's class probabilities for the normalized *texts*, in the order of ``self._models``.

        Models trained on the same examples (the packaged three) share a feature spec and inverse
        document frequencies: their weights are stacked side by side, so the batch is featurized
        and scored once for all of them, in one pass in C where it was built (see
        :meth:`Featurizer.scores`). Stacks of one spec but different frequencies each count the
        batch again.
        """
        outputs: list[npt.NDArray[np.float32]] = [np.empty(0, dtype=np.float32)] * len(self._models)
        for spec, indexes, idf, weights, bias in self._stacks:
            scores = self._featurizers[spec].scores(texts, idf, weights) + bias
            column = 0
            for index in indexes:
                model = self._models[index]
                if len(model.classes) == 2:  # one column: the second class's margin over the first
                    margin = scores[:, column : column + 1]
                    pair: npt.NDArray[np.float32] = np.hstack([np.zeros_like(margin), margin])
                    outputs[index] = softmax(pair / model.temperature)
                    column += 1
                else:
                    width = len(model.classes)
                    outputs[index] = softmax(scores[:, column : column + width] / model.temperature)
                    column += width
        return outputs

    def warm_up(self) -> None:
        """Load what the first batch would otherwise load lazily (py3langid's model, the normal
        form tables; scipy too where featurizing runs in numpy).

        A long-running router calls it before joining its group, so the first batch is not a
        second late; one-off commands (``classify``) skip it and start fast.
        """
        self.language.warm_up()
        self._probabilities(normalize_all(["warm up", "வணக்கம்"] * (SMALL_BATCH // 2 + 1)))

    def decide_batch(
        self, messages: Sequence[InboundMessage], context: Sequence[ConversationContext]
    ) -> list[Decision]:
        if len(messages) != len(context):
            raise ValueError("one conversation context per message is required")
        if not messages:
            return []
        texts = normalize_all([model_input(m.subject or "", m.text) for m in messages])
        languages_p, departments, angry = self._probabilities(texts)
        languages = self.language.identify_with(texts, languages_p)
        choices = self._model_choices(departments)
        cues = self._cues.kinds_of_batch(texts)
        angry_column = angry[:, self.escalation_model.classes.index("true")].tolist()
        rules = self.rules.current()
        now = record_time(self._clock())
        return [
            self._decide(
                message, ctx, text, language, choices[i], departments[i], angry_column[i], cues[i], rules, now
            )
            for i, (message, ctx, text, language) in enumerate(
                zip(messages, context, texts, languages, strict=True)
            )
        ]

    def _decide(
        self,
        message: InboundMessage,
        context: ConversationContext,
        text: str,
        language: LanguageGuess,
        model_choice: _Candidate,
        probabilities: npt.NDArray[np.float32],
        angry: float,
        cues: frozenset[str],
        rules: RuleSet,
        now: datetime,
    ) -> Decision:
        language = self._with_hint(message, text, language)
        reasons = [f"language:{language.language}({language.method})"]
        outcome = rules.apply(message, language.language)
        reasons.extend(outcome.reasons)
        auto = message.metadata.get("auto_submitted")
        if outcome.department is not None:
            choice = _Candidate(outcome.department, 1.0)
        elif isinstance(auto, str) and auto in AUTO_SUBMITTED:
            reasons.append(f"auto-submitted:{auto}")
            choice = _Candidate(self._fallback, 1.0)
            routing = self._routing(choice, language, False, "low", reasons, now)
            return Decision(routing, drop=self.config.auto_replies == "drop" and auto != "list")
        else:
            reasons.append(f"model:top={model_choice.department}:{model_choice.confidence:.2f}")
            choice = self._with_affinity(model_choice, probabilities, context, reasons)
        repeat = (
            context.unresolved
            and context.messages_seen > 0
            and context.last_routed_at is not None
            and now - context.last_routed_at <= UNRESOLVED_HORIZON
        )
        verdict = judge(
            cues=cues,
            model_probability=angry,
            repeat_unresolved=repeat,
            department=choice.department,
        )
        reasons.extend(verdict.reasons)
        escalate = verdict.escalate if outcome.escalate is None else outcome.escalate
        priority = verdict.priority
        if outcome.priority is not None and PRIORITY_ORDER.index(outcome.priority) > PRIORITY_ORDER.index(
            priority
        ):
            priority = outcome.priority
        return Decision(self._routing(choice, language, escalate, priority, reasons, now))

    @staticmethod
    def _with_hint(message: InboundMessage, text: str, guess: LanguageGuess) -> LanguageGuess:
        """A platform's language hint (e.g. Telegram's ``language_code``) settles an unsure guess.

        Unsure means: not read off the script, and either not confident or from a message of a
        few words, where n-grams say little.
        """
        hint = message.metadata.get("language_hint")
        if not isinstance(hint, str) or not hint or guess.method == "script":
            return guess
        if guess.confidence < SURE or len(text.split()) < SHORT_MESSAGE_WORDS:
            return LanguageGuess(hint.split("-")[0].lower(), guess.confidence, "hint")
        return guess

    def _model_choices(self, probabilities: npt.NDArray[np.float32]) -> list[_Candidate]:
        """The best configured department of each message, its probability renormalized over them."""
        allowed = np.where(self._allowed, probabilities, -1.0)
        best = allowed.argmax(axis=1)
        totals = probabilities[:, self._allowed].sum(axis=1)
        confidence = probabilities[np.arange(len(best)), best] / np.where(totals > 0, totals, 1.0)
        # Clamped and rounded here for the batch: Python's round() costs ~1 µs a call.
        # float64 first: a float32 rounded to 4 decimals is not the double 0.8734 but 0.87340003...
        confidence = np.clip(confidence.astype(np.float64), 0.0, 1.0).round(CONFIDENCE_DIGITS)
        classes = self.department_model.classes
        return [_Candidate(classes[b], c) for b, c in zip(best.tolist(), confidence.tolist(), strict=True)]

    def _with_affinity(
        self,
        choice: _Candidate,
        probabilities: npt.NDArray[np.float32],
        context: ConversationContext,
        reasons: list[str],
    ) -> _Candidate:
        """Keep a follow-up with its conversation's department unless the model is sure it belongs elsewhere."""
        previous = context.department
        if previous is None or previous == choice.department or previous not in self.config.departments:
            return choice
        # "general" means "nothing more specific": it never pulls a conversation away.
        if (
            choice.department != self._fallback
            and choice.confidence >= self.config.affinity_switch_confidence
        ):
            reasons.append(f"affinity:left={previous}")
            return choice
        reasons.append(f"affinity:{previous}")
        classes = self.department_model.classes
        own = float(probabilities[classes.index(previous)]) if previous in classes else 0.0
        return _Candidate(previous, round(min(max(own, self.config.min_confidence), 1.0), CONFIDENCE_DIGITS))

    def _routing(
        self,
        choice: _Candidate,
        language: LanguageGuess,
        escalate: bool,
        priority: Priority,
        reasons: list[str],
        now: datetime,
    ) -> Routing:
        # Every field is built here from checked parts (``now`` went through record_time, the
        # confidence is in [0, 1] and rounded where it was chosen).
        return Routing.trusted(
            department=choice.department,
            confidence=choice.confidence,
            language=language.language,
            escalate=escalate,
            priority=priority,
            reasons=tuple(reasons),
            model=self.department_model.name,
            routed_at=now,
        )


def load_department_model(config: RouterConfig) -> LinearModel:
    """The configured department model, or the packaged default when ``router.model`` is null."""
    return LinearModel.load(Path(config.model) if config.model else packaged_model_path("department"))


def build_decider(
    config: RouterConfig,
    clock: Callable[[], datetime],
    *,
    rules: RuleSource | None = None,
    logger: FilteringBoundLogger | None = None,
) -> Pipeline:
    """The default pipeline for *config*; loads the models (raises :class:`ModelFileError`)."""
    return Pipeline(
        config,
        department_model=load_department_model(config),
        language=LanguageIdentifier(LinearModel.load(packaged_model_path("language")), general_identifier()),
        escalation_model=LinearModel.load(packaged_model_path("escalation")),
        rules=RuleBook(rules if rules is not None else StaticRules(config.rules), logger),
        clock=clock,
    )
