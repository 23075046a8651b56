"""The streaming sentence splitter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.pipeline.sentences import SentenceSplitter, split_sentences


def stream(text: str, piece: int = 1) -> list[str]:
    splitter = SentenceSplitter()
    out: list[str] = []
    for i in range(0, len(text), piece):
        out += splitter.feed(text[i : i + piece])
    return out + splitter.flush()


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        pytest.param(
            "Hello there. How are you? Great!",
            {},
            ["Hello there.", "How are you?", "Great!"],
            id="basic_boundaries",
        ),
        pytest.param(
            "First line\nSecond line\n\nThird",
            {},
            ["First line", "Second line", "Third"],
            id="newline_is_a_boundary",
        ),
        pytest.param(
            "It costs 3.5 dollars. Version 1.2.3 is out.",
            {},
            ["It costs 3.5 dollars.", "Version 1.2.3 is out."],
            id="not_inside_numbers",
        ),
        pytest.param(
            "Mr. Smith and Dr. Jones met, e.g. at noon. They left i.e. early.",
            {"first_clause_min_chars": 1000},
            ["Mr. Smith and Dr. Jones met, e.g. at noon.", "They left i.e. early."],
            id="not_after_abbreviations",
        ),
        pytest.param(
            'Really?! He said "yes." Then... nothing.',
            {},
            ["Really?!", 'He said "yes."', "Then...", "nothing."],
            id="punctuation_runs_and_closing_quotes",
        ),
    ],
)
def test_boundaries(text: str, options: dict[str, int], expected: list[str]) -> None:
    assert split_sentences(text, **options) == expected


def test_streaming_waits_for_the_character_after_a_period() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("It costs 3.") == []
    assert splitter.feed("5 dollars.") == []
    assert splitter.feed(" Okay") == ["It costs 3.5 dollars."]
    assert splitter.flush() == ["Okay"]
    assert splitter.flush() == []


def test_first_chunk_splits_early_at_a_clause() -> None:
    splitter = SentenceSplitter(first_clause_min_chars=20)
    out = splitter.feed("Sure, I can look that up for you, just a moment, please")
    assert out == ["Sure, I can look that up for you,"]
    # later chunks wait for a real sentence end
    assert splitter.feed(" wait. Next, part") == ["just a moment, please wait."]
    assert splitter.flush() == ["Next, part"]


def test_short_first_clause_is_not_split() -> None:
    assert stream("Sure, thing. Done.") == ["Sure, thing.", "Done."]


def test_run_on_text_is_cut_at_a_space() -> None:
    splitter = SentenceSplitter(max_chars=50)
    out = splitter.feed("word " * 30)
    assert out and all(len(s) <= 50 for s in out)
    assert " ".join(out + splitter.flush()).split() == ["word"] * 30


def test_streaming_matches_whole_text() -> None:
    text = "Hi, Mr. Brown. Your total is 12.50 dollars, e.g. with tax. Anything else?\nBye!"
    for piece in (1, 2, 3, 7, 100):
        assert stream(text, piece) == split_sentences(text), piece


@given(st.text(alphabet="ab .,?!\n3", max_size=80), st.integers(1, 9))
def test_no_text_is_lost(text: str, piece: int) -> None:
    assert "".join(stream(text, piece)).replace(" ", "").replace("\n", "") == text.replace(
        " ", ""
    ).replace("\n", "")
