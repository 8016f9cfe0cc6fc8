from __future__ import annotations

import numpy as np

from fedlora.client import load_csv, load_text
from fedlora.datasets import (
    BANK_COLUMNS,
    bank_transactions,
    breast_cancer_split,
    clinical_notes,
    write_tabular,
    write_text,
)


def test_bank_data_is_imbalanced_non_iid_and_reproducible(tmp_path) -> None:
    parts = bank_transactions(3, 2000, seed=4)
    rates = [y.mean() for _, y in parts]
    assert (
        all(0.005 < r < 0.08 for r in rates) and rates[0] < rates[-1]
    )  # imbalanced, differs by bank
    assert len({len(y) for _, y in parts}) == 3  # different sizes
    assert np.array_equal(parts[0][0], bank_transactions(3, 2000, seed=4)[0][0])
    write_tabular(tmp_path / "b.csv", *parts[0], BANK_COLUMNS)
    x, labels = load_csv(tmp_path / "b.csv", "label", 2)
    assert x.shape == (len(parts[0][1]), len(BANK_COLUMNS)) and np.allclose(
        x, parts[0][0], rtol=1e-5
    )
    assert np.array_equal(labels, parts[0][1])


def test_breast_cancer_split_covers_every_patient_once() -> None:
    parts = breast_cancer_split(3, seed=0)
    assert sum(len(y) for _, y in parts) == 569
    assert all(x.shape[1] == 30 for x, _ in parts)


def test_clinical_notes_round_trip_through_jsonl(tmp_path) -> None:
    texts, y = clinical_notes(2, 50, seed=1)[1]
    write_text(tmp_path / "n.jsonl", texts, y)
    got_texts, got_y = load_text(tmp_path / "n.jsonl", "text", "label", 2)
    assert got_texts == texts and np.array_equal(got_y, y)
