"""A member's contributor role: seal its update for a round and check the receipt it gets back.

Whoever trains (the poll driver's trainer, or the user's ``@app.train()`` under the Flower mod)
hands over the global model it started from and the model it ended with; the contributor clips,
quantizes, encrypts, proves and signs the delta (:func:`fedlora.protocol.build_contribution`)
and, once the coordinator answers, checks the receipt, anchors its checkpoint and keeps it.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np

from fedlora._files import replace_file
from fedlora.client._member import Federation, Member
from fedlora.crypto import ObfuscatorPool
from fedlora.errors import VerificationError
from fedlora.protocol import (
    Receipt,
    RoundStatus,
    SignedContribution,
    build_contribution,
    check_receipt,
)

TRAINING_RUNS = "training-runs.json"  # how many times this member has trained, ever


def sampler_seed(seed: int, federation_id: str, client_id: str, round_number: int, run: int) -> int:
    """The seed of one training run's batch sampler: never the same twice for one client.

    With one seed for every run, a client asked to train again from the same global model (a
    failed round's next round, or a restart the coordinator answers with an old round) sends the
    same delta bit for bit; a coordinator that collects several aggregates over different
    subsets of such fixed deltas can solve for each one. ``run`` counts this client's training
    runs on disk, so even the same round from the same global draws other batches. Reproducible
    from a fresh state folder (run ``r − 1`` in round ``r``), as the benchmarks need to pair a
    plaintext FedAvg with the encrypted federation batch for batch.
    """
    material = json.dumps([seed, federation_id, client_id, round_number, run]).encode()
    return int.from_bytes(hashlib.sha256(b"fedlora-sampler\0" + material).digest()[:8], "big") >> 1


class Contributor:
    """Seals a member's updates and checks their receipts (see the module docstring)."""

    def __init__(self, member: Member, fed: Federation) -> None:
        self.member, self.fed = member, fed
        # The next round's obfuscators, computing between rounds (crypto.obfuscators_ahead).
        self._next_pool: ObfuscatorPool | None = None

    def begin(self, status: RoundStatus) -> int:
        """Record what this round trains from (before anything of it can leave: the holder
        checks aggregates against it) and return this training run's sampler seed."""
        m = self.member
        m.trained_from.record(status.round, status.global_version, status.global_digest)
        path = m.state_dir / TRAINING_RUNS
        try:
            run = int(json.loads(path.read_bytes())["runs"])
        except (OSError, ValueError, TypeError, KeyError):
            run = 0
        replace_file(path, json.dumps({"runs": run + 1}).encode())  # before the run starts
        c = m.config
        return sampler_seed(c.training.seed, c.federation_id, c.id, status.round, run)

    def sealed_rounds(self) -> set[int]:
        """The rounds this member sealed a contribution for (recorded before it could leave)."""
        return set(self.member.trained_from.rounds)

    # -- obfuscators ------------------------------------------------------------------------------
    def obfuscator_pool(self) -> ObfuscatorPool | None:
        """A started pool of one contribution's obfuscators (None without a threshold key): the
        one the last contribution started for this round, when it is for this key and size."""
        key = self.member.key
        if key is None:
            return None
        capacity = self.fed.codec.ciphertexts_for(self.fed.info.num_parameters)
        ahead, self._next_pool = self._next_pool, None
        if ahead is not None:
            if ahead.public_key == key.paillier and ahead.capacity == capacity:
                return ahead
            ahead.close()
        return ObfuscatorPool(key.paillier, capacity=capacity, backend=self.member.backend).start()

    def pool_ahead(self) -> ObfuscatorPool | None:
        """Hand over the next round's pool (started by :meth:`seal`), for a caller whose
        contributor lasts one message but whose process lasts longer (the Flower mod)."""
        ahead, self._next_pool = self._next_pool, None
        return ahead

    def keep_pool_ahead(self, pool: ObfuscatorPool | None) -> None:
        """Use ``pool`` for the next round when its key and size match (see
        :meth:`obfuscator_pool`); a pool kept before is closed."""
        ahead, self._next_pool = self._next_pool, pool
        if ahead is not None and ahead is not pool:
            ahead.close()

    def close(self) -> None:
        """Stop computing obfuscators for a round that will not come (idempotent)."""
        self.keep_pool_ahead(None)

    # -- sealing ----------------------------------------------------------------------------------
    def seal(
        self,
        status: RoundStatus,
        base: np.ndarray,
        local: np.ndarray,
        num_examples: int,
        *,
        pool: ObfuscatorPool | None,
        bars: Any = None,
    ) -> SignedContribution:
        """Seal the signed, encrypted delta ``local − base`` for the round :meth:`begin`
        started, weighted by ``num_examples`` (capped by the federation). ``pool``: the
        obfuscators (from :meth:`obfuscator_pool`), filled while the model trained; the caller
        closes it. Starts the next round's pool when ``crypto.obfuscators_ahead`` asks."""
        m, r, info = self.member, status.round, self.fed.info
        delta = local.astype(np.float64) - base.astype(np.float64)
        weight = self.fed.secure_sum.rule.weight(num_examples, info.max_weight)
        if m.config.debug.save_plaintext_deltas:
            folder = m.state_dir / "deltas"
            folder.mkdir(exist_ok=True)
            np.save(folder / f"round-{r:05d}.npy", delta)
            (folder / f"round-{r:05d}.json").write_text(json.dumps({"weight": weight}))
        sealing = bars.bar(f"{m.id} round {r}: encrypting", 1) if bars else None
        started = time.monotonic()
        sent = build_contribution(
            federation_id=m.config.federation_id,
            client_id=m.id,
            round_number=r,
            global_version=status.global_version,
            global_digest=status.global_digest,
            delta=delta,
            weight=weight,
            secure_sum=self.fed.secure_sum,
            signing_key=m.signing_key,
            obfuscators=pool,
        )
        if sealing is not None:
            sealing(1)
        if pool is not None and m.config.crypto.obfuscators_ahead and r < status.rounds_total:
            # Each obfuscator is used once; the next round's are computed while this round is
            # aggregated and decrypted, so its sealing starts warm even when training is short.
            pool.close()
            self._next_pool = self.obfuscator_pool()
        what = "ciphertexts" if self.fed.homomorphic else "values"
        m.ui.info(
            f"{m.id} round {r}: sealed {sent.header.record_count:,} {what} in "
            f"{time.monotonic() - started:.1f}s"
        )
        return sent

    def accept_receipt(self, sent: SignedContribution, receipt: Receipt) -> None:
        """Check a receipt against what was sent, anchor its checkpoint and keep it.

        Raises:
            VerificationError: a receipt that is not for this upload (also in the ledger).
        """
        m, r = self.member, sent.header.round_number
        try:
            parsed, doc = check_receipt(
                receipt,
                federation_id=m.config.federation_id,
                client_id=m.id,
                sent=sent,
                coordinator_key=m.coordinator_key,
            )
        except VerificationError as exc:
            m.ledger.record_refusal(r, "receipt", str(exc))
            raise
        m.observe_checkpoint(parsed.checkpoint, r)
        folder = m.state_dir / "receipts"
        folder.mkdir(exist_ok=True)
        (folder / f"round-{receipt.round_number:05d}.json").write_text(
            json.dumps(doc, indent=2) + "\n"
        )
