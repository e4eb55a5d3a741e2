"""Property tests that complete the existing ones (packing: test_data_packing, tokenizer round trip:
test_data_tokenizer, gating: test_gating_properties):

- the mixture's state, saved at any point and reloaded into a fresh mixture, continues the stream
  exactly (what a resumed run relies on), and the stream does not depend on how it is chunked;
- a metrics.jsonl cut at any byte (a process killed mid-write) and then trimmed to a checkpoint step
  holds exactly the whole records up to that step.
"""

from __future__ import annotations

import json
import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from glam.data.mixture import Mixture
from glam.data.sources import SourceStats
from glam.train.metrics import METRICS_FILE, read_metrics, trim_metrics


class ListSource:
    """An in-memory stand-in for glam.data.sources.Source: documents of varied lengths."""

    def __init__(self, name: str, weight: float, num_docs: int, seed: int):
        rng = np.random.default_rng(seed)
        self.name, self.weight, self.stats, self.heldout_docs = name, weight, SourceStats(), -1
        self.docs = [f"{name}{k}:" + "x" * int(rng.integers(0, 40)) for k in range(num_docs)]

    def __len__(self) -> int:
        return len(self.docs)

    def document(self, k: int) -> str:
        return self.docs[k]


def encode(text: str) -> list[int]:
    return [4 + ord(c) % 60 for c in text]


def make_mixture(seed: int, weights: list[float], seq_len: int) -> Mixture:
    sources = [ListSource(f"s{i}", w, 3 + 2 * i, seed=i) for i, w in enumerate(weights)]
    return Mixture(sources, encode, seq_len=seq_len, seed=seed, heldout_docs=1, bos_id=2, eos_id=3)


mixtures = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "weights": st.lists(st.floats(0.05, 10.0), min_size=1, max_size=4),
        "seq_len": st.integers(2, 24),
    }
)


@settings(max_examples=60, deadline=None)
@given(spec=mixtures, before=st.integers(0, 40), chunks=st.lists(st.integers(1, 7), min_size=1, max_size=5))
def test_mixture_state_round_trip_continues_exactly(spec, before, chunks):
    first = make_mixture(**spec)
    if before:
        first.next_rows(before)
    state = json.loads(json.dumps(first.state_dict()))  # as saved beside a checkpoint
    resumed = make_mixture(**spec)
    resumed.load_state_dict(state)
    for n in chunks:
        (want, want_src), (got, got_src) = first.next_rows(n), resumed.next_rows(n)
        np.testing.assert_array_equal(got_src, want_src)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert resumed.state_dict() == first.state_dict()
    assert resumed.stats() == first.stats()


@settings(max_examples=40, deadline=None)
@given(spec=mixtures, chunks=st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_mixture_stream_does_not_depend_on_chunking(spec, chunks):
    chunked = make_mixture(**spec)
    rows = [chunked.next_rows(n)[0]["targets"] for n in chunks]
    whole = make_mixture(**spec).next_rows(sum(chunks))[0]["targets"]
    np.testing.assert_array_equal(np.concatenate(rows), whole)


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 12), cut=st.floats(0.0, 1.0), resume=st.integers(0, 12))
def test_metrics_cut_anywhere_then_trimmed_to_a_checkpoint(tmp_path_factory, steps, cut, resume):
    run_dir = str(tmp_path_factory.mktemp("metrics"))
    records = [{"kind": "eval", "step": 0, "heldout/mean": 7.0}]
    records += [
        {"kind": "train", "step": s, "loss": 7.0 - s / 10, "expert_load": [[0.125] * 8]} for s in range(1, steps + 1)
    ]
    text = "".join(json.dumps(r) + "\n" for r in records).encode()
    path = os.path.join(run_dir, METRICS_FILE)
    with open(path, "wb") as f:
        f.write(text[: int(len(text) * cut)])  # killed after this many bytes
    survived = read_metrics(run_dir)  # never fails on the torn last line
    assert survived == records[: len(survived)]
    resume = min(resume, survived[-1]["step"]) if survived else 0  # a checkpoint the run had logged
    trim_metrics(run_dir, resume)
    expected = [r for r in records if resume > 0 and r["step"] <= resume]
    assert read_metrics(run_dir) == expected
    with open(path, "rb") as f:
        assert f.read() == "".join(json.dumps(r) + "\n" for r in expected).encode()
