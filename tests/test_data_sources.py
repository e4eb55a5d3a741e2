"""Document sources: every format, streamed indexing, tolerated problems, and clear errors."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from glam.config import ConfigError, SourceConfig
from glam.data.default_corpus import default_sources
from glam.data.errors import DataError
from glam.data.shared_corpus import TABLE3_WEIGHTS, genre_of, shared_corpus_sources
from glam.data.sources import Source, iter_documents, open_sources

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "corpus")


def docs_of(path, fmt="auto", field="text", on_bad_json="skip") -> tuple[list[str], Source]:
    source = Source(SourceConfig("s", str(path), format=fmt, text_field=field), on_bad_json)
    return list(source), source


def test_text_lines_paragraphs(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\n  \nsecond para\nstill second\n")
    (tmp_path / "b.txt").write_text("other file\n")
    assert docs_of(tmp_path, "text")[0] == ["first line\n\n  \nsecond para\nstill second\n", "other file\n"]
    assert docs_of(tmp_path, "lines")[0] == ["first line", "second para", "still second", "other file"]
    assert docs_of(tmp_path / "a.txt", "paragraphs")[0] == ["first line", "second para\nstill second"]
    assert docs_of(str(tmp_path / "*.txt"), "lines")[1].stats.files == 2


def test_jsonl_bad_lines_skipped_and_counted_or_an_error(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": "one"}), "{not json", json.dumps({"body": "x"}), "", json.dumps({"text": "two ☃"})]
    path.write_text("\n".join(lines) + "\n")
    docs, source = docs_of(path)
    assert docs == ["one", "two ☃"] and source.stats.bad_json == 2
    with pytest.raises(DataError, match="on_bad_json"):
        docs_of(path, on_bad_json="error")
    assert docs_of(path, field="body")[0] == ["x"]


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"caf\xe9 ok\nbad \xff\xfe end\ngood \xe2\x98\x83\n")
    docs, source = docs_of(tmp_path / "x.txt", "lines")
    assert docs == ["caf\ufffd ok", "bad \ufffd\ufffd end", "good \u2603"]
    assert source.stats.decode_replacements == 3
    _, whole = docs_of(tmp_path / "x.txt", "text")
    assert whole.stats.decode_replacements == 3


def test_csv_with_and_without_header(tmp_path):
    (tmp_path / "h.csv").write_text('id,title,body\n1,Hello,"multi\nline, quoted ""x"""\n2,Bye,short\n')
    assert docs_of(tmp_path / "h.csv", field="title,body")[0] == ['Hello\nmulti\nline, quoted "x"', "Bye\nshort"]
    (tmp_path / "n.csv").write_text('"3","Title","Desc"\n"4","T2","D2"\n')
    assert docs_of(tmp_path / "n.csv", field="1,2")[0] == ["Title\nDesc", "T2\nD2"]
    with pytest.raises(DataError, match="no column 'text'"):
        docs_of(tmp_path / "h.csv")


def test_parquet_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"text": [f"row {i}" if i % 3 else "" for i in range(25)], "n": list(range(25))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=4)
    docs, source = docs_of(tmp_path / "t.parquet")
    assert docs == [f"row {i}" for i in range(25) if i % 3]
    assert source.document(len(source) - 1) == "row 23" and source.document(0) == "row 1"


def test_xml_posts_and_stackexchange(tmp_path):
    (tmp_path / "chat.xml").write_text(
        '<Session><Posts>\n<Post class="Greet" user="u1">hi &amp; bye<terminals>\n<t pos="UH" word="hi"/>\n'
        '</terminals>\n</Post>\n<Post class="x" user="u2">lol<terminals>\n</terminals>\n</Post>\n</Posts></Session>\n'
    )
    assert docs_of(tmp_path / "chat.xml")[0] == ["hi & bye", "lol"]
    (tmp_path / "se.xml").write_text(
        '<?xml version="1.0"?>\n<posts>\n'
        '  <row Id="1" Body="&lt;p&gt;Use &lt;code&gt;a &amp;amp; b&lt;/code&gt;&lt;/p&gt;&#xA;" Title="t" />\n'
        '  <row Id="2" Text="A comment" />\n</posts>\n'
    )
    assert docs_of(tmp_path / "se.xml")[0] == ["Use a & b", "A comment"]


def test_missing_path_empty_glob_empty_corpus(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        docs_of(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="matches no files"):
        docs_of(str(tmp_path / "*.jsonl"))
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    with pytest.raises(DataError, match="no non-empty documents"):
        docs_of(tmp_path / "blank.txt", "lines")
    with pytest.raises(DataError, match="no data sources"):
        open_sources(())


def test_bad_weight_and_format_are_config_errors():
    with pytest.raises(ConfigError, match="weight"):
        SourceConfig("web", "x.txt", weight=0)
    with pytest.raises(ConfigError, match="weight"):
        SourceConfig("web", "x.txt", weight=-1.5)
    with pytest.raises(ConfigError, match="format"):
        SourceConfig("web", "x.txt", format="docx")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_hf_source_without_datasets_names_the_fix():
    with pytest.raises(DataError, match=r"pip install glam\[hf\]"):
        len(Source(SourceConfig("hf", "hf:wikitext:wikitext-2-raw-v1", format="hf")))


def test_default_corpus_is_big_deterministic_and_split_by_domain(tmp_path):
    first = default_sources(str(tmp_path / "a"))
    second = default_sources(str(tmp_path / "b"))
    assert len(first) >= 4 and len({s.name for s in first}) == len(first)
    sizes = [os.path.getsize(s.path) for s in first]
    assert sum(sizes) > 2_000_000
    for a, b in zip(first, second):
        assert open(a.path, "rb").read() == open(b.path, "rb").read()
    sources = open_sources(first)
    assert all(len(s) >= 50 for s in sources)
    assert "Return" in " ".join(sources[0].document(k) for k in range(20))


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="the shared corpus (../shared/data/corpus) is not available")
def test_shared_corpus_sources_have_table3_weights():
    configs = shared_corpus_sources(SHARED)
    by_genre: dict[str, float] = {}
    for c in configs:
        by_genre[genre_of(c.name)] = by_genre.get(genre_of(c.name), 0) + c.weight
    assert by_genre == pytest.approx(TABLE3_WEIGHTS)
    sources = {s.name: s for s in open_sources(configs)}
    assert len(sources["conversations.nps_chat"]) > 10_000
    assert len(sources["news"]) == 7600 and "\n" in sources["news"].document(0)
    assert "<" not in sources["forums.stackexchange"].document(0)
    assert len(sources["conversations.switchboard"]) == 36


def test_default_corpus_is_machine_independent(tmp_path):
    """The same Python gives the same corpus anywhere: no interpreter or home paths leak into it."""
    import os
    import sys

    from glam.data.default_corpus import default_sources

    sources = default_sources(str(tmp_path))
    text = "".join(open(s.path, encoding="utf-8").read() for s in sources)
    assert len(text) > 2_000_000
    for leak in (sys.executable, sys.prefix, os.path.expanduser("~"), str(tmp_path)):
        assert leak not in text, leak


def test_iter_documents_interleaves_the_sources_by_weight(tmp_path):
    """A tokenizer sample cut anywhere (max_chars) holds each source in proportion to its weight."""
    configs = []
    for name, weight in (("a", 0.5), ("b", 0.25), ("c", 0.25)):
        (tmp_path / f"{name}.txt").write_text("".join(f"{name}{i:03d}\n" for i in range(100)))
        configs.append(SourceConfig(name, str(tmp_path / f"{name}.txt"), weight, "lines"))
    sources = open_sources(tuple(configs))
    sample = list(iter_documents(sources, 40, seed=3, exclude={"a": {0, 1, 2}}))
    assert [d[0] for d in sample[:8]] == ["a", "b", "c", "a", "a", "b", "c", "a"]
    assert [sum(d[0] == n for d in sample[:20]) for n in "abc"] == [10, 5, 5]
    assert [sum(d[0] == n for d in sample) for n in "abc"] == [20, 10, 10]
    assert len(set(sample)) == 40 and not {"a000", "a001", "a002"} & set(sample)
    assert sample == list(iter_documents(sources, 40, seed=3, exclude={"a": {0, 1, 2}}))  # deterministic
    assert sample != list(iter_documents(sources, 40, seed=4, exclude={"a": {0, 1, 2}}))


def test_a_json_file_is_an_array_as_in_the_evals_and_jsonl_one_object_per_line(tmp_path):
    """``.json`` is one JSON array of objects (the evals' ``json`` reader reads the same file the same way);
    ``.jsonl`` is JSON Lines; a ``.json`` file of one object per line still reads as JSON Lines."""
    from glam.evals.readers import read_json

    records = [{"text": "first ☃"}, {"text": "second, with ] and ,"}, {"body": "no text"}, {"text": "third"}]
    array = tmp_path / "a.json"
    array.write_text(json.dumps(records, indent=2, ensure_ascii=False))
    docs, source = docs_of(array)
    assert docs == ["first ☃", "second, with ] and ,", "third"] and source.stats.bad_json == 1
    assert [r.get("text") for r in read_json(array)] == ["first ☃", "second, with ] and ,", None, "third"]
    (tmp_path / "b.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert docs_of(tmp_path / "b.json")[0] == ["first ☃", "second, with ] and ,", "third"]
    assert docs_of(tmp_path, "auto")[0] == [*docs, *docs]  # a folder of both layouts


def test_a_json_layout_the_rule_does_not_cover_is_one_line_naming_the_rule(tmp_path):
    (tmp_path / "one.json").write_text('{\n  "text": "a pretty-printed object"\n}\n')
    with pytest.raises(DataError, match=r"one\.json.*is none of the \.json formats.*one JSON array of objects"):
        docs_of(tmp_path / "one.json")
    (tmp_path / "array.jsonl").write_text('[{"text": "an array in a .jsonl file"}]\n')
    with pytest.raises(DataError, match=r"array\.jsonl.*holds a JSON array, not JSON Lines.*format: auto"):
        docs_of(tmp_path / "array.jsonl")
    (tmp_path / "broken.json").write_text('[{"text": "ok"}, {"text": ]')
    with pytest.raises(DataError, match=r"broken\.json.*not valid JSON at character 26 \(Expecting value\)"):
        docs_of(tmp_path / "broken.json")


def test_every_configurable_format_is_in_the_one_registry():
    from glam.config import SOURCE_FORMATS
    from glam.data.formats import FORMATS

    assert set(SOURCE_FORMATS) - {"auto"} <= set(FORMATS)
    assert set(FORMATS) == set(SOURCE_FORMATS) - {"auto"}  # every format can be named in a config
