"""User-facing errors: one line naming the field and the valid choices, exit code 2, no traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input from the user (config, CLI, files). Printed as one line; exit code 2."""

    def __init__(self, field: str, message: str, choices: Iterable[object] | None = None):
        self.field = field
        self.choices = list(choices) if choices is not None else None
        text = f"{field}: {message}"
        if self.choices is not None:
            text += f" (valid: {', '.join(map(str, self.choices))})"
        super().__init__(text)


def one_line(error: BaseException, typed: bool = False, limit: int | None = None) -> str:
    """Any exception as one line: the first non-blank line of its message, or its type's name when
    it has none (``TimeoutError()``, many ``OSError``s); ``typed`` puts the type's name first.
    Every handler that reports an exception in a line (warnings, status reasons, pending marks)
    goes through here, so an odd exception never raises inside the handler itself."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    name = type(error).__name__
    text = (f"{name}: {lines[0]}" if typed else lines[0]) if lines else name
    return text[:limit] if limit else text


def check_choice(field: str, value: object, choices: Iterable[object]) -> None:
    choices = list(choices)
    if value not in choices:
        raise UserError(field, f"unknown value {value!r}", choices)


def cli_main(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a CLI entry point: a UserError becomes `error: <line>` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2)

    return wrapper
