"""Stop strings and streamed text deltas, with character- and byte-level fake tokenizers."""

from __future__ import annotations

from glam.inference.text import TextStream, cut_at_stop, find_stop, held_back


def chars(ids):
    return "".join(chr(i) for i in ids)


def utf8_bytes(ids):
    return bytes(ids).decode("utf-8", errors="replace")


def stream(text, stops, decode=chars, tokens=None):
    """Push ``tokens`` (default: the characters of ``text``); return (deltas, row)."""
    row = TextStream(decode, stops)
    deltas = []
    for t in tokens if tokens is not None else map(ord, text):
        deltas.append(row.push(t))
        if row.finish_reason:
            break
    if row.finish_reason is None:
        deltas.append(row.finish("length"))
    return deltas, row


def test_find_and_cut_at_the_earliest_stop():
    assert find_stop("a\n\nQ: b", ["Q:", "\n\n"]) == 1
    assert cut_at_stop("answer.\nQ: next", ["\nQ:"]) == ("answer.", True)
    assert cut_at_stop("no stop here", ["\nQ:", ""]) == ("no stop here", False)


def test_held_back_tail_is_a_prefix_of_a_stop_or_an_unfinished_character():
    assert held_back("text\nQ", ["\nQ:"]) == 2
    assert held_back("text\n", ["\nQ:", "###"]) == 1
    assert held_back("text", ["\nQ:"]) == 0
    assert held_back("caf\ufffd", []) == 1


def test_stop_string_ends_the_row_and_never_streams():
    deltas, row = stream("ab\nQ: cd", ["\nQ:"])
    assert row.finish_reason == "stop" and row.text == "ab"
    assert deltas == ["a", "b", "", "", ""]
    assert "".join(deltas) == "ab"


def test_a_held_tail_that_is_not_a_stop_is_released():
    deltas, row = stream("x\nYz", ["\nQ:"])
    assert deltas == ["x", "", "\nY", "z", ""] and row.finish_reason == "length"


def test_stop_inside_a_single_token():
    deltas, row = stream("", ["END"], decode=lambda ids: "".join({1: "ok", 2: "wENDx"}[i] for i in ids), tokens=[1, 2])
    assert row.text == "okw" and "".join(deltas) == "okw" and row.finish_reason == "stop"


def test_multibyte_character_waits_for_its_last_byte():
    deltas, row = stream("", [], decode=utf8_bytes, tokens=list("café".encode()))
    assert deltas == ["c", "a", "f", "", "é", ""] and row.text == "café"
