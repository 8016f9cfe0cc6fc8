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
* ``fraud_cases`` — SYNTHETIC card-fraud case descriptions as instructions for a language model
  (``{"prompt", "response"}``), one per transaction an analyst reviews. Each prompt states:

  ========================  ======================================================
  amount                    in EUR (fraud skews high)
  merchant                  one of 12 kinds; electronics, gift cards, crypto exchanges and
                            airline tickets are riskier
  channel                   chip and PIN, contactless, online (card not present), phone order
  location                  home country or a named foreign one, and the distance from home
  local time                HH:MM (fraud skews to the night)
  transactions_last_24h     earlier transactions on the card that day
  account age               days, months or years
  new device                for online payments: whether the device was seen before
  monitoring alerts         the count and names of the strong signals (amount, merchant,
                            card not present, night, abroad, velocity, new account, new
                            device), as a bank's rule engine would flag them
  ========================  ======================================================

  and asks "Is this transaction fraudulent? Answer yes or no, and why." The response reasons
  first, then decides: ``alerts: <names> (<count>) — yes: <the two strongest signals>.`` or
  ``alerts: <names> (<count>) — no: <why it looks ordinary>.``. Whether a case is fraud follows
  one shared rule (a weighted sum of all signals, weak ones too, plus noise, above a cut), so a
  model can learn it from any bank; banks differ (non-IID) in customers (a travel bank, an
  online bank, a retail bank…), so in how often each signal occurs, in their share of fraud
  among reviewed cases (20 % to 45 %) and in size (500 to 1,000 cases).
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


_MERCHANTS = (  # (kind, risk)
    ("grocery store", 0.0),
    ("fuel station", 0.1),
    ("restaurant", 0.0),
    ("pharmacy", 0.0),
    ("clothing store", 0.2),
    ("online marketplace", 0.5),
    ("hotel", 0.3),
    ("electronics store", 1.0),
    ("gift card seller", 1.4),
    ("crypto exchange", 1.4),
    ("airline tickets", 0.8),
    ("jewellery store", 0.9),
)
_CHANNELS = ("chip and PIN", "contactless", "online, card not present", "phone order")
_ABROAD = ("Spain", "Brazil", "Thailand", "the United States", "Romania", "Nigeria", "Japan")
FRAUD_QUESTION = "Is this transaction fraudulent? Answer yes or no, and why."
FRAUD_CUT = 2.9  # a case whose score (a weighted sum of its signals, plus noise) is above is fraud
FRAUD_NOISE = 0.4  # the standard deviation of the noise: what no description reveals
ALERT_WEIGHT = 0.8  # a signal at least this strong raises a monitoring alert
_COUNTS = ("none", "one", "two", "three", "four", "five", "six", "seven", "eight")


def _age(days: int) -> str:
    if days < 60:
        return f"{days} days"
    if days < 730:
        return f"{days // 30} months"
    return f"{days // 365} years"


def _fraud_case(
    rng: np.random.Generator, online: float, travel: float
) -> tuple[float, dict[str, str]]:
    """One reviewed transaction: its fraud score and its prompt and two possible responses."""
    merchant, risk = _MERCHANTS[int(rng.integers(len(_MERCHANTS)))]
    channel = int(rng.choice(4, p=[0.45 - online / 2, 0.35 - online / 2, online, 0.2]))
    abroad = bool(rng.random() < travel)
    hour, minute = int(rng.integers(0, 24)), int(rng.integers(60))
    amount = float(np.exp(rng.normal(3.6, 1.1)))
    velocity = int(rng.poisson(2))
    age = int(rng.integers(3, 4000))
    new_device = channel == 2 and bool(rng.random() < 0.3)
    km = float(np.exp(rng.normal(6.8, 1.0) if abroad else rng.normal(1.5, 1.0)))
    signals = [  # (weight, why, the alert it raises when strong)
        (1.3 * (amount > 400) + 0.8 * (amount > 1500), f"a high amount (€{amount:,.2f})", "amount"),
        (risk, f"a risky merchant ({merchant})", "merchant"),
        (1.0 * (channel in (2, 3)), "the card was not present", "card not present"),
        (1.1 * (hour < 6), f"the time of night ({hour:02d}:{minute:02d})", "night"),
        (0.9 * abroad, f"it happened abroad, {km:,.0f} km from home", "abroad"),
        (0.35 * max(0, velocity - 3), f"{velocity} transactions in 24 hours", "velocity"),
        (1.2 * (age < 90), f"a new account ({_age(age)})", "new account"),
        (1.0 * new_device, "a device never seen before", "new device"),
    ]
    score = sum(w for w, _, _ in signals) + float(rng.normal(0, FRAUD_NOISE))
    alerts = [name for w, _, name in signals if w >= ALERT_WEIGHT]
    place = _ABROAD[int(rng.integers(len(_ABROAD)))] if abroad else "home country"
    lines = [
        "Card transaction to review.",
        f"Amount: €{amount:,.2f}.",
        f"Merchant: {merchant}.",
        f"Channel: {_CHANNELS[channel]}.",
        f"Location: {place}, {km:,.0f} km from the card holder's home.",
        f"Local time: {hour:02d}:{minute:02d}.",
        f"Transactions on this card in the last 24 hours: {velocity}.",
        f"Account age: {_age(age)}.",
    ]
    if channel == 2:
        lines.append(f"Device: {'never seen before' if new_device else 'used before'}.")
    lines.append(f"Monitoring alerts ({len(alerts)}): {', '.join(alerts) or 'none'}.")
    lines.append(FRAUD_QUESTION)
    # The reasoning comes first (the alerts and how many), the decision after it, then why: a
    # small model decides far better from its own count than from the first word it writes.
    reasoning = f"alerts: {', '.join(alerts) or 'none'} ({_COUNTS[len(alerts)]})"
    strongest = [why for w, why, _ in sorted(signals, key=lambda s: -s[0]) if w > 0][:2]
    ordinary = "in-store" if channel in (0, 1) else "remote"
    return score, {
        "prompt": " ".join(lines),
        "yes": f"{reasoning} — yes: " + (" and ".join(strongest) or "an unusual pattern") + ".",
        "no": f"{reasoning} — no: "
        + (
            f"an ordinary {ordinary} purchase of €{amount:,.2f} ({merchant})"
            if not alerts
            else f"a {ordinary} purchase of €{amount:,.2f} ({merchant}) with too little against it"
        )
        + ", in line with the account.",
    }


def fraud_cases(banks: int, rows: int, seed: int) -> list[list[dict[str, str]]]:
    """SYNTHETIC card-fraud cases per bank as ``{"prompt", "response"}`` instructions (see the
    module doc). Bank ``b`` of ``banks`` has ``rows · (2 + 2b / (banks − 1)) / 3`` cases:
    ``rows`` on average, 500 to 1,000 across the banks for ``rows`` 750."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(banks):
        n = int(rows * (2 + 2 * b / max(1, banks - 1)) / 3)
        share = 0.2 + 0.25 * b / max(1, banks - 1)  # fraud among reviewed cases: 20 % to 45 %
        online = 0.2 + 0.5 * ((b + 1) % 3 == 0)  # an online bank sees more card-not-present
        travel = 0.1 + 0.35 * (b % 2)  # a travel bank sees more foreign payments
        # One rule for every bank (score above FRAUD_CUT); a bank's share of fraud among the
        # cases it reviews is its own (label skew): it reviews that many of each.
        wanted = {True: round(n * share), False: n - round(n * share)}
        kept: list[tuple[int, dict[str, str]]] = []
        while wanted[True] or wanted[False]:
            score, case = _fraud_case(rng, online, travel)
            fraud = score > FRAUD_CUT
            if wanted[fraud]:
                wanted[fraud] -= 1
                response = case["yes"] if fraud else case["no"]
                kept.append(
                    (int(rng.integers(1 << 30)), {"prompt": case["prompt"], "response": response})
                )
        out.append([record for _, record in sorted(kept, key=lambda k: k[0])])
    return out


def write_instructions(path: Path, records: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


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
