"""A bank's or hospital's client: the poll driver that works through the federation's rounds.

It polls the round's status and does what each stage asks, through the two roles a member plays:
:class:`fedlora.client._contributor.Contributor` (train from the round's global version, seal,
upload, check the receipt) and :class:`fedlora.client._holder.Holder` (check the aggregate, sign
its ticket, release a proven partial decryption). Who the member is and what it keeps (keys,
ledger, anchored checkpoint, kept versions) is :class:`fedlora.client._member.Member`; the wire
is a :class:`fedlora.client.Transport`; what the operator sees is
:class:`fedlora.client._ui.Reporter`. The Flower mod calls the same two roles directly.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console

from fedlora._files import StateLock
from fedlora.client._contributor import Contributor, sampler_seed
from fedlora.client._holder import Holder
from fedlora.client._ledger import AnchorError
from fedlora.client._member import Federation, Member
from fedlora.client._models import version_folder
from fedlora.client._spec import federation_spec
from fedlora.client._transport import Transport
from fedlora.client._ui import Reporter
from fedlora.config import ClientConfig
from fedlora.crypto import ModexpBackend
from fedlora.errors import (
    CryptoError,
    ProtocolError,
    RemoteError,
    TransportError,
    VerificationError,
)
from fedlora.protocol import RoundStatus, SignedContribution, Stage

if TYPE_CHECKING:
    from fedlora.client._training import LocalTrainer

__all__ = ["Client", "Federation", "sampler_seed"]


class Client:
    """One member, its trainer and its transport, driven round by round (see the module
    docstring). ``contributor`` and ``holder`` exist once it has joined; ``holder`` only when
    this member holds a key share of an encrypted federation."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        trainer: LocalTrainer | None = None,
        console: Console | None = None,
        transport: Transport | None = None,
        backend: ModexpBackend | None = None,
    ) -> None:
        self.config = config
        if trainer is None:
            from fedlora.client._training import make_trainer  # torch: the [client] extra

            trainer = make_trainer(config)
        self.trainer = trainer
        self.ui = Reporter(console)
        if transport is None:
            from fedlora.client._connect import connect  # grpc only when networked

            transport = connect(config, self.ui.warn)
        self.transport = transport
        self.member = Member(config, transport, console=self.ui.console, backend=backend)
        self.state_dir = config.state_dir
        self.fed: Federation | None = None
        self.contributor: Contributor | None = None
        self.holder: Holder | None = None
        self._kept_version, self._kept_final = 0, False

    # -- joining ---------------------------------------------------------------------------------
    def join(self) -> Federation:
        """Join the federation: fetch its announcement and check it against this client's files
        and its model (the federation spec from the trainer's model)."""
        fed = self.member.join(
            federation_spec(self.config, self.trainer), self.trainer.num_parameters
        )
        info = fed.info
        if not info.spec_json:
            self.ui.warn(
                f"{self.config.id}: the federation announces no model spec, so only the parameter "
                "count is compared at join (a member with another base model or LoRA seed would "
                "go unnoticed); its coordinator YAML should name one in model.spec (`fedlora model "
                "template` writes it)"
            )
        if 1 < info.max_weight < self.trainer.num_examples:  # max_weight 1: unweighted on purpose
            self.ui.warn(
                f"{self.config.id}: {self.trainer.num_examples} local examples, but the federation caps a "
                f"contribution's weight at {info.max_weight} (codec.max_weight); this client is weighted "
                f"{info.max_weight}"
            )
        self.fed = fed
        self.contributor = Contributor(self.member, fed)
        self.holder = Holder(self.member, fed) if fed.policy is not None else None
        # Read the log before anything is sent: the announcement must be what it records.
        self.keep_models(0)
        return fed

    # -- the round loop --------------------------------------------------------------------------
    def run(self) -> int:
        """Work through the federation until it finishes; one instance per state folder."""
        lock = StateLock(self.state_dir, "fedlora client")
        try:
            return self._run()
        finally:
            self.close()
            lock.release()

    def close(self) -> None:
        """Stop computing obfuscators for a round that will not come (idempotent)."""
        if self.contributor is not None:
            self.contributor.close()

    def keep_models(self, round_number: int, rounds_total: int | None = None) -> None:
        """Keep every newly published global version, verified against the anchored log (in
        the trainer's own format too, where it has one).

        Raises:
            VerificationError: the coordinator's log or download is not what it signed (the
                refusal is also written to this client's ledger).
        """
        total = (
            rounds_total
            if rounds_total is not None
            else (self.fed.info.rounds if self.fed else round_number)
        )
        self.member.keep_models(
            round_number,
            num_parameters=self.trainer.num_parameters,
            max_version=max(total, round_number),
            save=getattr(self.trainer, "save_adapter", None),
        )

    def _run(self) -> int:
        fed = self.join()
        seen_done: set[tuple[int, str]] = set()
        waiting = -1
        while True:
            status = self.transport.round_status()
            if status.stage is Stage.FINISHED:
                self.step(fed, status, seen_done)  # keeps the final version
                vector = self.member.download_global(status.global_version, status.global_digest)
                folder = version_folder(self.state_dir, status.global_version)
                where = (
                    f"kept in {folder}"
                    if (folder / "final.json").exists()
                    else "not kept (no verified end)"
                )
                self.ui.info(
                    f"{self.config.id}: federation finished after {status.rounds_total} rounds; global adapter "
                    f"v{status.global_version} {status.global_digest.hex()[:16]}… {where}, local "
                    f"{getattr(self.trainer, 'metric_name', 'accuracy')} "
                    f"{self.trainer.evaluate(vector):.3f}"
                )
                return 0
            if status.stage is Stage.WAITING and len(status.joined) != waiting:
                waiting = len(status.joined)
                self.ui.info(
                    f"{self.config.id}: waiting for {status.min_clients} parties to join before round 1 "
                    f"({waiting} joined: {', '.join(status.joined)})"
                )
            try:
                self.step(fed, status, seen_done)
            except RemoteError as exc:
                if exc.reason is not ProtocolError:
                    raise
                # The round moved on between our status poll and this call: normal, carry on.
                self.ui.info(f"{self.config.id}: round {status.round} moved on ({exc})")
            time.sleep(self.config.retry.poll_interval_s)

    def step(self, fed: Federation, status: RoundStatus, seen_done: set[tuple[int, str]]) -> None:
        """Do what the round's stage asks of this client, once.

        Every newly published global version (and the final one) is kept first, verified
        against the anchored audit log (:mod:`fedlora.client._models`).
        """
        if status.global_version != self._kept_version or (
            status.stage is Stage.FINISHED and not self._kept_final
        ):
            self.keep_models(status.round, status.rounds_total)
            self._kept_version = status.global_version
            self._kept_final = status.stage is Stage.FINISHED
        if status.stage is Stage.COLLECTING and not status.contributed:
            self.contribute(fed, status)
        elif (
            self.holder is not None
            and (status.round, "decrypt") not in seen_done
            and (
                (status.stage is Stage.TICKETING and not status.ticket_signed)
                or (status.stage is Stage.DECRYPTING and not status.partial_submitted)
            )
        ):
            try:
                if self.holder.decrypt(status.round):
                    seen_done.add((status.round, "decrypt"))
            except (VerificationError, CryptoError) as exc:
                if isinstance(exc, AnchorError):
                    raise
                seen_done.add((status.round, "decrypt"))
                self.ui.error(f"{self.config.id}: refusing to decrypt round {status.round}: {exc}")

    def seal(self, status: RoundStatus, bars: Any = None) -> SignedContribution:
        """Train from the round's global version and seal the signed, encrypted delta.

        The obfuscators are computed in the background while the model trains."""
        contributor = self.contributor
        assert contributor is not None, "join first"
        r, info = status.round, contributor.fed.info
        started = time.monotonic()
        base = self.member.download_global(status.global_version, status.global_digest)
        self.trainer.reseed(contributor.begin(status))
        pool = contributor.obfuscator_pool()
        try:
            bar = (
                bars.bar(f"{self.config.id} round {r}: training", info.aggregation_frequency)
                if bars is not None
                else None
            )
            steps = 0

            def on_step() -> None:
                nonlocal steps
                steps += 1
                if bar is not None:
                    bar(steps)

            local = self.trainer.train(base, info.aggregation_frequency, on_step=on_step)
            self.ui.info(
                f"{self.config.id} round {r}: trained {info.aggregation_frequency} steps in "
                f"{time.monotonic() - started:.1f}s"
            )
            return contributor.seal(
                status, base, local, self.trainer.num_examples, pool=pool, bars=bars
            )
        finally:
            if pool is not None:
                pool.close()

    def contribute(self, fed: Federation, status: RoundStatus) -> None:
        """Train, seal, upload and check the receipt: this client's part of a round."""
        contributor = self.contributor
        assert contributor is not None, "join first"
        started = time.monotonic()
        r = status.round
        with self.ui.stages() as bars:
            sent = self.seal(status, bars)
            upload = bars.bar(f"{self.config.id} round {r}: uploading", len(sent.records))
            try:
                receipt = self.transport.upload_contribution(sent.header, sent.records, upload)
            except RemoteError as exc:
                if exc.reason is ProtocolError:  # the round moved on: normal, not a fault
                    self.ui.info(
                        f"{self.config.id} round {r}: the round closed before this "
                        f"contribution arrived; it takes part in the next round ({exc})"
                    )
                else:
                    self.ui.error(f"{self.config.id} round {r}: contribution refused: {exc}")
                return
            except TransportError as exc:  # the next status poll retries or gives up
                self.ui.error(f"{self.config.id} round {r}: contribution not delivered: {exc}")
                return
        contributor.accept_receipt(sent, receipt)
        self.ui.info(
            f"{self.config.id} round {r}: sent {len(sent.records) / 1e6:.2f} MB, receipt at audit "
            f"entry {receipt.log_index}, {time.monotonic() - started:.1f}s in all"
        )
