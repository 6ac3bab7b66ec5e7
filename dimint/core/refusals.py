"""The words of a refusal: what a field should have held, where, and what came instead.

Theory of operation: msgspec checks a frame against a message's annotations in C and says what it
found in its own terms (``Expected `int`, got `bool` - at `$[2]```). A peer deserves an answer in
the schema's terms, so ``explain`` walks msgspec's path along the message's annotations and the
frame's own values, naming each field as it passes it: ``ReplicateAck.shard_epoch must be an int,
got bool``. The sender's side asks the opposite question: ``difference`` says why an object would
not arrive as itself (a tuple where a list belongs, a plain string where an enum member does), and
``out_of_range`` where an int is too large for msgpack. Only refusals run this code, so it favours
plain words over speed; nothing here changes what is accepted.
"""

from __future__ import annotations

import enum
import math
import re
import types
import typing
from typing import Any

import msgspec

from dimint.core.commands import describe, show

__all__ = [
    "NATIVE_DESCRIPTION",
    "difference",
    "expected",
    "explain",
    "fits",
    "noun",
    "out_of_range",
    "strip",
    "struct_fields",
]

NATIVE_DESCRIPTION = "msgpack-native data (None, bool, int, float, str, bytes, list, map)"


def noun(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def expected(annotation: Any) -> str:
    """What a value of ``annotation`` is, in the words of a refusal ("an int or None")."""
    simple = {int: "an int", bool: "a bool", float: "a float", str: "a str", bytes: "bytes"}
    if annotation in simple:
        return simple[annotation]
    if annotation is None or annotation is type(None):
        return "None"
    if annotation is Any:
        return NATIVE_DESCRIPTION
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        described = [m.description for m in arguments[1:] if isinstance(m, msgspec.Meta) and m.description]
        return described[0] if described else expected(arguments[0])
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(expected(a) for a in arguments)
    if origin is list:
        return f"a list of {expected(arguments[0])}"
    if origin is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return f"a tuple of {expected(arguments[0])}"
        return f"a tuple of {len(arguments)} ({', '.join(expected(a) for a in arguments)})"
    if origin is dict:
        return f"a map of {expected(arguments[0])} to {expected(arguments[1])}"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return f"{noun(annotation.__name__)} value"
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return f"{noun(annotation.__name__)} (an array of {arity(annotation)} fields)"
    return getattr(annotation, "__name__", repr(annotation))


_FIELD_TABLES: dict[type, list[tuple[str, Any, bool]]] = {}


def struct_fields(struct_type: type) -> list[tuple[str, Any, bool]]:
    """``(name, annotation, required)`` of a Struct's fields, in wire order (worked out once)."""
    known = _FIELD_TABLES.get(struct_type)
    if known is None:
        info = msgspec.inspect.type_info(struct_type)
        hints = typing.get_type_hints(struct_type, include_extras=True)
        known = _FIELD_TABLES[struct_type] = [(f.name, hints[f.name], f.required) for f in info.fields]  # type: ignore[attr-defined]
    return known


def arity(struct_type: type) -> str:
    fields = struct_fields(struct_type)
    least = sum(required for _, _, required in fields)
    return f"{least}" if least == len(fields) else f"{least} to {len(fields)}"


def strip(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


_PATH_STEP = re.compile(r"\[(\d+|\.\.\.)\]|\.(\w+)")
_PROBLEMS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^Expected `array` of length (\d+), got (\d+)"), "elements"),
    (re.compile(r"^Expected `array` of (?:at least |at most )?length \d+(?: to \d+)?, got (\d+)"), "arity"),
    (re.compile(r"^Invalid enum value (.+)$"), "enum"),
    (re.compile(r"^Expected `[^`]+` (>=|<=|>|<) (\S+)"), "bound"),
    (re.compile(r"^Expected `[^`]+`, got `[^`]+`"), "type"),
]


def explain(error: msgspec.ValidationError, message_type: type, wire: list[Any]) -> str:
    """msgspec's account of a refusal, in the schema's terms and with the value's own path."""
    text = str(error)
    at = ""
    key_of = False
    if " - at `key` in `" in text:
        text, at = text.split(" - at `key` in `", 1)
        at, key_of = at.rstrip("`"), True
    elif " - at `" in text:
        text, at = text.split(" - at `", 1)
        at = at.rstrip("`")
    steps = [int(i) if i and i.isdigit() else (i or name) for i, name in _PATH_STEP.findall(at)]
    # Walk the path along the annotations and the wire value, naming fields as we pass them.
    name = message_type.__name__
    path, annotation, value = name, message_type, wire
    top = True
    for step in steps:
        annotation = strip(annotation)
        if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
            fields = struct_fields(annotation)
            position = step - 1 if top else step
            top = False
            if not isinstance(step, int) or not 0 <= position < len(fields):
                break
            name, annotation, _ = fields[position]
            path = f"{path}.{name}"
            value = value[step] if isinstance(value, list) and step < len(value) else None
            continue
        origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
        if step == "..." and origin is dict and isinstance(value, dict):
            item_type = arguments[1]
            bad = next((k for k, v in value.items() if not fits(v, item_type)), None)
            path, annotation, value = f"{path}[{show(bad)}]", item_type, value.get(bad)
        elif isinstance(step, int) and origin in (list, tuple):
            item_type = arguments[0] if origin is list or arguments[-1] is Ellipsis else arguments[step]
            path, annotation = f"{path}[{step}]", item_type
            value = value[step] if isinstance(value, list) and step < len(value) else None
        else:
            break
    annotation = strip(annotation)
    if key_of:
        key_type = typing.get_args(annotation)[0] if typing.get_origin(annotation) is dict else str
        bad_key = (
            next((k for k in value if not isinstance(k, key_type)), None) if isinstance(value, dict) else None
        )
        return f"{path} key must be {expected(key_type)}, got {describe(bad_key)}"
    for pattern, kind in _PROBLEMS:
        match = pattern.match(text)
        if match is None:
            continue
        if kind in ("elements", "arity"):
            count = len(value) if isinstance(value, list) else int(match.groups()[-1])
            if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
                if annotation is message_type and path == name:
                    return f"{path} must have {arity(annotation)} fields after the tag, got {count - 1}"
                return f"{path} must have {arity(annotation)} fields, got {count}"
            return f"{path} must have {len(typing.get_args(annotation))} elements, got {count}"
        if kind == "enum":
            return f"{path} must be {expected(annotation)}, got {show(value)}"
        if kind == "bound":
            return f"{path} must be {match.group(1)} {match.group(2)}, got {show(value)}"
        enum_like = isinstance(annotation, type) and issubclass(annotation, enum.Enum)
        got = show(value) if enum_like and type(value) in (str, int) else describe(value)
        return f"{path} must be {expected(annotation)}, got {got}"
    return f"{path}: {text}"


def fits(value: Any, annotation: Any) -> bool:
    try:
        msgspec.convert(value, annotation, strict=True)
    except (msgspec.ValidationError, TypeError):
        return False
    return True


def difference(
    sent: Any, arrived: Any, annotation: Any, path: str, skip: frozenset[str] = frozenset()
) -> str | None:
    """Why ``sent`` would not arrive as itself (``arrived`` is what the receiver decodes), or None.

    ``skip`` names top-level fields compared elsewhere (the ones a receiver normalises)."""
    if sent is arrived:
        return None
    described = annotation
    annotation = strip(annotation)
    if isinstance(arrived, enum.Enum):
        if isinstance(sent, type(arrived)):
            return None
        return f"{path} must be {noun(type(arrived).__name__)} value, got {describe(sent)}"
    if type(sent) is not type(arrived):
        if isinstance(sent, str) and type(arrived) is str and sent == arrived:
            return None  # a str enum (Consistency.WEAK) travels as its text
        hint = (
            " (a tuple arrives as a list: send a list)"
            if isinstance(sent, tuple) and type(arrived) is list
            else ""
        )
        return f"{path} must be {expected(described)}, got {describe(sent)}{hint}"
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(sent, msgspec.Struct):
        for name, field_type, _ in struct_fields(type(sent)):
            if name in skip:
                continue
            found = difference(getattr(sent, name), getattr(arrived, name), field_type, f"{path}.{name}")
            if found:
                return found
        return None
    if type(sent) in (list, tuple):
        items = [arguments[0] if origin is list or (arguments and arguments[-1] is Ellipsis) else Any] * len(
            sent
        )
        if origin is tuple and arguments and arguments[-1] is not Ellipsis:
            items = list(arguments)
        for index, (one, other, item_type) in enumerate(zip(sent, arrived, items, strict=False)):
            found = difference(one, other, item_type, f"{path}[{index}]")
            if found:
                return found
        return None if len(sent) == len(arrived) else f"{path} does not arrive unchanged"
    if type(sent) is dict:
        item_type = arguments[1] if origin is dict else Any
        for key, one in sent.items():
            found = difference(one, arrived.get(key), item_type, f"{path}[{show(key)}]")
            if found:
                return found
        return None
    if sent != arrived and not (isinstance(sent, float) and math.isnan(sent) and math.isnan(arrived)):
        return f"{path} does not arrive unchanged (sent {show(sent)}, arrives {show(arrived)})"
    return None


def out_of_range(value: Any, path: str) -> str | None:
    """The path of an int msgpack cannot carry (it fits signed or unsigned 64 bits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return path if not -(1 << 63) <= value < 1 << 64 else None
    if isinstance(value, msgspec.Struct):
        pairs: Any = ((f".{n}", getattr(value, n)) for n in value.__struct_fields__)
    elif isinstance(value, list | tuple):
        pairs = ((f"[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, dict):
        pairs = ((f"[{show(k)}]", v) for k, v in value.items())
    else:
        return None
    for step, item in pairs:
        found = out_of_range(item, path + step)
        if found:
            return found
    return None
