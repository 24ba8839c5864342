"""The featurization job's driver: one run, read as the list of its phases.

Recover (`recovery`), drain the images queue, drop images already committed (`index`), featurize in the executors
(`tasks`), refit the exact PCA, retrain the classifier and score it on the holdout (`pomona.ml.training`), project,
then commit (`commit`) and delete the messages. One run at a time (`lock`), its messages kept invisible and its lease
alive by a heartbeat (`queue`) from recovery on, and a watchdog (`liveness`) stops it past its deadline. The model
is the committed lineage's (`lineage`); the manifest is put together in `manifest`; the messages the run holds are
settled, or given back after a failure, by `held`. Each image's outcome is its own value (`outcome`): committed,
quarantined with a reason, or deferred (its message left for redelivery); one image never fails the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from pomona.core.aws import RETRIES, error_code
from pomona.core.contract import Reason
from pomona.core.outputs import (
    Latest,
    Lineage,
    VersionMetadata,
    features_key,
    lease_key,
    lock_key,
    new_batch_id,
)
from pomona.core.resources import describe
from pomona.core.settings import Settings, injected_fault
from pomona.featurize.commit import CommitState, Committer
from pomona.featurize.dedupe import split_duplicates
from pomona.featurize.held import HeldMessages
from pomona.featurize.index import SeenIndex
from pomona.featurize.lineage import check_lineage, prepare_model
from pomona.featurize.liveness import RunStoppedError, Watchdog
from pomona.featurize.lock import ConcurrentRunError, RunLock
from pomona.featurize.manifest import (
    batch_manifest,
    classifier_files,
    count_unfamiliar,
    quarantined_by_reason,
)
from pomona.featurize.metrics import RunMetrics
from pomona.featurize.outcome import ImageFailure, Settled, merge_optional
from pomona.featurize.passes import featurize_pass, projection_pass
from pomona.featurize.queue import Heartbeat, Held, Received, drain_queue
from pomona.featurize.recovery import Recovery
from pomona.featurize.tasks import file_provenance
from pomona.ml.backends import choose_model
from pomona.ml.classifier import (
    LabelStats,
    classifier_to_npz,
    merge_label_stats,
)
from pomona.ml.holdout import Reservoir, merge_reservoir
from pomona.ml.mobilenet import FEATURE_DIM
from pomona.ml.pca import PcaModel, PcaState, fit_pca_or_point, merge_pca_state, model_to_npz
from pomona.ml.training import retrain
from pomona.ml.weights import resolve_weights

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class JobOptions:
    """How the job works its queue; what it works on (weights, backend, max_images) is in `Settings`."""

    visibility_timeout_s: int = describe().images.visibility_timeout_s
    heartbeat_s: float = 60.0
    # How long a stopped run's driver may take to give its messages back before its process exits.
    grace_s: float = 300.0
    wait_s: int = 1  # long-poll seconds per receive; the queue is empty after one empty receive
    # Each task carries a fixed cost beyond its images (its client and model set-up, two 13 MB scatter matrices
    # pickled, sent and merged): large groups keep it a small share of a run's CPU; the README's "Where the
    # job's CPU goes" has the figures. Big batches still get up to 4 rounds of tasks for new executors to take.
    images_per_partition: int = 2048


@dataclass(frozen=True)
class BatchResult:
    """The committed manifest, or why nothing was committed."""

    manifest: dict[str, Any] | None
    skipped: str | None = None


class Job:
    """One run of the featurization job against one deployment."""

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        options: JobOptions,
        *,
        committer: Committer | None = None,
    ) -> None:
        self.spark = spark
        self.settings = settings
        self.options = options
        self.s3: S3Client = boto3.client("s3", endpoint_url=settings.endpoint_url, config=RETRIES)
        self.sqs: SQSClient = boto3.client("sqs", endpoint_url=settings.endpoint_url, config=RETRIES)
        dynamodb = boto3.client("dynamodb", endpoint_url=settings.endpoint_url, config=RETRIES)
        self.committer = committer or Committer(self.s3, settings, SeenIndex(dynamodb, settings.seen_table))
        self.recovery = Recovery(self.committer)
        # Named up front: the run's lease on it exists before any of its files.
        self.batch_id = new_batch_id(entropy=os.urandom(8))
        # How far this run's batch got: the lease stays while its files may exist uncommitted.
        self.outputs = CommitState.NOTHING_WRITTEN
        cloudwatch = boto3.client("cloudwatch", endpoint_url=settings.endpoint_url, config=RETRIES)
        self.metrics = RunMetrics(cloudwatch, namespace=settings.metrics_namespace, bucket=settings.bucket)
        self.held = HeldMessages(self.sqs, settings, between=lambda: self._fault("mid_delete"))

    def run(self) -> BatchResult:
        started = time.monotonic()
        prefix = self.settings.output_prefix
        lock = RunLock(
            self.s3, self.settings.bucket, lock_key(prefix), lease_key=lease_key(prefix, self.batch_id)
        )
        lock.acquire()
        try:
            with (
                Watchdog(
                    self.spark.sparkContext,
                    deadline_s=self.settings.run_deadline_s,
                    stall_s=self.settings.stall_s,
                    grace_s=self.options.grace_s,
                ) as self.watchdog,
                Heartbeat(
                    self.sqs,
                    self.settings.images_queue_url,
                    lock,
                    every_s=self.options.heartbeat_s,
                    visibility_timeout_s=self.options.visibility_timeout_s,
                    progressing=self.watchdog.progressing,
                ) as heartbeat,
            ):
                recovered, committed = self.recovery.recover()
                lineage = self._choose_model(committed)
                check_lineage(committed, lineage)
                # The chosen model, checked against the lineage, before any receive.
                prepare_model(_featurizing(self.settings, lineage))
                self.watchdog.progress()
                try:
                    result = self._run_batch(heartbeat, recovered, lineage, started)
                except ConcurrentRunError:
                    raise  # another run took over, and may hold these messages by now: they are its to settle
                except Exception as err:
                    self.held.give_back(err)
                    if self.watchdog.stopped is not None:
                        raise RunStoppedError(self.watchdog.stopped) from err
                    raise
        except ConcurrentRunError:
            raise  # another run is working: not a failure
        except Exception:
            self.metrics.run_failed()
            raise
        finally:
            lock.release(settled=self.outputs.settled)
        counts = {} if result.manifest is None else result.manifest["counts"]
        self.metrics.run_succeeded(
            committed=counts.get("featurized", 0), unfamiliar=counts.get("unfamiliar") or 0
        )
        return result

    def _run_batch(
        self, heartbeat: Heartbeat, recovered: Latest, lineage: Lineage, started: float
    ) -> BatchResult:
        timings: dict[str, float] = {}
        with timed(timings, "drain_s"):
            received = self._drain(heartbeat)
        self._phase_done("after_receive")
        refused = self._refuse(received)
        if not received.messages:
            return BatchResult(
                manifest=None,
                skipped=f"no valid messages ({received.malformed} malformed, {refused} refused)",
            )

        latest, fresh, duplicates = self._dedupe(received, recovered)
        if not fresh:
            self.held.delete([h.receipt for h in duplicates])
            return BatchResult(manifest=None, skipped=f"all {len(duplicates)} images already committed")
        stored_state = self.committer.load_state(latest)
        stored_training, stored_holdout = self.committer.load_classifier_state(latest)
        version, batch_id = latest.version + 1, self.batch_id

        self.outputs = CommitState.UNCOMMITTED
        with timed(timings, "featurize_s"):
            outcome, groups = featurize_pass(
                self.spark,
                _featurizing(self.settings, lineage),
                [h.message for h in fresh],
                images_per_partition=self.options.images_per_partition,
                batch_id=batch_id,
                version=version,
                provenance=file_provenance(lineage),
            )
        heartbeat.receipts = _receipts_except(received, {f.sha256 for f in outcome.failures if f.deferred})
        self._drop_stale_parts(outcome.parts, groups=groups, batch_id=batch_id)
        self._phase_done("after_features")
        if outcome.state is None:
            self.outputs = CommitState.NOTHING_WRITTEN  # no part file was written
            settled = self._settle(outcome.failures)
            self.held.settle(received, duplicates, settled)
            return BatchResult(
                manifest=None,
                skipped=f"no image featurized: {len(settled.quarantined)} quarantined, "
                f"{len(settled.deferred)} deferred",
            )
        with timed(timings, "refit_s"):
            state = merge_pca_state(stored_state or PcaState.empty(FEATURE_DIM), outcome.state)
            model = self._refit(state)
        with timed(timings, "classifier_s"):
            training = merge_optional(stored_training, outcome.training, merge_label_stats)
            training = training or LabelStats.empty(FEATURE_DIM)
            holdout = merge_optional(stored_holdout, outcome.holdout, merge_reservoir)
            holdout = holdout or Reservoir.empty(FEATURE_DIM)
            retrained = retrain(
                training,
                holdout,
                gain=self.settings.gain,
                loss=self.settings.loss,
                familiar_factor=self.settings.familiar_factor,
                variance_target=self.settings.variance_target,
                max_components=self.settings.max_components,
            )
        with timed(timings, "project_s"):
            projected = projection_pass(
                self.spark,
                self.settings,
                sorted(outcome.parts),
                model_to_npz(model),
                None if retrained.classifier is None else classifier_to_npz(retrained.classifier),
                batch_id=batch_id,
                version=version,
                provenance=file_provenance(lineage),
            )
        self.watchdog.step()

        committing = time.monotonic()
        settled = self._settle(outcome.failures)
        unfamiliar = count_unfamiliar(retrained, projected)
        counts = {
            "received": len(received.messages) + received.malformed + refused,
            "malformed": received.malformed,
            "duplicates": len(duplicates),
            "featurized": len(projected),
            "failed": quarantined_by_reason(settled, refused=refused),
            "deferred": dict(settled.deferred_by_code()),
            "labels": dict(Counter(projected["label"])),
            # Scored unfamiliar by the classifier trained with them: the first sign of fruits the catalogue lacks.
            "unfamiliar": unfamiliar,
        }
        timings["total_s"] = time.monotonic() - started
        manifest = batch_manifest(
            batch_id,
            version,
            model,
            retrained,
            counts=counts,
            timings=timings,
            n_fresh=len(fresh),
            settings=self.settings,
            lineage=lineage,
            files={kind: self.committer.batch_keys(kind, batch_id) for kind in ("features", "projections")},
        )
        files = classifier_files(retrained, training, holdout)
        evaluation = retrained.evaluation  # quality.json
        self._commit(
            heartbeat.lock, latest, model, state, manifest, evaluation, files, images=projected["sha256"]
        )
        self.outputs = CommitState.COMMITTED
        self.held.settle(received, duplicates, settled)
        self._retire(version, batch_id)
        manifest["timings"]["commit_s"] = round(time.monotonic() - committing, 3)
        log.info("Batch committed", extra={"batch_id": batch_id, "pca_version": version, **counts})
        return BatchResult(manifest=manifest)

    # -- the phases

    def _drain(self, heartbeat: Heartbeat) -> Received:
        """Take the batch off the queue; what its batch cap leaves out goes back at once, untouched."""
        received = drain_queue(
            self.sqs,
            self.settings,
            visibility_timeout_s=self.options.visibility_timeout_s,
            wait_s=self.options.wait_s,
            on_receive=self._holding(heartbeat),
        )
        self.held.hold(received)
        if received.excess:  # past a suspect message's batch cap: back to the queue, uncharged
            self.held.move(received.excess)
            heartbeat.receipts = [*received.receipts, *(r.receipt for r in received.refused)]
        return received

    def _dedupe(self, received: Received, recovered: Latest) -> tuple[Latest, list[Held], list[Held]]:
        """LATEST, and the received messages split into (fresh images, duplicates): of each other, or of images
        the index holds committed."""
        latest = self.committer.read_latest()
        # A run past the lock committed since recovery: finish its commit before looking.
        if latest != recovered:
            self.recovery.roll_forward(latest)
        seen = self.committer.index.committed(h.message.sha256 for h in received.messages)
        fresh, duplicates = split_duplicates(received.messages, seen)
        return latest, fresh, duplicates

    def _commit(
        self,
        lock: RunLock,
        latest: Latest,
        model: PcaModel,
        state: PcaState,
        manifest: dict[str, Any],
        quality: dict[str, Any],
        classifier_files: Mapping[str, bytes],
        *,
        images: Iterable[str],
    ) -> None:
        """Steps 2 to 6 of the commit protocol (`pomona.featurize.commit`), each then its fault point."""
        version, batch_id = manifest["pca_version"], manifest["batch_id"]
        # Fencing: a run whose lease lapsed and was taken over stops here, before it writes models/; the renewal
        # gives it a full TTL for the few writes left, so no run can take over in between. The lease now names
        # the version folder, for recovery to find it should this run end uncommitted.
        lock.pca_version = version
        lock.renew()
        self.committer.write_version(latest, batch_id, model, state, manifest, quality, classifier_files)
        self._fault("after_pca_version")
        self.committer.advance_latest(latest, batch_id=batch_id)
        self._fault("after_latest")
        self.committer.record(batch_id, images)
        self._fault("after_index")
        self.committer.register_tables(Latest(version, batch_id))
        self._fault("after_tables")
        self.committer.write_manifest(manifest)
        self._fault("after_manifest")

    def _refit(self, state: PcaState) -> PcaModel:
        return fit_pca_or_point(
            state,
            variance_target=self.settings.variance_target,
            max_components=self.settings.max_components,
            n_components=self.settings.n_components,
        )

    def _choose_model(self, committed: VersionMetadata | None) -> Lineage:
        """This run's model, POMONA_BACKEND/PRECISION=auto made concrete: the committed lineage's model
        (`committed`: its version's metadata), or a new lineage's."""
        lineage = None if committed is None else committed.lineage
        backend, precision = choose_model(self.settings.backend, self.settings.precision, lineage=lineage)
        weights = resolve_weights(self.settings.weights, cache_dir=self.settings.model_cache_dir)
        return Lineage(weights_id=weights.weights_id, backend=backend, precision=precision)

    def _refuse(self, received: Received) -> int:
        """Quarantine, by a sidecar alone, each message the drain refused (it names what ingestion would not have
        queued), and delete it: nothing it names is fetched. One S3 would not let us quarantine stays, for the DLQ."""
        done = []
        for refused in received.refused:
            try:
                self.committer.quarantine(refused.message, Reason.BAD_MESSAGE, refused.detail, copy=False)
                done.append(refused.receipt)
            except ClientError as err:
                log.warning(
                    "Quarantine failed", extra={"key": refused.message.key, "error_code": error_code(err)}
                )
        self.held.delete(done)
        return len(done)

    def _settle(self, failures: Sequence[ImageFailure]) -> Settled:
        """Quarantine each failed image that is not deferred. Those S3 would not let us quarantine now are
        deferred too, under S3's error code: their messages come back."""
        quarantined: list[ImageFailure] = []
        deferred: list[ImageFailure] = []
        for failure in failures:
            if failure.reason is None:
                deferred.append(failure)
                continue
            try:
                self.committer.quarantine(
                    failure.image, failure.reason, failure.detail, error_type=failure.error_code
                )
                quarantined.append(failure)
            except ClientError as err:
                deferred.append(failure.defer(error_code(err) or "ClientError"))
                log.warning(
                    "Quarantine failed; the image is deferred",
                    extra={"key": failure.image.key, "error_code": deferred[-1].error_code},
                )
        settled = Settled(quarantined, deferred)
        if by_code := settled.deferred_by_code():  # an access error comes back until someone fixes it
            log.warning("Images deferred", extra={"by_error_code": dict(by_code)})
        return settled

    def _drop_stale_parts(self, parts: Sequence[int], *, groups: int, batch_id: str) -> None:
        """Delete the features part file of each group that featurized no image: an earlier attempt of its task may
        have written one before its images went away, and the manifest lists the folder. (The executors may not
        delete: their role only reads uploads and writes part files.)"""
        written = set(parts)
        for part in (p for p in range(groups) if p not in written):
            self.s3.delete_object(
                Bucket=self.settings.bucket, Key=features_key(self.settings.output_prefix, batch_id, part)
            )

    def _retire(self, version: int, batch_id: str) -> None:
        """Retention, best-effort: the batch is committed; a sweep that fails is done by the next run's."""
        try:
            self.committer.retire(version, batch_id)
        except (ClientError, BotoCoreError) as err:
            log.warning("Retention failed; the next run retries", extra={"error": str(err)})

    def _holding(self, heartbeat: Heartbeat) -> Callable[[list[str]], None]:
        """The drain's `on_receive`: the heartbeat holds what it took, and the watchdog sees progress."""

        def hold(receipts: list[str]) -> None:
            heartbeat.hold(receipts)
            self.watchdog.progress()

        return hold

    def _phase_done(self, phase: str) -> None:
        """Between two phases: the fault-injection point, then `RunStoppedError` if the watchdog stopped the run."""
        self._fault(phase)
        self.watchdog.step()

    def _fault(self, phase: str) -> None:
        """The fault-injection point: with POMONA_FAULT=<phase>, the process dies here as a killed pod would."""
        if injected_fault() == phase:
            log.error("Injected fault", extra={"phase": phase})
            os._exit(137)


def _featurizing(settings: Settings, lineage: Lineage) -> Settings:
    """The settings the executors featurize with: this run's backend and precision, never `auto`."""
    return settings.replace(backend=lineage.backend, precision=lineage.precision)


def _receipts_except(received: Received, shas: set[str]) -> list[str]:
    """The receipts of every valid message but those of the images `shas` (duplicates within the batch too)."""
    return [h.receipt for h in received.messages if h.message.sha256 not in shas]


def run_job(spark: SparkSession, settings: Settings, options: JobOptions | None = None) -> BatchResult:
    return Job(spark, settings, options or JobOptions()).run()


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Seconds spent in the block, recorded as `timings[name]`."""
    started = time.monotonic()
    yield
    timings[name] = time.monotonic() - started
