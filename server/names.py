"""What a name may be: one rule for namespaces, graph, node, runtime and secret names, identifiers and store keys.

A name is 1 to ``MAX_NAME`` (256, ``LIMIT_MAX_NAME_LENGTH``) characters, each a letter or a digit (Unicode, as in
Python identifiers, so every node class name qualifies) or one of ``_ - . :``. No whitespace, control, format
(bidi) or other characters: a name is printed in logs, CLIs and error messages, where a newline would forge a
line and a bidi override would hide what follows. Every name exospherehost's documentation and our tests use fits.
A refused name gets INVALID_ARGUMENT naming the field and showing the value with ``repr``.
"""

from __future__ import annotations

from collections.abc import Iterable

from exosphere.errors import InvalidArgumentError
from exosphere.v1 import common_pb2

__all__ = ["MAX_NAME", "check_name", "check_names", "check_text", "name_problem", "shown"]

MAX_NAME = common_pb2.LIMIT_MAX_NAME_LENGTH
_PUNCTUATION = frozenset("_-.:")
# Free text that is shown but not a name (an SDK version): printable, bounded.
MAX_TEXT = 256


def shown(value: str) -> str:
    """``value`` quoted for an error message, cut at 80 characters."""
    return repr(value if len(value) <= 80 else value[:80] + "...")


def name_problem(value: str) -> str | None:
    """Why ``value`` is not a valid name, or None when it is."""
    if not value:
        return "cannot be empty"
    if len(value) > MAX_NAME:
        return f"must be at most {MAX_NAME} characters, got {len(value)}"
    for char in value:
        if not (char.isalnum() or char in _PUNCTUATION):
            return f"may hold only letters, digits and '_-.:', got {char!r}"
    return None


def check_name(field: str, value: str) -> str:
    """``value``, or InvalidArgumentError naming ``field`` and showing the value."""
    problem = name_problem(value)
    if problem is not None:
        raise InvalidArgumentError(f"{field} {shown(value)}: {problem}")
    return value


def check_names(field: str, values: Iterable[str]) -> None:
    for value in values:
        check_name(field, value)


def check_text(field: str, value: str) -> str:
    """Free text that ends up in listings (an SDK version): printable and at most ``MAX_TEXT`` characters."""
    if len(value) > MAX_TEXT or not value.isprintable():
        raise InvalidArgumentError(f"{field} {shown(value)}: must be printable and at most {MAX_TEXT} characters")
    return value
