"""Preprocessing: tokenisation round trip, UNK accounting, fixed normalisation, bad tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlfastsim.belle2.config import PreprocessConfig
from mlfastsim.belle2.preprocess import (
    CLOSE,
    NONE,
    OPEN,
    UNK,
    Vocabulary,
    decay_string,
    decay_tokens,
    encode_events,
    parse_decay_tokens,
    preprocess_file,
)
from mlfastsim.belle2.produce import EventFile
from mlfastsim.core.errors import ConfigError, DataError, InputFileError


def test_outputs_have_the_documented_shapes(preprocessed: Path, events_file: Path) -> None:
    summary = json.loads((preprocessed / "preprocess.json").read_text())
    n = summary["events"]
    assert n == 240 and summary["unknown_pdg_count"] == 0
    assert np.load(preprocessed / "particle.npy").shape == (n, 100, 12)
    assert np.load(preprocessed / "decay.npy").shape == (n, 150)
    y = np.load(preprocessed / "y.npy")
    labels = pd.read_hdf(events_file, "events")["label"].to_numpy()
    assert np.array_equal(y, labels.astype(np.float32))
    pdg = np.load(preprocessed / "pdg.npy")
    mother_pdg = np.load(preprocessed / "mother_pdg.npy")
    assert np.all(mother_pdg[:, 0] == NONE) and np.all(pdg[:, 0] > CLOSE)  # the Upsilon(4S) has no mother
    feats = np.load(preprocessed / "particle.npy")
    valid = pdg > 0
    assert np.allclose(feats[valid][:, 9:].sum(axis=1), 1.0)  # charge one-hot
    assert np.all(feats[~valid] == 0)  # padding


def test_tokenisation_round_trip(events_file: Path) -> None:
    vocab = Vocabulary.from_decay_table()
    with EventFile(events_file) as ef:
        df, offsets = ef.particles(0, 30)
    tokens, _ = vocab.encode(df["pdg"].to_numpy())
    assert np.array_equal(vocab.decode(tokens), df["pdg"].to_numpy())
    mother = df["mother_index"].to_numpy()
    for e in range(30):
        a, b = offsets[e], offsets[e + 1]
        seq, cut = decay_tokens(tokens[a:b], mother[a:b], 400)
        assert not cut
        toks, mothers = parse_decay_tokens(seq)
        # the parse is depth first; map it back to the tree and compare (pdg, mother pdg, #daughters)
        original = sorted(zip(tokens[a:b].tolist(), [tokens[a + m] if m >= 0 else -1 for m in mother[a:b]],
                              strict=True))
        parsed = sorted(zip(toks, [toks[m] if m >= 0 else -1 for m in mothers], strict=True))
        assert original == parsed
        assert len(toks) == b - a
    text = decay_string(seq, vocab)
    assert text.startswith("Upsilon(4S) (B") and text.count("(") > 2


def test_unknown_pdg_becomes_unk_and_is_counted(events_file: Path) -> None:
    vocab = Vocabulary.from_decay_table()
    with EventFile(events_file) as ef:
        df, offsets = ef.particles(0, 3)
    df = df.copy()
    df.iloc[3, df.columns.get_loc("pdg")] = 9999999
    arrays, stats = encode_events(df, offsets, vocab, 100, 150)
    assert stats["unknown_pdg_count"] >= 1 and 9999999 in stats["unknown_pdg_codes"]
    assert arrays["pdg"][0, 3] == UNK
    assert UNK in arrays["decay"][0]


def test_truncation_is_counted(events_file: Path) -> None:
    vocab = Vocabulary.from_decay_table()
    with EventFile(events_file) as ef:
        df, offsets = ef.particles(0, 5)
    arrays, stats = encode_events(df, offsets, vocab, 10, 12)
    assert arrays["particle"].shape == (5, 10, 12) and arrays["decay"].shape == (5, 12)
    assert stats["truncated_particles"] == 5 and stats["truncated_decay_strings"] == 5


def test_decay_tokens_small_tree() -> None:
    # A -> (B -> d e) c
    seq, cut = decay_tokens(np.array([10, 11, 12, 13, 14]), np.array([-1, 0, 0, 1, 1]), 12)
    assert seq.tolist()[:9] == [10, OPEN, 11, OPEN, 13, 14, CLOSE, 12, CLOSE] and not cut


def test_missing_columns_nan_and_bad_keys(events_file: Path, tmp_path: Path) -> None:
    parts = pd.read_hdf(events_file, "particles")
    events = pd.read_hdf(events_file, "events")
    bad = tmp_path / "nocharge.h5"
    parts.drop(columns=["charge"]).to_hdf(bad, key="particles", format="table")
    events.to_hdf(bad, key="events", format="table")
    with pytest.raises(InputFileError, match="charge"):
        preprocess_file(PreprocessConfig(input=bad, output_dir=tmp_path / "o"), progress=False)
    nan = tmp_path / "nan.h5"
    p2 = parts.copy()
    p2.loc[p2.index[5], "px_mev"] = np.nan
    p2.to_hdf(nan, key="particles", format="table")
    events.to_hdf(nan, key="events", format="table")
    with pytest.raises(DataError, match="px_mev"):
        preprocess_file(PreprocessConfig(input=nan, output_dir=tmp_path / "o2"), progress=False)
    assert not (tmp_path / "o2" / "particle.npy").exists()  # nothing half-written
    with pytest.raises(ConfigError, match="charge_pdg"):
        preprocess_file(PreprocessConfig(input=events_file, output_dir=tmp_path / "o3", keys=["charge_pdg"]),
                        progress=False)
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(InputFileError, match="not a readable HDF5"):
        preprocess_file(PreprocessConfig(input=text, output_dir=tmp_path / "o4"), progress=False)
