"""Workload data for demos and benchmarks: generated or shipped offline, split non-IID.

* ``bank_transactions`` — SYNTHETIC card transactions for fraud detection (no real customer is in
  it). Schema, one row per transaction:

  ========================  ======================================================
  amount                    ln(1 + transaction amount in EUR) (fraud skews high)
  hour                      local hour of day, 0–23 (fraud skews to the night)
  merchant_category         merchant category code 0–9 (7–9: electronics, travel, gift cards)
  distance_from_home_km     ln(1 + km between the card holder's home and the merchant)
  transactions_last_24h     number of earlier transactions on the card in the last day
  card_present              1 if the card was physically present, else 0
  foreign                   1 if the merchant is abroad, else 0
  account_age_days          age of the account
  label                     1 = fraud, 0 = legitimate (about 3% overall, different per bank)
  ========================  ======================================================

  Banks differ (non-IID): customer profiles, fraud rates and dataset sizes.
* ``breast_cancer_split`` — the real Wisconsin diagnostic breast-cancer data that scikit-learn
  ships offline (569 patients, 30 features; label 1 = malignant), split across hospitals with
  label skew.
* ``clinical_notes`` — SYNTHETIC short clinical notes (text, label): 1 = cardiac work-up needed,
  0 = respiratory or other, written from templates with shared and misleading vocabulary.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

BANK_COLUMNS = (
    "amount",
    "hour",
    "merchant_category",
    "distance_from_home_km",
    "transactions_last_24h",
    "card_present",
    "foreign",
    "account_age_days",
)


def bank_transactions(banks: int, rows: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """SYNTHETIC transactions per bank: features (rows × 8) and fraud labels."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(banks):
        n = int(rows * (0.5 + b / max(1, banks - 1)))  # 0.5x to 1.5x rows
        fraud_rate = 0.015 + 0.03 * b / max(1, banks - 1)  # 1.5% to 4.5%
        travel = 0.1 + 0.3 * (b % 2)  # some banks serve travellers: more foreign, far transactions
        y = (rng.random(n) < fraud_rate).astype(np.int64)
        f = y == 1
        amount = np.exp(rng.normal(3.5, 1.0, n) + 1.2 * f)
        hour = np.where(f & (rng.random(n) < 0.6), rng.integers(0, 6, n), rng.integers(7, 23, n))
        category = np.where(
            f & (rng.random(n) < 0.5), rng.integers(7, 10, n), rng.integers(0, 10, n)
        )
        foreign = (rng.random(n) < travel + 0.35 * f).astype(np.int64)
        distance = np.exp(rng.normal(1.5 + 2.0 * foreign + 1.0 * f, 1.0, n))
        velocity = rng.poisson(2 + 4 * f)
        present = (rng.random(n) < 0.7 - 0.55 * f).astype(np.int64)
        age = np.maximum(1, rng.normal(1500 - 900 * f, 600, n)).astype(np.int64)
        x = np.stack(
            [amount, hour, category, distance, velocity, present, foreign, age], axis=1
        ).astype(np.float32)
        # Heavy-tailed money and distance are log-scaled, as any fraud model would.
        x[:, 0] = np.log1p(x[:, 0])
        x[:, 3] = np.log1p(x[:, 3])
        out.append((x, y))
    return out


def breast_cancer_split(
    hospitals: int, seed: int, alpha: float = 1.0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The Wisconsin breast-cancer data (scikit-learn, offline), split with Dirichlet label skew."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x, y = data.data.astype(np.float32), 1 - data.target.astype(np.int64)  # 1 = malignant
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(hospitals)]
    for label in (0, 1):
        idx = rng.permutation(np.nonzero(y == label)[0])
        shares = rng.dirichlet([alpha] * hospitals)
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for h, chunk in enumerate(np.split(idx, cuts)):
            parts[h].extend(chunk.tolist())
    return [(x[np.array(p)], y[np.array(p)]) for p in parts]


_CARDIAC = [
    "chest pain radiating to the left arm",
    "palpitations",
    "shortness of breath on exertion",
    "syncope while climbing stairs",
    "elevated troponin",
    "ST elevation on ECG",
    "ankle swelling",
]
_OTHER = [
    "productive cough",
    "fever and chills",
    "wheezing",
    "sore throat",
    "runny nose",
    "shortness of breath at rest with fever",
    "chest tightness after a cold",
]
_CONTEXT = [
    "History of hypertension.",
    "Smoker.",
    "No known allergies.",
    "Diabetic.",
    "Recently travelled.",
    "Family history of heart disease.",
    "Asthma since childhood.",
    "",
]


def clinical_notes(hospitals: int, rows: int, seed: int) -> list[tuple[list[str], np.ndarray]]:
    """SYNTHETIC clinical notes per hospital; label 1 = cardiac work-up needed."""
    rng = np.random.default_rng(seed)
    out = []
    for hsp in range(hospitals):
        n = int(rows * (0.5 + hsp / max(1, hospitals - 1)))
        cardiac_rate = 0.2 + 0.4 * hsp / max(1, hospitals - 1)  # a cardiology centre sees more
        y = (rng.random(n) < cardiac_rate).astype(np.int64)
        texts = []
        for label in y:
            own, other = (_CARDIAC, _OTHER) if label else (_OTHER, _CARDIAC)
            findings = list(rng.choice(own, 2, replace=False))
            if rng.random() < 0.3:
                findings.append(str(rng.choice(other)))  # misleading symptom
            rng.shuffle(findings)
            age = int(rng.integers(25, 90))
            texts.append(
                f"{age}-year-old presenting with {', '.join(findings)}. {rng.choice(_CONTEXT)}".strip()
            )
        out.append((texts, y))
    return out


def write_tabular(
    path: Path, x: np.ndarray, y: np.ndarray, columns: tuple[str, ...] | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns) if columns else [f"f{i}" for i in range(x.shape[1])]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*names, "label"])
        for row, label in zip(x, y):
            writer.writerow([*(f"{v:.6g}" for v in row), int(label)])


def write_text(path: Path, texts: list[str], y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for text, label in zip(texts, y):
            fh.write(json.dumps({"text": text, "label": int(label)}) + "\n")
