"""The on-domain corpus of ``bench probing`` (``saelens_lite.evals.probing.corpus``, ``saelens-lite
bench probing-corpus``): the training-split texts of the probing datasets and no test text, each
once, in a seeded order, readable by ``harvest``; bad input writes nothing."""

import json

import numpy as np
import pandas as pd
import pytest

from saelens_lite.cli import main
from saelens_lite.evals.probing import data
from saelens_lite.evals.probing.corpus import train_texts

pytestmark = pytest.mark.usefixtures("one_thread")


def _datasets(folder, n=60):
    """Two binary datasets that share texts (as the one-vs-rest sets do), with repeats inside each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shared = [f"shared text {i}" for i in range(30)]
    a = [(f"alpha {int(rng.integers(0, 40))}", int(i % 2)) for i in range(n)] + [(t, i % 2) for i, t in enumerate(shared)]
    b = [(f"beta {i}", "yes" if i % 2 else "no") for i in range(n)] + [(t, "yes") for t in shared]
    for name, rows in (("1_a", a), ("2_b", b)):
        pd.DataFrame(rows, columns=["prompt", "target"]).to_csv(folder / f"{name}.csv", index=False)
    return folder


def _read(path):
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_corpus_is_the_train_splits_minus_every_test_text_each_once(tmp_path):
    folder = _datasets(tmp_path / "d")
    kw = dict(max_examples=70, test_fraction=0.25, seed=3)
    texts, counts = train_texts(["1_a", "2_b"], data_dir=folder, **kw)
    # the oracle: the split bench probing draws, text by text
    train, test = [], set()
    for name in ("1_a", "2_b"):
        ds = data.load_dataset(name, folder)
        tr, te = data.split_indices(ds.y_N, **kw)
        train += [ds.texts[i] for i in tr]
        test |= {ds.texts[i] for i in te}
    want = set(train) - test
    assert set(texts) == want and len(texts) == len(want)  # no test text, each kept text once
    assert test & set(train), "the fixture should put a test text of one dataset in a training split"
    assert counts == {"datasets": 2, "train_texts": len(train),
                      "dropped_in_a_test_split": sum(t in test for t in train),
                      "duplicates": sum(t not in test for t in train) - len(want), "texts": len(want)}
    assert counts["duplicates"] > 0 and counts["dropped_in_a_test_split"] > 0
    # seeded order: the same seed gives the same list; it is not the datasets' order
    assert train_texts(["1_a", "2_b"], data_dir=folder, **kw)[0] == texts
    assert texts != [t for t in dict.fromkeys(train) if t not in test]
    other, _ = train_texts(["1_a", "2_b"], data_dir=folder, **{**kw, "seed": 4})
    assert set(other) != set(texts)  # another seed is another split


def test_cli_writes_the_corpus_and_harvest_reads_it(tmp_path, capsys):
    from saelens_lite.cache import ActivationCache

    folder = _datasets(tmp_path / "d")
    out = tmp_path / "corpus.jsonl"
    assert main(["bench", "probing-corpus", "--out", str(out), "--data-dir", str(folder), "--min-per-class", "30",
                 "--max-examples", "70", "--seed", "3"]) == 0
    texts, counts = train_texts(["1_a", "2_b"], max_examples=70, test_fraction=0.25, seed=3, data_dir=folder)
    assert _read(out) == texts
    assert f"wrote {counts['texts']} texts from 2 datasets" in capsys.readouterr().out
    assert main(["harvest", "--model", "tiny-llama", "--hooks", "blocks.1.hook_resid_post", "--dataset", str(out),
                 "--tokens", "300", "--context-size", "32", "--out", str(tmp_path / "acts")]) == 0
    cache = ActivationCache(tmp_path / "acts")
    assert cache.activations("blocks.1.hook_resid_post").shape[0] >= 300


@pytest.mark.parametrize("case, needle", [("unknown dataset", "'9_nope'"), ("suffix", "give a .jsonl file"),
                                          ("fraction", "test_fraction=1.5")])
def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, capsys, case, needle):
    folder = _datasets(tmp_path / "d")
    out = tmp_path / ("corpus.txt" if case == "suffix" else "corpus.jsonl")
    argv = ["bench", "probing-corpus", "--out", str(out), "--data-dir", str(folder), "--datasets", "1_a"]
    argv += {"unknown dataset": ["9_nope"], "suffix": [], "fraction": ["--test-fraction", "1.5"]}[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert list(tmp_path.iterdir()) == [folder]
