"""Labelled examples for ``switchboard train`` and ``eval``: JSON Lines, read strictly.

Each line is an object with ``text`` (required), ``subject`` (optional, "" = none),
``department`` (the label), optional ``language`` and ``escalate``; unknown fields are ignored.
A bad line is reported with its number, so a user can fix the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from models.errors import InvalidInput
from models.ids import stable_digest
from router.features import model_input

__all__ = ["Example", "ExampleError", "held_out", "read_examples", "write_examples"]

MAX_EXAMPLES = 2_000_000


class ExampleError(InvalidInput):
    """A labelled-examples file that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    subject: str = ""
    department: str | None = None
    language: str | None = None
    escalate: bool | None = None
    form: str | None = None

    @property
    def model_input(self) -> str:
        return model_input(self.subject, self.text)


def _parse(line: str, where: str) -> Example:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise ExampleError(f"{where}: not valid JSON ({error.msg})") from error
    if not isinstance(data, dict):
        raise ExampleError(f"{where}: expected a JSON object")
    text, subject = data.get("text"), data.get("subject") or ""
    if not isinstance(text, str) or not text.strip():
        raise ExampleError(f"{where}: 'text' must be a non-empty string")
    if not isinstance(subject, str):
        raise ExampleError(f"{where}: 'subject' must be a string")
    fields: dict[str, str | None] = {}
    for name in ("department", "language", "form"):
        value = data.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ExampleError(f"{where}: '{name}' must be a non-empty string")
        fields[name] = value.strip() if isinstance(value, str) else None
    escalate = data.get("escalate")
    if escalate is not None and not isinstance(escalate, bool):
        raise ExampleError(f"{where}: 'escalate' must be true or false")
    return Example(text, subject, fields["department"], fields["language"], escalate, fields["form"])


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            yield from enumerate(handle, start=1)
    except FileNotFoundError as error:
        raise ExampleError(f"{path}: no such file") from error
    except UnicodeDecodeError as error:
        raise ExampleError(f"{path}: not UTF-8 text") from error
    except OSError as error:
        raise ExampleError(f"{path}: {error.strerror}") from error


def read_examples(path: Path, *, labelled: bool = True) -> list[Example]:
    """Every example in *path*; with *labelled*, each must carry a ``department``."""
    examples: list[Example] = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        example = _parse(line, f"{path}:{number}")
        if labelled and example.department is None:
            raise ExampleError(f"{path}:{number}: 'department' is required")
        examples.append(example)
        if len(examples) > MAX_EXAMPLES:
            raise ExampleError(f"{path}: more than {MAX_EXAMPLES} examples")
    if not examples:
        raise ExampleError(f"{path}: no examples")
    return examples


def held_out(example: Example) -> bool:
    """Whether an example belongs to the corpus's test split: a fixed fifth, chosen by content."""
    return int(stable_digest([example.language or "", example.subject, example.text], 8), 16) % 5 == 0


def write_examples(path: Path, examples: Iterable[Example]) -> int:
    """Write examples as JSON Lines (fields in the corpus order); returns how many."""
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            record = {
                "text": example.text,
                "subject": example.subject,
                "department": example.department,
                "language": example.language,
                "escalate": example.escalate,
                "form": example.form,
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def labels(examples: Sequence[Example]) -> list[str]:
    return [e.department or "" for e in examples]
