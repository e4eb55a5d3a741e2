"""The pipeline: mixture proportions, determinism, exact resume, multi-host slices and reading
shards (each process builds only its rows), held-out split."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from glam.config import ConfigError, DataConfig, GLaMConfig, ModelConfig, SourceConfig, TrainConfig
from glam.data.errors import DataError
from glam.data.mixture import draw_sources
from glam.data.pipeline import (
    DataPipeline,
    build_pipeline,
    merge_states,
    process_slice,
    save_run_tokenizer,
    tokenizer_sample,
    train_mixture_tokenizer,
)
from glam.data.tokenizer import train_tokenizer

WEIGHTS = {"alpha": 0.5, "beta": 0.3, "gamma": 0.15, "delta": 0.05}
WORDS = "mixture expert token sparse dense route gate layer batch shard".split()


def write_corpus(root, docs_per_source=(200, 60, 30, 6)) -> tuple[SourceConfig, ...]:
    """Four sources in four formats; every document carries a unique marker like ``beta0007``."""
    rng = np.random.default_rng(0)
    configs = []
    for (name, weight), n in zip(WEIGHTS.items(), docs_per_source):
        docs = [f"{name}{i:04d} " + " ".join(rng.choice(WORDS, size=rng.integers(2, 30))) for i in range(n)]
        if name in ("alpha", "gamma"):
            path = root / f"{name}.jsonl"
            path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        else:
            path = root / f"{name}.txt"
            path.write_text("\n".join(docs) + "\n")
        configs.append(SourceConfig(name, str(path), weight, "jsonl" if path.suffix == ".jsonl" else "lines"))
    return tuple(configs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    configs = write_corpus(root)
    text = [line for c in configs for line in open(c.path).read().splitlines()]
    tokenizer = train_tokenizer(text * 3, 400, str(root / "tok.model"), num_threads=1)
    return configs, tokenizer


def make_cfg(configs, *, seed=0, batch_size=8, seq_len=32, heldout=2, shards=0) -> GLaMConfig:
    return GLaMConfig(
        model=ModelConfig(vocab_size=512, max_seq_len=64),
        data=DataConfig(sources=configs, seed=seed, heldout_docs=heldout, shards=shards),
        train=TrainConfig(batch_size=batch_size, seq_len=seq_len),
    )


def test_draw_sources_matches_weights_within_four_sigma():
    weights = np.array(list(WEIGHTS.values()))
    n = 20_000
    chosen = draw_sources(0, np.arange(n), weights)
    counts = np.bincount(chosen, minlength=len(weights))
    sigma = np.sqrt(n * weights * (1 - weights))
    assert np.all(np.abs(counts - n * weights) < 4 * sigma), counts
    np.testing.assert_array_equal(chosen, draw_sources(0, np.arange(n), weights))
    assert (chosen != draw_sources(1, np.arange(n), weights)).mean() > 0.3
    # A pure function of (seed, index): any slice equals the same slice of the whole stream.
    np.testing.assert_array_equal(chosen[12_345:12_400], draw_sources(0, np.arange(12_345, 12_400), weights))


def test_pipeline_proportions_identical_runs_and_seed_dependence(corpus):
    configs, tok = corpus
    cfg = make_cfg(configs, batch_size=64, seq_len=8)
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        pipe = DataPipeline(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seed=seed)), tok)
        runs[name] = np.stack([pipe.next_batch()["targets"] for _ in range(320)])  # 20,480 rows
        runs[name + "_stats"] = pipe.stats()
    stats = runs["a_stats"]
    n = 320 * 64
    for source, w in WEIGHTS.items():
        rows = stats[source]["rows"]
        assert abs(rows - n * w) < 4 * np.sqrt(n * w * (1 - w)), (source, rows, n * w)
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert runs["a_stats"] == runs["b_stats"]
    assert not np.array_equal(runs["a"], runs["c"])
    # The small, over-sampled source shows it: many epochs over its 4 training documents.
    assert stats["delta"]["documents"] == 4 and stats["delta"]["epochs"] > 10
    assert stats["alpha"]["epochs"] < stats["delta"]["epochs"] / 3
    assert sum(s["proportion"] for s in stats.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_exact_resume(corpus, prefetch):
    configs, tok = corpus
    cfg = make_cfg(configs, seq_len=24)
    first = DataPipeline(cfg, tok, prefetch=prefetch)
    for _ in range(7):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))
    assert len(json.dumps(state)) < 1000
    expected = [first.next_batch() for _ in range(6)]
    resumed = DataPipeline(cfg, tok, prefetch=prefetch)
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.next_batch()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert resumed.stats() == first.stats()
    first.close()
    resumed.close()


def test_batch_schema_and_process_slices(corpus):
    configs, tok = corpus
    batch = DataPipeline(make_cfg(configs, batch_size=8, seq_len=32), tok).next_batch()
    assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
        "inputs": ((8, 32), "int32"),
        "targets": ((8, 32), "int32"),
        "segment_ids": ((8, 32), "int32"),
        "positions": ((8, 32), "int32"),
        "loss_weights": ((8, 32), "float32"),
    }
    for processes in (1, 2, 4, 8):
        parts = [process_slice(batch, p, processes) for p in range(processes)]
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), batch[key])
    with pytest.raises(ValueError, match="divisible"):
        process_slice(batch, 0, 3)


def processes(cfg, tok, count: int) -> list[DataPipeline]:
    return [DataPipeline(cfg, tok, process_index=p, process_count=count) for p in range(count)]


def together(pipes: list[DataPipeline]) -> dict[str, np.ndarray]:
    """The next global batch, each process building its own rows."""
    parts = [pipe.next_batch() for pipe in pipes]
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def assert_batches_equal(got: dict, want: dict) -> None:
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_each_process_builds_only_its_rows_of_the_same_global_batch(corpus):
    configs, tok = corpus
    cfg = make_cfg(configs, seq_len=24, shards=4)
    reference = DataPipeline(cfg, tok)  # one process packs all four reading shards
    assert len(reference.streams) == 4
    want = [reference.next_batch() for _ in range(3)]
    for count in (2, 4, 8):  # 8 processes: two per shard, each packing it and keeping half its rows
        pipes = processes(cfg, tok, count)
        assert [len(p.streams) for p in pipes] == [max(4 // count, 1)] * count
        for batch in want:
            assert_batches_equal(together(pipes), batch)
    # Disjoint reading: shard h packs draws k ≡ h (mod H), so within alpha's first epoch (198 training
    # documents) no document marker shows up in two processes' rows.
    pipes = processes(cfg, tok, 2)
    seen = [set(), set()]
    for _ in range(3):
        for p, pipe in enumerate(pipes):
            text = " ".join(tok.decode(row[row > 0]) for row in pipe.next_batch()["targets"])
            seen[p] |= {w for w in text.split() if w.startswith("alpha0")}
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_resume_per_process_and_on_another_process_count(corpus):
    configs, tok = corpus
    cfg = make_cfg(configs, seq_len=24)  # data.shards = 0: the process count the run starts with (2)
    pipes = processes(cfg, tok, 2)
    for _ in range(4):
        together(pipes)
    state = json.loads(json.dumps(merge_states([p.state_dict() for p in pipes])))
    assert state["shards"] == 2 and state["packed_by"] == {"0": [0], "1": [1]}
    want = [together(pipes) for _ in range(3)]
    for count in (2, 1, 4):  # the recorded two shards are kept: exact on 2, 1 or 4 processes
        resumed = processes(cfg, tok, count)
        for pipe in resumed:
            pipe.load_state_dict(state)
        for batch in want:
            assert_batches_equal(together(resumed), batch)
    with pytest.raises(DataError, match="3 processes cannot share data.shards=2"):
        DataPipeline(make_cfg(configs, seq_len=24, batch_size=6), tok, process_count=3).load_state_dict(state)
    with pytest.raises(DataError, match="set data.shards=2"):
        DataPipeline(make_cfg(configs, seq_len=24, shards=4), tok).load_state_dict(state)
    with pytest.raises(DataError, match=r"lacks the cursors of reading shard\(s\) 0"):
        processes(cfg, tok, 2)[0].load_state_dict(pipes[1].state_dict())
    # A state of the unsharded stream (version 1) resumes as one shard.
    single = DataPipeline(make_cfg(configs, seq_len=24), tok)
    single.next_batch()
    old = {"version": 1, **single.state_dict()["streams"]["0"]}
    again = DataPipeline(make_cfg(configs, seq_len=24), tok)
    again.load_state_dict(old)
    assert_batches_equal(again.next_batch(), single.next_batch())


@pytest.mark.parametrize(
    ("index", "count", "batch_size", "message"),
    [
        (2, 2, 8, r"process_index=2 is outside \[0, 2\)"),
        (0, 0, 8, r"outside \[0, 0\)"),
        (0, 3, 8, "train.batch_size=8 must be divisible by the number of processes"),
    ],
)
def test_a_bad_process_index_or_count_is_a_data_error(corpus, index, count, batch_size, message):
    configs, tok = corpus
    with pytest.raises(DataError, match=message):
        DataPipeline(make_cfg(configs, batch_size=batch_size), tok, process_index=index, process_count=count)


def test_heldout_documents_never_train_and_are_served(corpus):
    configs, tok = corpus
    pipe = DataPipeline(make_cfg(configs, heldout=3, seq_len=64), tok)
    trained = " ".join(tok.decode(row[row > 0]) for _ in range(60) for row in pipe.next_batch()["targets"])
    for i, source in enumerate(pipe.sources):
        heldout_ids = pipe.mixture.orders[i].heldout
        served = pipe.heldout_batches(source.name, 4)
        assert 1 <= len(served) <= 4 and all(b["inputs"].shape == (8, 64) for b in served)
        text = " ".join(tok.decode(row[row > 0]) for b in served for row in b["targets"])
        for d in heldout_ids:
            marker = source.document(int(d)).split()[0]
            assert marker in text and marker not in trained
        assert sum(int(b["loss_weights"].sum()) for b in served) > 0


def test_a_source_may_hold_out_its_own_number_of_documents(corpus):
    configs, tok = corpus
    own = (dataclasses.replace(configs[0], heldout_docs=5), *configs[1:])
    pipe = DataPipeline(make_cfg(own, heldout=2), tok)
    assert [len(o.heldout) for o in pipe.mixture.orders] == [5] + [2] * (len(configs) - 1)
    assert pipe.stats()[configs[0].name]["heldout_documents"] == 5
    with pytest.raises(ConfigError, match=r"heldout_docs: must be >= 0, or -1"):
        dataclasses.replace(configs[0], heldout_docs=-2)


def test_tokenizer_sample_never_draws_a_heldout_document(corpus):
    configs, tok = corpus
    cfg = make_cfg(configs, heldout=3)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer_sample_docs=10_000))
    pipe = DataPipeline(cfg, tok)
    sample = list(tokenizer_sample(cfg, pipe.sources))
    heldout = {s.document(int(d)) for s, o in zip(pipe.sources, pipe.mixture.orders) for d in o.heldout}
    assert len(heldout) == 12 and not heldout & set(sample)
    assert len(sample) == sum(len(s) for s in pipe.sources) - 12  # everything else was drawn


def test_build_pipeline_trains_a_tokenizer_that_the_run_dir_keeps(tmp_path):
    configs = write_corpus(tmp_path)
    cfg = dataclasses.replace(make_cfg(configs), model=ModelConfig(vocab_size=400, max_seq_len=64))
    run = tmp_path / "run"
    pipe = build_pipeline(cfg, str(run), prefetch=0)
    assert not run.exists()  # in memory until the run's checks pass (glam.train.loop saves it)
    assert pipe.tokenizer.vocab_size <= 400
    assert pipe.next_batch()["loss_weights"].sum() > 0
    pipe.close()
    run.mkdir()
    save_run_tokenizer(cfg, pipe.tokenizer, str(run))
    assert sorted(os.listdir(run)) == ["tokenizer.json", "tokenizer.model"]
    again = build_pipeline(cfg, str(run), prefetch=0)  # the saved one is reused, not retrained
    text = "a sentence the two must split alike"
    assert again.tokenizer.encode(text) == pipe.tokenizer.encode(text)
    again.close()


def test_run_cli_and_library_train_the_same_tokenizer(tmp_path, capsys):
    """One sampler and trainer (train_mixture_tokenizer) behind a run, `glam tokenizer train` and the library."""
    from glam.cli.main import parse

    configs = write_corpus(tmp_path)
    cfg = dataclasses.replace(make_cfg(configs), model=ModelConfig(vocab_size=400, max_seq_len=64))
    library = train_mixture_tokenizer(cfg, out_path=str(tmp_path / "lib.model"))
    pipe = build_pipeline(cfg, str(tmp_path / "run"), prefetch=0)
    pipe.close()
    sources = (
        "["
        + ", ".join(f"{{name: {c.name}, path: {c.path}, weight: {c.weight}, format: {c.format}}}" for c in configs)
        + "]"
    )
    argv = ["tokenizer", "train", "tiny", f"data.sources={sources}", "data.heldout_docs=2", "--vocab-size", "400"]
    args = parse([*argv, "--output", str(tmp_path / "cli.model")])
    assert args.func(args) == 0 and "wrote" in capsys.readouterr().out
    assert library.model_proto == pipe.tokenizer.model_proto == (tmp_path / "cli.model").read_bytes()
    assert (tmp_path / "lib.model").read_bytes() == library.model_proto
