"""Request parsing of the service: every malformed request is a QueryError (a 400), never anything else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidret.search.query import QueryError, clean_query
from vidret.search.service import parse_search_params


def test_good_requests() -> None:
    assert parse_search_params([("q", "a dog")]) == ("a dog", None, None)
    assert parse_search_params([("q", "x"), ("k", " 5 "), ("rerank", "FALSE")]) == ("x", 5, False)
    assert parse_search_params([("rerank", "on"), ("q", "x")]) == ("x", None, True)


@pytest.mark.parametrize(("pairs", "match"), [
    ([], r"q: missing"),
    ([("q", "a"), ("q", "b")], r"'q' given more than once"),
    ([("q", "a"), ("limit", "3")], r"unknown parameter 'limit'"),
    ([("q", "a"), ("k", "1e6")], r"k: expected an integer, got '1e6'"),
    ([("q", "a"), ("k", "9" * 5000)], r"k: expected an integer"),
    ([("q", "a"), ("k", "")], r"k: expected an integer"),
    ([("q", "a"), ("rerank", "maybe")], r"rerank: expected true or false"),
])  # fmt: skip
def test_bad_requests(pairs: list[tuple[str, str]], match: str) -> None:
    with pytest.raises(QueryError, match=match):
        parse_search_params(pairs)


@pytest.mark.parametrize(("text", "match"), [
    ("", "non-empty"), (" \t\n ", "non-empty"), ("a" * 1001, "1001 characters"),
    ("bad \ufffd byte", "UTF-8"), ("bell\x07", "control"),
])  # fmt: skip
def test_clean_query_refusals(text: str, match: str) -> None:
    with pytest.raises(QueryError, match=match):
        clean_query(text, 1000)


def test_clean_query_keeps_unicode() -> None:
    assert clean_query("  🐶 perro corre  ", 1000) == "🐶 perro corre"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=40)), max_size=5))
def test_parsing_arbitrary_pairs_raises_only_query_error(pairs: list[tuple[str, str]]) -> None:
    try:
        q, k, rerank = parse_search_params(pairs)
        clean_query(q, 1000)
    except QueryError:
        return
    assert isinstance(q, str) and q.strip()
    assert k is None or isinstance(k, int)
    assert rerank in (None, True, False)
