"""SentenceSplitter and clean_for_speech (pipelines/sentences.py)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipelines.sentences import SentenceSplitter, clean_for_speech

pytestmark = pytest.mark.unit

PROPERTY = settings(database=None, deadline=None, max_examples=300)


def split_all(chunks: list[str], **options: int) -> list[str]:
    splitter = SentenceSplitter(**options)
    pieces: list[str] = []
    for chunk in chunks:
        pieces += splitter.push(chunk)
    return pieces + splitter.flush()


def streamed(text: str, **options: int) -> tuple[list[str], list[str]]:
    """Feed one character at a time, as a token stream would; (pushed pieces, flushed)."""
    splitter = SentenceSplitter(**options)
    pushed: list[str] = []
    for ch in text:
        pushed += splitter.push(ch)
    return pushed, splitter.flush()


# --- where pieces end ------------------------------------------------------------------


def test_splits_at_sentence_ends_as_soon_as_they_are_complete() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Hello there. How are") == ["Hello there."]
    assert splitter.push(" you? I am") == ["How are you?"]
    assert splitter.push(" fine!") == []  # no space after '!' yet: it may go on
    assert splitter.flush() == ["I am fine!"]
    assert splitter.flush() == []


@pytest.mark.parametrize("text, first", [
    ("Dr. Smith will see you now. Please wait.", "Dr. Smith will see you now."),
    ("Mr. and Mrs. Jones are here. Come in.", "Mr. and Mrs. Jones are here."),
    ("Bring snacks, e.g. chips or nuts. Thanks.", "Bring snacks, e.g. chips or nuts."),
    ("It costs 3.50 dollars today. Pay now.", "It costs 3.50 dollars today."),
    ("Pi is about 3.14159 in total. Neat.", "Pi is about 3.14159 in total."),
])
def test_no_split_at_abbreviations_or_decimals(text: str, first: str) -> None:
    # first_clause_words is large so only sentence ends can cut
    pushed, flushed = streamed(text, first_clause_words=100)
    assert pushed[0] == first
    assert pushed + flushed == [first, text[len(first):].strip()]


@pytest.mark.parametrize("text", [
    "Wait! Really? Yes. Ok.",
    "Wait!\" Really?) Yes.] Ok.",
    "Wait… Really?! Yes... Ok.",
])
def test_every_sentence_end_mark_splits(text: str) -> None:
    pushed, flushed = streamed(text, first_clause_words=100)
    assert len(pushed + flushed) == 4
    assert " ".join(pushed + flushed) == text


def test_first_clause_splits_at_a_comma_once_it_has_two_words() -> None:
    pushed, flushed = streamed("Sure thing, I can help with that, right away. Done.")
    assert pushed == ["Sure thing,", "I can help with that, right away."]
    assert flushed == ["Done."]


def test_one_word_before_the_comma_is_not_yet_a_clause() -> None:
    pushed, _ = streamed("Well, I think so, probably. Yes.")
    assert pushed[0] == "Well, I think so,"


@pytest.mark.parametrize("mark", [";", ":", " -", " —", " –"])
def test_first_clause_also_ends_at_semicolon_colon_and_dash(mark: str) -> None:
    pushed, flushed = streamed(f"Here it is{mark} the answer you wanted")
    assert pushed == [f"Here it is{mark}"]
    assert flushed == ["the answer you wanted"]


def test_later_pieces_split_only_at_sentence_ends() -> None:
    pushed, flushed = streamed("Okay then, first part. Then a comma, and more, and more. End")
    assert pushed == ["Okay then,", "first part.", "Then a comma, and more, and more."]
    assert flushed == ["End"]


def test_newlines_split() -> None:
    pushed, flushed = streamed("Line one\nLine two\n\nLine three", first_clause_words=100)
    assert pushed == ["Line one", "Line two"]
    assert flushed == ["Line three"]


def test_long_run_without_punctuation_is_cut_at_a_space() -> None:
    text = " ".join(f"word{i}" for i in range(40))
    pushed, flushed = streamed(text, max_chars=50)
    assert pushed, "a run over max_chars must not wait for the end of the reply"
    for piece in pushed + flushed:
        assert len(piece) <= 50
        assert not piece.startswith(" ") and not piece.endswith(" ")
    assert " ".join(pushed + flushed) == text  # cut between words, never inside one


def test_long_word_without_spaces_is_cut_at_max_chars() -> None:
    pushed, flushed = streamed("x" * 130, max_chars=50)
    assert pushed == ["x" * 50, "x" * 50]
    assert flushed == ["x" * 30]


def test_flush_returns_the_rest_once() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("no ending punctuation here") == []
    assert splitter.flush() == ["no ending punctuation here"]
    assert splitter.flush() == []


def test_pieces_without_letters_or_digits_are_dropped() -> None:
    assert split_all(["Yes. ... . !! Ok.\n\n--\n"]) == ["Yes.", "Ok."]
    splitter = SentenceSplitter()
    assert splitter.push("... ") == []
    assert splitter.flush() == []


def test_pieces_never_exceed_max_chars_even_for_large_deltas() -> None:
    text = " ".join(["word"] * 80) + ". Next."
    pieces = split_all([text], max_chars=100)
    assert all(len(piece) <= 100 for piece in pieces), [len(p) for p in pieces]


# --- property: nothing speakable is lost, whatever the chunking -----------------------

_WORDS = st.sampled_from([
    "hello", "Dr.", "Mr.", "e.g.", "etc.", "3.50", "42", "no", "it's", "Zürich", "ok",
    "x" * 30,
])
_MARKS = st.sampled_from([".", "!", "?", "...", "…", ",", ";", ":", "-", "—", "\"", ")",
                          "]", "'", "(", "*", "!?"])
_GAPS = st.sampled_from([" ", " ", " ", "\n", "\n\n", "  ", "\t"])
_TOKENS = st.one_of(_WORDS, _MARKS, _GAPS, st.text(max_size=3))
_TEXTS = st.lists(_TOKENS, max_size=60).map("".join)


@st.composite
def text_and_chunks(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = draw(_TEXTS)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def assert_pieces_cover_speakable_text(text: str, pieces: list[str]) -> None:
    """`text` is the pieces in order, separated only by text without letters or digits.

    So the splitter loses whitespace and fragments like '...' that had nothing to say,
    and nothing else; every piece is a stripped, speakable substring of the input.
    """
    position = 0
    for piece in pieces:
        assert piece == piece.strip() and piece
        assert any(ch.isalnum() for ch in piece), piece
        found = text.find(piece, position)
        assert found >= 0, f"{piece!r} is not the next part of the input"
        gap = text[position:found]
        assert not any(ch.isalnum() for ch in gap), f"lost speakable text {gap!r}"
        position = found + len(piece)
    assert not any(ch.isalnum() for ch in text[position:]), f"lost {text[position:]!r}"


@PROPERTY
@given(case=text_and_chunks(), first_clause_words=st.integers(1, 4),
       max_chars=st.integers(8, 60))
@example(case=("Hi. ... there, you. 3.50 Dr. Who\n", ["Hi", ". ... th", "ere, you. 3.", "50 Dr",
                                                        ". Who\n"]),
         first_clause_words=2, max_chars=240)
def test_concatenated_pieces_are_the_speakable_input(case: tuple[str, list[str]],
                                                      first_clause_words: int,
                                                      max_chars: int) -> None:
    text, chunks = case
    pieces = split_all(chunks, first_clause_words=first_clause_words, max_chars=max_chars)
    assert_pieces_cover_speakable_text(text, pieces)
    # the same statement, whitespace-normalized: only alphanumeric-free parts are gone
    kept = "".join(ch for ch in " ".join(pieces) if ch.isalnum())
    assert kept == "".join(ch for ch in text if ch.isalnum())


@PROPERTY
@given(text=st.text(max_size=200), max_chars=st.integers(8, 60))
def test_arbitrary_text_streamed_by_character(text: str, max_chars: int) -> None:
    pushed, flushed = streamed(text, max_chars=max_chars)
    assert_pieces_cover_speakable_text(text, pushed + flushed)
    assert all(len(piece) <= max_chars for piece in pushed + flushed)


# --- clean_for_speech ------------------------------------------------------------------


@pytest.mark.parametrize("markdown, spoken", [
    ("**Bold** and _italic_ and `code`", "Bold and italic and code"),
    ("# Title\n## Subtitle", "Title Subtitle"),
    ("> quoted line", "quoted line"),
    ("| a | b |", "a b"),
    ("See [the docs](https://example.com/a_b) now", "See the docs now"),
    ("~~struck~~ text", "struck text"),
    ("plain sentence, unchanged.", "plain sentence, unchanged."),
])
def test_clean_for_speech_strips_markdown(markdown: str, spoken: str) -> None:
    assert clean_for_speech(markdown) == spoken


@pytest.mark.parametrize("text, spoken", [
    ("Great job 👍", "Great job"),
    ("Party time 🎉🎉 tonight", "Party time tonight"),
    ("Done ✅ and sunny ☀ and launch 🚀", "Done and sunny and launch"),
    ("😀", ""),
    ("Hello 🇺🇸 friend", "Hello friend"),
])
def test_clean_for_speech_strips_emoji(text: str, spoken: str) -> None:
    assert clean_for_speech(text) == spoken


@pytest.mark.parametrize("text", ["Rated ⭐⭐⭐ ok", "I ❤️ it ok", "family 👨‍👩‍👧 ok"])
def test_clean_for_speech_leaves_no_emoji_residue(text: str) -> None:
    cleaned = clean_for_speech(text)
    leftovers = [ch for ch in cleaned
                 if unicodedata.category(ch) in ("So", "Mn", "Cf")]
    assert leftovers == [], [hex(ord(ch)) for ch in leftovers]
    assert cleaned.endswith(" ok")
