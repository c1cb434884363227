"""The configuration reference (``docs/configuration.md``), generated from the config models.

Every key an admin can write is declared once, in a pydantic model: the process-wide sections
in :mod:`models.config`, each channel type's model beside its connector. This module turns
those models into Markdown, so the reference cannot drift from what the loader accepts:

    python -m switchboard.docgen > docs/configuration.md   # regenerate
    python -m switchboard.docgen --check                   # exit 1 if the file is stale

Guarantees of :func:`render_reference`:

* **Complete.** One section per top-level section of :class:`models.config.Settings` and one per
  channel type of the registry it is given; every nested model (``router.rules[].match``, an
  IMAP ``oauth2`` block) gets a table of its own.
* **Deterministic.** The same models give byte-identical output: sections follow the settings'
  field order and the registry's type order, keys their declaration order.
* **No secret is ever printed.** A key whose type holds a ``SecretStr`` shows ``required``,
  ``null`` or an empty default as such; any other default is shown as ``(hidden)``.
* **Descriptions** come from ``Field(description=…)``, else from the attribute's docstring (read
  from the source, whether or not pydantic's ``use_attribute_docstrings`` is on), else empty.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import enum
import inspect
import json
import re
import sys
import textwrap
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, SecretBytes, SecretStr
from pydantic.fields import FieldInfo

from connectors.registry import BUILTIN_TYPES, ChannelType, Registry
from models.config import ChannelConfig, HostPort, Settings

__all__ = ["DEFAULT_PATH", "HIDDEN", "main", "render_reference"]

DEFAULT_PATH = Path("docs/configuration.md")
HIDDEN = "(hidden)"
"""What the default column shows for a secret key whose default is not empty."""

_REGENERATE = "python -m switchboard.docgen > docs/configuration.md"
_MAX_HEADING = 6
_SCALAR_NAMES: Mapping[type, str] = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    bytes: "bytes",
    Path: "path",
    dt.date: "date",
    dt.datetime: "datetime",
    dt.timedelta: "duration",
    HostPort: "host:port",
    SecretStr: "secret",
    SecretBytes: "secret",
}
_LIST_ORIGINS = (tuple, list, set, frozenset, typing.Sequence, typing.AbstractSet)
_MAP_ORIGINS = (dict, typing.Mapping)
_PLAIN = re.compile(r"[A-Za-z0-9_./@+-][A-Za-z0-9_./:@+ -]*")
_YAML_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "null", "none", "~"})


# ------------------------------------------------------------------------------- types


def _args(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _unwrap(annotation: Any) -> Any:
    """*annotation* without ``Annotated[...]`` layers."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = _args(annotation)[0]
    return annotation


def _literal_text(value: object) -> str:
    return value.value if isinstance(value, enum.Enum) else str(value)


def type_name(annotation: Any) -> str:
    """A readable name for a config type: ``int``, ``list[str]``, ``host:port``, ``secret | null``."""
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if _is_union(annotation):
        members = [a for a in _args(annotation) if a is not type(None)]
        names = [type_name(a) for a in members]
        if len(members) < len(_args(annotation)):
            names.append("null")
        return " | ".join(dict.fromkeys(names))
    if origin is typing.Literal:
        return " | ".join(_literal_text(v) for v in _args(annotation))
    if origin in _LIST_ORIGINS:
        items = [a for a in _args(annotation) if a is not Ellipsis]
        if origin is tuple and len(items) > 1 and Ellipsis not in _args(annotation):
            return "[" + ", ".join(type_name(a) for a in items) + "]"
        return f"list[{type_name(items[0]) if items else 'any'}]"
    if origin in _MAP_ORIGINS:
        key, value = _args(annotation) or (Any, Any)
        return f"map[{type_name(key)}, {type_name(value)}]"
    if annotation is Any:
        return "any"
    if _is_model(annotation):
        return "object"
    if annotation in _SCALAR_NAMES:
        return _SCALAR_NAMES[annotation]
    if isinstance(annotation, type):
        for known, name in _SCALAR_NAMES.items():
            if issubclass(annotation, known) and not (known is int and issubclass(annotation, bool)):
                return name
        if issubclass(annotation, enum.Enum):
            return " | ".join(_literal_text(member) for member in annotation)
        return str(annotation.__name__)
    return str(annotation)


def _holds_secret(annotation: Any) -> bool:
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, SecretStr | SecretBytes):
        return True
    return any(_holds_secret(a) for a in _args(annotation) if a is not Ellipsis)


def _nested_models(annotation: Any, suffix: str = "") -> Iterator[tuple[type[BaseModel], str]]:
    """The models inside *annotation*, each with the path suffix that reaches its keys."""
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if _is_model(annotation):
        yield annotation, suffix
    elif _is_union(annotation):
        for member in _args(annotation):
            yield from _nested_models(member, suffix)
    elif origin in _LIST_ORIGINS:
        for item in _args(annotation):
            if item is not Ellipsis:
                yield from _nested_models(item, suffix + "[]")
    elif origin in _MAP_ORIGINS and len(_args(annotation)) == 2:
        yield from _nested_models(_args(annotation)[1], suffix + ".<key>")


# ------------------------------------------------------------------------------- constraints


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _range(low: tuple[str, object] | None, high: tuple[str, object] | None, unit: str = "") -> str | None:
    if low is None and high is None:
        return None
    if low is not None and high is not None and low[0] == "≥" and high[0] == "≤":
        return f"{unit}{_number(low[1])}–{_number(high[1])}"
    parts = [f"{bound[0]} {_number(bound[1])}" for bound in (low, high) if bound is not None]
    return unit + ", ".join(parts)


def constraints(info: FieldInfo) -> str:
    """The field's declared bounds, e.g. ``1–10000``, ``> 0, ≤ 3600``, ``length ≥ 1``, ``pattern …``."""
    low: tuple[str, object] | None = None
    high: tuple[str, object] | None = None
    shortest: object = None
    longest: object = None
    notes: list[str] = []
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            low = ("≥", item.ge)
        elif isinstance(item, annotated_types.Gt):
            low = (">", item.gt)
        elif isinstance(item, annotated_types.Le):
            high = ("≤", item.le)
        elif isinstance(item, annotated_types.Lt):
            high = ("<", item.lt)
        elif isinstance(item, annotated_types.MinLen):
            shortest = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            longest = item.max_length
        elif isinstance(item, annotated_types.MultipleOf):
            notes.append(f"multiple of {_number(item.multiple_of)}")
        elif getattr(item, "pattern", None) is not None:
            notes.append(f"pattern `{item.pattern}`")
    length = _range(
        ("≥", shortest) if shortest is not None else None,
        ("≤", longest) if longest is not None else None,
        unit="length ",
    )
    found = [text for text in (_range(low, high), length) if text]
    return ", ".join(found + notes)


# ------------------------------------------------------------------------------- values


def _scalar(text: str) -> str:
    """*text* as YAML writes it: plain when unambiguous, else quoted."""
    if (
        _PLAIN.fullmatch(text)
        and ": " not in text
        and text.strip() == text
        and text.lower() not in _YAML_WORDS
    ):
        try:
            float(text)
        except ValueError:
            return text
    return json.dumps(text, ensure_ascii=False)


def yaml_value(value: object) -> str:
    """*value* in YAML flow style: ``null``, ``true``, ``[INBOX]``, ``{}``, ``127.0.0.1:2525``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, enum.Enum):
        return yaml_value(value.value)
    if isinstance(value, BaseModel):
        return yaml_value(value.model_dump(mode="json", exclude_defaults=True, by_alias=True))
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_scalar(str(k))}: {yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return "[" + ", ".join(yaml_value(v) for v in items) + "]"
    if isinstance(value, dt.date):
        return value.isoformat()
    return _scalar(str(value))


def _is_empty(value: object) -> bool:
    return value is None or (isinstance(value, Mapping | list | tuple | set | frozenset) and not value)


def default_text(info: FieldInfo, *, required: bool) -> str:
    """The default column: ``required``, the default in YAML, or :data:`HIDDEN` for a secret."""
    if required or info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if _holds_secret(info.annotation) and not _is_empty(value):
        return HIDDEN
    return yaml_value(value)


# ------------------------------------------------------------------------------- descriptions


def _attribute_docstrings(model: type[BaseModel]) -> dict[str, str]:
    """``{field: docstring}`` for the string literals right after a class's annotated attributes."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    found: dict[str, str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for statement, following in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                found[statement.target.id] = inspect.cleandoc(following.value.value)
    return found


def _markdown(text: str) -> str:
    """Docstring markup (reST roles, double backticks) as Markdown."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _one_line(text: str) -> str:
    return " ".join(_markdown(text).split())


@dataclass
class _Docstrings:
    """Attribute docstrings, read once per class during one rendering (no module-level cache)."""

    by_class: dict[type[BaseModel], dict[str, str]] = field(default_factory=dict)

    def description(self, model: type[BaseModel], name: str) -> str:
        """The closest description of *name*: a class that redeclares a key without describing it
        keeps the meaning its base class gave it."""
        for owner in model.__mro__:
            if not (isinstance(owner, type) and issubclass(owner, BaseModel)) or owner is BaseModel:
                continue
            declared = owner.model_fields.get(name)
            if declared is not None and declared.description:
                return _one_line(declared.description)
            if owner not in self.by_class:
                self.by_class[owner] = _attribute_docstrings(owner)
            if name in self.by_class[owner]:
                return _one_line(self.by_class[owner][name])
        return ""


def _class_doc(model: type[BaseModel]) -> str:
    """The model's own docstring (not an inherited one), as Markdown paragraphs."""
    doc = model.__dict__.get("__doc__")
    return _markdown(inspect.cleandoc(doc)) if isinstance(doc, str) and doc.strip() else ""


# ------------------------------------------------------------------------------- rendering


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


@dataclass
class _Writer:
    docs: _Docstrings
    lines: list[str] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.lines += [f"{'#' * min(level, _MAX_HEADING)} {text}", ""]

    def paragraph(self, text: str) -> None:
        if text:
            self.lines += [text, ""]

    def model(
        self,
        model: type[BaseModel],
        path: str,
        level: int,
        *,
        required_keys: frozenset[str] = frozenset(),
    ) -> None:
        """A table of *model*'s keys, then a table per nested model, one heading level down."""
        nested: list[tuple[type[BaseModel], str]] = []
        rows = ["| key | type | default | description |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            key = info.alias or name
            kind = _code(type_name(info.annotation))
            bounds = constraints(info)
            description = self.docs.description(model, name)
            found = [(m, f"{path}.{key}{suffix}") for m, suffix in _nested_models(info.annotation)]
            if found:
                see = ", ".join(f"`{where}`" for _, where in found)
                description = f"{description} (keys: {see})" if description else f"keys: {see}"
            nested.extend(found)
            cells = [
                _code(key),
                f"{kind} ({bounds})" if bounds else kind,
                _code(default_text(info, required=key in required_keys)),
                description,
            ]
            rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        self.lines += [*rows, ""]
        for inner, where in nested:
            self.heading(level + 1, f"`{where}`")
            self.paragraph(_class_doc(inner))
            self.model(inner, where, level + 1)


def _channel_field(settings: type[Settings]) -> str | None:
    """The settings key whose entries are channel configs (``channels``)."""
    for name, info in settings.model_fields.items():
        if any(issubclass(m, ChannelConfig) for m, _ in _nested_models(info.annotation)):
            return name
    return None


def _introduction(sections: Sequence[str], channel_types: Sequence[str]) -> list[str]:
    listed = " · ".join(f"[`{name}`](#{name})" for name in sections)
    return [
        f"<!-- Generated from the configuration models by `python -m switchboard.docgen`. "
        f"Do not edit: regenerate with `{_REGENERATE}`. -->",
        "",
        "# Configuration reference",
        "",
        "One YAML file: `--config FILE`, else `$SWITCHBOARD_CONFIG`, else `./switchboard.yaml` when "
        "present. It is validated in full at start-up; an error names the path of the bad key "
        "(e.g. `channels[1].listen`). `${VAR}` in any string is replaced by the environment "
        "variable (an unset variable is an error naming the key); use it for every secret. "
        "`SWITCHBOARD_KAFKA_BOOTSTRAP` and `SWITCHBOARD_TOPIC_PREFIX` override "
        "`kafka.bootstrap` and `kafka.topic_prefix`.",
        "",
        "Every table lists a model's keys in declaration order: its type (with declared bounds), "
        "its default (`required` when there is none; secrets are never shown) and its "
        "description. `list[str]` is a YAML sequence, `host:port` an address such as "
        "`0.0.0.0:25` or `[::1]:8080`, `secret` a string kept out of logs.",
        "",
        f"Sections: {listed}. Channel types: " + ", ".join(f"`{t}`" for t in channel_types) + ".",
        "",
    ]


def _channel_section(writer: _Writer, channel_type: ChannelType, path: str, level: int) -> None:
    writer.heading(level, f"`type: {channel_type.type}`")
    facts = [f"{channel_type.summary}.", f"Records carry `channel: {channel_type.channel}`."]
    if channel_type.http:
        facts.append(
            "Served by the process's HTTP server (`http.listen`) at `/channels/<name>` "
            "unless the channel sets its own `listen`."
        )
    writer.paragraph(" ".join(facts))
    writer.paragraph(_class_doc(channel_type.config_model))
    # Entries are first read as the shared ChannelConfig: what it requires, every type requires.
    shared = frozenset(n for n, info in ChannelConfig.model_fields.items() if info.is_required())
    writer.model(channel_type.config_model, path, level, required_keys=shared)


def render_reference(registry: Registry, settings: type[Settings] = Settings) -> str:
    """The Markdown configuration reference for *settings* and every type in *registry*.

    Raises what loading a channel type raises (``ImportError``): a reference that silently
    left a type out would be wrong.
    """
    writer = _Writer(_Docstrings())
    channels = _channel_field(settings)
    sections = [name for name in settings.model_fields if name != channels]
    sections += [channels] if channels is not None else []
    writer.lines += _introduction(sections, registry.types)
    for name in sections:
        info = settings.model_fields[name]
        if name == channels:
            continue
        for model, suffix in _nested_models(info.annotation):
            writer.heading(2, f"`{name}{suffix}`")
            writer.paragraph(_class_doc(model))
            writer.model(model, f"{name}{suffix}", 2)
    if channels is not None:
        writer.heading(2, f"`{channels}`")
        writer.paragraph(_class_doc(ChannelConfig))
        writer.paragraph(
            f"Each entry of `{channels}` is validated against the model of its `type`; the keys "
            "below are shared by every type, and each type's table lists them again with its own "
            "defaults."
        )
        writer.model(ChannelConfig, f"{channels}[]", 2)
        for type_name_ in registry.types:
            _channel_section(writer, registry.get(type_name_), f"{channels}[]", 3)
    while writer.lines and not writer.lines[-1]:
        writer.lines.pop()
    return "\n".join(writer.lines) + "\n"


# ------------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m switchboard.docgen",
        description="Print the configuration reference generated from the config models.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare with --path instead of printing; exit 1 when it differs",
    )
    parser.add_argument(
        "--path", type=Path, default=DEFAULT_PATH, help=f"the committed reference (default {DEFAULT_PATH})"
    )
    parser.add_argument(
        "--with-plugins",
        action="store_true",
        help="also document installed plugin channel types (the committed file has built-ins only)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print the reference, or with ``--check`` say whether the committed file is current."""
    options = _parser().parse_args(argv)
    registry = Registry.default() if options.with_plugins else Registry(BUILTIN_TYPES)
    text = render_reference(registry)
    if not options.check:
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.flush()
        return 0
    try:
        committed = options.path.read_text(encoding="utf-8")
    except OSError as error:
        print(f"{options.path}: cannot read: {error.strerror or error}", file=sys.stderr)
        return 1
    if committed != text:
        print(f"{options.path} is stale: regenerate it with `{_REGENERATE}`", file=sys.stderr)
        return 1
    print(f"{options.path} is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
