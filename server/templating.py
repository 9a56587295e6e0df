"""References inside input strings: ``${{ id.outputs.field }}`` and ``${{ store.key }}``, parsed once at upsert."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["OutputRef", "StoreRef", "Template", "TemplateSyntaxError", "parse_template"]

_OPEN = "${{"
_CLOSE = "}}"
_OUTPUT = re.compile(r"^([A-Za-z0-9_\-]+)\s*\.\s*outputs\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)$")
_STORE = re.compile(r"^store\s*\.\s*([^.\s{}]+)$")


class TemplateSyntaxError(ValueError):
    """A malformed ``${{ ... }}`` expression."""


@dataclass(frozen=True, slots=True)
class OutputRef:
    """An output field of an ancestor node."""

    identifier: str
    field: str


@dataclass(frozen=True, slots=True)
class StoreRef:
    """A key of the run's store."""

    key: str


Segment = str | OutputRef | StoreRef


@dataclass(frozen=True, slots=True)
class Template:
    """An input value split into literal text and references."""

    segments: tuple[Segment, ...]

    @property
    def is_literal(self) -> bool:
        return all(isinstance(s, str) for s in self.segments)

    def literal(self) -> str:
        """The text of a template without references."""
        return "".join(s for s in self.segments if isinstance(s, str))

    @property
    def refs(self) -> tuple[OutputRef | StoreRef, ...]:
        return tuple(s for s in self.segments if not isinstance(s, str))


def parse_template(value: str) -> Template:
    """Split ``value`` into literals and references; raise :class:`TemplateSyntaxError` naming the problem."""
    segments: list[Segment] = []
    pos = 0
    while True:
        start = value.find(_OPEN, pos)
        if start < 0:
            if _CLOSE in value[pos:] and "{{" in value[pos:]:
                raise TemplateSyntaxError(f"'{{{{' without '$' in {value!r}: write ${{{{ ... }}}}")
            if value[pos:]:
                segments.append(value[pos:])
            break
        if start > pos:
            segments.append(value[pos:start])
        end = value.find(_CLOSE, start + len(_OPEN))
        if end < 0:
            raise TemplateSyntaxError(f"unclosed '${{{{' in {value!r}")
        inner = value[start + len(_OPEN) : end].strip()
        if (m := _OUTPUT.match(inner)) is not None:
            segments.append(OutputRef(m.group(1), m.group(2)))
        elif (m := _STORE.match(inner)) is not None:
            segments.append(StoreRef(m.group(1)))
        else:
            raise TemplateSyntaxError(
                f"invalid expression '${{{{ {inner} }}}}': expected ${{{{ <identifier>.outputs.<field> }}}} "
                "or ${{ store.<key> }}"
            )
        pos = end + len(_CLOSE)
    return Template(tuple(segments))
