from __future__ import annotations

import pytest

from server.templating import OutputRef, StoreRef, TemplateSyntaxError, parse_template


def test_references_inside_longer_strings_and_repeated() -> None:
    template = parse_template("a ${{ x.outputs.f }} b ${{store.k}}${{ x . outputs . f }}")
    assert template.segments == ("a ", OutputRef("x", "f"), " b ", StoreRef("k"), OutputRef("x", "f"))


def test_literal() -> None:
    assert parse_template("plain").is_literal
    assert parse_template("").segments == ()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("${{ x.outputs.f ", "unclosed"),
        ("${{ x.inputs.f }}", "invalid expression"),
        ("${{ store }}", "invalid expression"),
        ("${{ }}", "invalid expression"),
    ],
)
def test_malformed_expressions_are_named(value: str, problem: str) -> None:
    with pytest.raises(TemplateSyntaxError, match=problem):
        parse_template(value)
