"""Escalation and priority: which customers a supervisor should see, and how soon.

Two signals, both explainable in ``routing.reasons``:

* **Cues**: phrases that name why a message is serious — a demand for a supervisor, a threat to
  leave, a legal or regulator threat, an accusation of fraud, anger, distress — in each
  first-class language, in native script and romanized. They are matched on the normalized text
  (see :func:`router.features.normalize`), so case, accents of punctuation and digits do not matter.
* **The escalation model**: a two-class linear model over the same features, trained on the
  corpus's ``escalate`` labels; it catches anger the cue lists do not spell out.

A conversation that comes back while the last routed message was still unresolved (escalated
or sent to triage) is escalated too: that customer is writing again about the same problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from models.messages import Priority
from router.automaton import TEXT_SHIFT, phrase_finder

__all__ = ["CUES", "CueMatcher", "Verdict", "judge"]

# Cue kinds → phrases. A trailing "*" makes a phrase a prefix (it may run into a longer word).
CUES: Mapping[str, tuple[str, ...]] = {
    "supervisor": (
        "supervisor",
        "manager",
        "your boss",
        "someone senior",
        "senior person",
        "escalate*",
        "higher authority",
        "superior",
        "jefe",
        "gerente",
        "encargado",
        "responsable",
        "manager se baat",
        "senior se baat",
        "मैनेजर",
        "सुपरवाइजर",
        "वरिष्ठ अधिकारी",
        "सीनियर",
        "ম্যানেজার",
        "সুপারভাইজার",
        "উর্ধ্বতন",
        "বড় কর্মকর্তা",
        "boro kormokorta",
        "மேலாளர்",
        "மேனேஜர்",
        "உயர் அதிகாரி",
        "மேலதிகாரி",
        "melathikari",
        "superbisor",
        "amo ninyo",
        "nakatataas",
    ),
    "leaving": (
        "cancel my account",
        "close my account",
        "never order again",
        "never buy*",
        "never shop*",
        "last time i",
        "switching to",
        "taking my business",
        "lost a customer",
        "done with you*",
        "nunca más",
        "nunca mas",
        "me cambio a",
        "cancelar mi cuenta",
        "última vez",
        "ultima vez",
        "kabhi nahi",
        "dobara nahi",
        "कभी नहीं",
        "दोबारा नहीं",
        "আর কখনো",
        "ar kokhono",
        "ar kinbo na",
        "இனி ஒருபோதும்",
        "ini oru podhum",
        "ini vaanga maaten",
        "hindi na ako bibili",
        "hindi na ulit",
        "lilipat na ako",
    ),
    "legal": (
        "lawyer",
        "attorney",
        "legal action",
        "sue you",
        "court",
        "consumer forum",
        "consumer court",
        "ombudsman",
        "chargeback",
        "report you",
        "regulator",
        "trading standards",
        "abogado",
        "demanda*",
        "denuncia*",
        "profeco",
        "tribunal",
        "वकील",
        "कोर्ट",
        "उपभोक्ता फोरम",
        "consumer forum",
        "উকিল",
        "আদালত",
        "ভোক্তা অধিকার",
        "vokta odhikar",
        "நீதிமன்ற*",
        "வழக்கு",
        "நுகர்வோர் நீதிமன்ற*",
        "abogado",
        "demanda",
        "ireklamo sa dti",
        "dti",
    ),
    "fraud": (
        "fraud*",
        "scam*",
        "cheat*",
        "stole",
        "stolen my money",
        "estafa*",
        "robo",
        "fraude",
        "धोखा*",
        "फ्रॉड",
        "dhokha*",
        "प्रतारणा",
        "প্রতারণা",
        "প্রতারক",
        "protarona",
        "ஏமாற்*",
        "மோசடி",
        "emaat*",
        "modasadi",
        "manloloko",
        "scammer",
        "niloko",
    ),
    "anger": (
        "worst",
        "ridiculous",
        "pathetic",
        "disgusting",
        "unacceptable",
        "outrageous",
        "furious",
        "angry",
        "fed up",
        "sick of",
        "useless",
        "incompetent",
        "shameful",
        "terrible service",
        "pésimo",
        "pesimo",
        "vergüenza",
        "verguenza",
        "harto",
        "inaceptable",
        "indignante",
        "bakwas",
        "bekar",
        "ghatiya",
        "बकवास",
        "घटिया",
        "बेकार",
        "शर्म",
        "বাজে",
        "জঘন্য",
        "ফালতু",
        "faltu",
        "jaghanya",
        "மோசம்",
        "கேவலம்",
        "கோபம்",
        "mosamaana",
        "kevalam",
        "nakakainis",
        "nakakagalit",
        "walang kwenta",
        "bwisit",
        "grabe kayo",
    ),
    "distress": (
        "urgent*",
        "emergency",
        "desperate",
        "please help",
        "medical",
        "hospital",
        "urgente",
        "emergencia",
        "ayuda por favor",
        "जल्दी",
        "तुरंत",
        "इमरजेंसी",
        "জরুরি",
        "jaruri",
        "অবিলম্বে",
        "அவசரம்",
        "avasaram",
        "madalian",
        "emergency po",
    ),
}

# Kinds that escalate on their own, and those that also make the message urgent.
ESCALATING = frozenset({"supervisor", "leaving", "legal", "fraud"})
URGENT = frozenset({"legal", "fraud"})

MODEL_THRESHOLD = 0.5


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    word_end: bool = False  # a phrase ends here and must be followed by a space
    prefix_end: bool = False  # a prefix phrase ("…*") ends here: anything may follow


def _pattern(node: _Node) -> str:
    """The regular expression of a trie node: its children first, so the longest cue wins."""
    branches = [re.escape(char) + _pattern(child) for char, child in sorted(node.children.items())]
    if node.prefix_end:
        branches.append("")
    elif node.word_end:
        branches.append("(?= )")
    return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"


class CueMatcher:
    """Finds cue kinds in normalized text with one regular-expression pass per message that
    holds any cue (see :meth:`kinds_of_batch`).

    The phrases are compiled as a trie (``(?:a(?:ngry|…)|b…)``): at each word start the engine
    follows the text's characters down one path instead of trying every phrase in turn, which was
    most of the time spent on cues in a long mail.
    """

    def __init__(self, cues: Mapping[str, Sequence[str]] = CUES, *, native: bool | None = None) -> None:
        """*native*: rule out texts without cues by the C walk (True), never (False), or where
        ``router._ngrams`` was built; a walk in Python would be slower than the pattern."""
        self._kind_of: dict[str, str] = {}
        root = _Node()
        for kind, phrases in cues.items():
            for phrase in phrases:
                key = phrase.rstrip("*").casefold()
                self._kind_of.setdefault(key, kind)
                node = root
                for char in key:
                    node = node.children.setdefault(char, _Node())
                if phrase.endswith("*"):
                    node.prefix_end = True
                else:
                    node.word_end = True
        # Each match starts at a space (consumed) and ends before one (not consumed), so the
        # engine only tries the cues at word starts and adjacent cues are all found.
        self._pattern = re.compile(" (" + _pattern(root) + ")")
        # The pattern tries every first character of a cue at each word, ~4 µs a chat message
        # though most hold no cue. A byte automaton of the same phrases (spaces included) finds
        # in one C pass which texts hold one at all; only those meet the pattern.
        spelled = [
            f" {phrase.rstrip('*').casefold()}{'' if phrase.endswith('*') else ' '}".encode()
            for kind_phrases in cues.values()
            for phrase in kind_phrases
        ]
        finder = phrase_finder(spelled, native=native)
        self._finder = finder if finder.native else None

    def kinds_of_batch(self, normalized: Sequence[str]) -> list[frozenset[str]]:
        """:meth:`kinds` of each text, the texts without any cue ruled out together."""
        if self._finder is None:
            return [self.kinds(text) for text in normalized]
        framed = [f" {text} ".encode("utf-8", "surrogatepass") for text in normalized]
        holding = set((self._finder.walk(framed) >> TEXT_SHIFT).tolist())
        return [self.kinds(text) if i in holding else _NO_CUES for i, text in enumerate(normalized)]

    def kinds(self, normalized: str) -> frozenset[str]:
        """The cue kinds present in *normalized* text (already lower-cased, single-spaced)."""
        found = self._pattern.findall(f" {normalized} ")
        if not found:  # most messages: no set to build
            return _NO_CUES
        return frozenset(self._kind_of[m] for m in found if m in self._kind_of)


_NO_CUES: frozenset[str] = frozenset()


class Verdict(NamedTuple):  # one per message: cheaper to build than a frozen dataclass
    escalate: bool
    priority: Priority
    reasons: tuple[str, ...]


_CALM = Verdict(False, "normal", ())
_CALM_COMPLAINT = Verdict(False, "high", ())


def judge(
    *,
    cues: frozenset[str],
    model_probability: float,
    repeat_unresolved: bool,
    department: str,
) -> Verdict:
    """Escalation and priority from the message's signals, with one reason per signal used.

    urgent: a legal or fraud threat, or an escalated customer writing again about an unresolved
    issue; high: any other escalation, or a complaint; normal otherwise. (Auto-replies get low
    before they reach this step.)
    """
    if not cues and not repeat_unresolved and model_probability < MODEL_THRESHOLD:
        return _CALM_COMPLAINT if department == "complaints" else _CALM  # most messages
    reasons = [f"cue:{kind}" for kind in sorted(cues)]
    escalating = bool(cues & ESCALATING)
    if model_probability >= MODEL_THRESHOLD:
        reasons.append(f"escalation-model:{model_probability:.2f}")
    if repeat_unresolved:
        reasons.append("conversation:repeat-unresolved")
    escalate = escalating or model_probability >= MODEL_THRESHOLD or repeat_unresolved
    if cues & URGENT or (repeat_unresolved and (escalating or model_probability >= MODEL_THRESHOLD)):
        priority: Priority = "urgent"
    elif escalate or department == "complaints":
        priority = "high"
    else:
        priority = "normal"
    return Verdict(escalate, priority, tuple(reasons) if escalate or priority != "normal" else ())
