"""Demo data tests: size, intents, variety, drifted variants."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from demo.data import INTENTS, NEW_INTENTS, NEW_PRODUCTS, write_demo_data


def test_demo_data_is_big_varied_and_drifts(tmp_path: Path) -> None:
    paths = write_demo_data(tmp_path, seed=3)
    train = pd.read_csv(paths["train"])
    assert len(train) >= 1000
    assert train["label"].nunique() >= 8 and set(train["label"]) <= set(INTENTS)
    assert train["text"].nunique() > 0.8 * len(train)
    assert train["label"].value_counts().min() > 50
    new = pd.read_csv(paths["drift_new_intents"])
    assert set(NEW_INTENTS) <= set(new["label"])
    products = pd.read_csv(paths["drift_new_products"])
    assert products["text"].str.contains("|".join(NEW_PRODUCTS), case=False).mean() > 0.2
    typos = pd.read_csv(paths["drift_typos"])
    vocabulary = {w.lower() for t in train["text"] for w in t.split()}

    def unseen(frame: pd.DataFrame) -> int:
        return sum(w.lower() not in vocabulary for t in frame["text"] for w in t.split())

    assert unseen(typos) > 3 * unseen(pd.read_csv(paths["traffic"]))


def test_demo_data_is_deterministic(tmp_path: Path) -> None:
    a = pd.read_csv(write_demo_data(tmp_path / "a", seed=5)["train"])
    b = pd.read_csv(write_demo_data(tmp_path / "b", seed=5)["train"])
    assert a.equals(b)
