"""From a command's raw arguments to the typed values its handler expects, compiled once per store.

Theory of operation
-------------------
``dimint.core.commands`` names each command's argument kinds; ``_compile_normaliser`` turns that
into one closure per command (specialised by arity, because this runs on every request), so a
handler never sees an unchecked argument and a refusal always comes before any change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dimint.core.commands import INT64_MAX, INT64_MIN, CommandSpec
from dimint.core.errors import (
    CommandError,
    ConfigError,
    ErrorCode,
)
from dimint.core.store.ops import _TAG_OF_TYPE, StoreLimits


@dataclass(frozen=True, slots=True)
class _Route:
    """A command compiled from its CommandSpec: the handler and one closure checking all arguments."""

    handler: Callable[..., Any]
    is_write: bool
    normalise: Callable[[Sequence[Any]], tuple[Any, ...]]


def _argument_normalisers(limits: StoreLimits) -> dict[str, Callable[[Any], Any]]:
    """One closure per argument kind of ``dimint.core.commands``, with the limits baked in.

    Closures rather than methods because these run for every argument of every command.
    """
    max_key_bytes, max_value_bytes = limits.max_key_bytes, limits.max_value_bytes

    def key(arg: Any) -> bytes:
        if type(arg) is not bytes:
            arg = _to_bytes(arg, "key")
        if len(arg) > max_key_bytes:
            raise CommandError(ErrorCode.KEY_TOO_LARGE, f"key of {len(arg)} bytes > {max_key_bytes}")
        return arg

    def data(arg: Any) -> bytes:
        if type(arg) is not bytes:
            arg = _to_bytes(arg, "value")
        if len(arg) > max_value_bytes:
            raise CommandError(ErrorCode.VALUE_TOO_LARGE, f"value of {len(arg)} bytes > {max_value_bytes}")
        return arg

    def value(arg: Any) -> bytes | int:
        if isinstance(arg, int) and not isinstance(arg, bool):
            return _norm_int(arg)
        return data(arg)

    return {
        "key": key,
        "value": value,
        "bytes": data,
        "int": _norm_int,
        "opt_int": _norm_opt_int,
        "cond": _norm_cond,
    }


def _arity_error(command: str, expected: str, got: int) -> CommandError:
    return CommandError(ErrorCode.BAD_ARGUMENT, f"{command} takes {expected} arguments, got {got}")


def _compile_normaliser(
    spec: CommandSpec, kinds: dict[str, Callable[[Any], Any]]
) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """A closure that checks a command's arity and normalises its arguments left to right.

    The result is the handler's positional arguments; a variadic tail arrives as one list.
    Arities 1-4 are unrolled because get/set sit on every benchmark's hot path.
    """
    name = spec.name
    fixed = [kinds[kind] for kind in spec.args if not kind.endswith("*") and kind != "pairs"]
    tail_kind = spec.args[-1]
    count = len(fixed)
    if tail_kind.endswith("*") or tail_kind == "pairs":
        if tail_kind == "pairs":
            tail = (kinds["key"], kinds["value"]) if spec.key_positions == (-2,) else (kinds["bytes"],) * 2
        else:
            tail = (kinds[tail_kind[:-1]],)
        step = len(tail)
        expected = f"{count} + {'pairs of' if step == 2 else 'one or more'}"

        def normalise_variadic(args: Sequence[Any]) -> tuple[Any, ...]:
            rest = len(args) - count
            if rest < step or rest % step:
                raise _arity_error(name, expected, len(args))
            head = [norm(arg) for norm, arg in zip(fixed, args, strict=False)]
            if step == 1:
                norm = tail[0]
                head.append([norm(arg) for arg in args[count:]])
            else:
                first, second = tail
                head.append([second(arg) if i % 2 else first(arg) for i, arg in enumerate(args[count:])])
            return tuple(head)

        return normalise_variadic
    expected = str(count)
    if count == 1:
        (n0,) = fixed

        def normalise_1(args: Sequence[Any]) -> tuple[Any, ...]:
            if len(args) != 1:
                raise _arity_error(name, expected, len(args))
            return (n0(args[0]),)

        return normalise_1
    if count == 2:
        n0, n1 = fixed

        def normalise_2(args: Sequence[Any]) -> tuple[Any, ...]:
            if len(args) != 2:
                raise _arity_error(name, expected, len(args))
            return (n0(args[0]), n1(args[1]))

        return normalise_2
    if count == 3:
        n0, n1, n2 = fixed

        def normalise_3(args: Sequence[Any]) -> tuple[Any, ...]:
            if len(args) != 3:
                raise _arity_error(name, expected, len(args))
            return (n0(args[0]), n1(args[1]), n2(args[2]))

        return normalise_3
    if count == 4:
        n0, n1, n2, n3 = fixed

        def normalise_4(args: Sequence[Any]) -> tuple[Any, ...]:
            if len(args) != 4:
                raise _arity_error(name, expected, len(args))
            return (n0(args[0]), n1(args[1]), n2(args[2]), n3(args[3]))

        return normalise_4
    raise ConfigError(f"command {name} has {count} fixed arguments; teach _compile_normaliser")


def _to_bytes(arg: Any, what: str) -> bytes:
    if isinstance(arg, str):
        try:
            return arg.encode("utf-8")
        except UnicodeEncodeError:
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"{what} is not valid UTF-8 text") from None
    if isinstance(arg, bytes):
        return bytes(arg)
    raise CommandError(ErrorCode.BAD_ARGUMENT, f"{what} must be str or bytes, got {type(arg).__name__}")


def _norm_int(arg: Any) -> int:
    if type(arg) is not int:
        if not isinstance(arg, int) or isinstance(arg, bool):
            raise CommandError(ErrorCode.BAD_ARGUMENT, f"expected an int, got {type(arg).__name__}")
        arg = int(arg)
    if not INT64_MIN <= arg <= INT64_MAX:
        raise CommandError(ErrorCode.BAD_ARGUMENT, f"{arg} is outside signed 64 bits")
    return arg


def _norm_opt_int(arg: Any) -> int | None:
    return None if arg is None else _norm_int(arg)


def _norm_cond(arg: Any) -> str | None:
    if arg is None or arg == "nx" or arg == "xx":
        return arg
    raise CommandError(ErrorCode.BAD_ARGUMENT, f'condition must be None, "nx" or "xx", got {arg!r}')


def _wrong_type(command: str, value: Any) -> CommandError:
    return CommandError(ErrorCode.WRONG_TYPE, f"{command} does not apply to a {_TAG_OF_TYPE[type(value)]}")
