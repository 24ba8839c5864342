"""The classifier as served: the latest committed one, with the featurizer of its lineage, reloaded when LATEST moves.

LATEST (`pomona.core.outputs.Latest`) names the committed version; its folder holds `classifier.npz` beside
`metadata.json` (`VersionMetadata`), which names the weights spec and the lineage its features were made with
(`Lineage`: weights id, backend, precision). Serving makes features with the same weights, backend and precision,
so an answer is computed with the numerics the holdout was scored with; weights whose id differs from the
lineage's are refused rather than used.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from pomona.core.aws import error_code
from pomona.core.errors import PomonaError, SettingsError
from pomona.core.outputs import (
    CLASSIFIER_FILE,
    METADATA_FILE,
    Files,
    Latest,
    Lineage,
    read_latest,
    read_version_metadata,
)
from pomona.core.settings import Settings, configured
from pomona.ml.classifier import Classifier, ClassifierError, load_classifier
from pomona.ml.featurizer import Featurizer, get_featurizer

log = logging.getLogger(__name__)

# `models/catalog/<label>.json`: what the team wrote about a fruit, under models/ so that the classify role's
# read-only grant on models/ covers it.
CATALOG_FOLDER = "models/catalog/"


class ModelUnavailableError(PomonaError, RuntimeError):
    """No committed classifier to answer with, or none that this process can run as it was trained."""


@dataclass(frozen=True, eq=False)
class ServedModel:
    """A committed classifier, the version it belongs to, and the featurizer of its lineage."""

    classifier: Classifier
    featurizer: Featurizer
    committed: Latest
    lineage: Lineage

    @property
    def model_version(self) -> str:
        """`v<N>-<batch id>`, the committed version's folder name."""
        return self.committed.name


def load_served_model(
    files: Files, committed: Latest, settings: Settings, *, weights: str | None = None, num_threads: int = 1
) -> ServedModel:
    """The classifier of `committed` in `files`, and its lineage's featurizer.

    The weights are `weights` when given, else POMONA_WEIGHTS when set, else the spec the job recorded."""
    folder = committed.folder(settings.output_prefix)
    metadata = read_version_metadata(_reader(files), settings.output_prefix, committed)
    classifier_body = read_optional(files, folder + CLASSIFIER_FILE)
    if metadata is None or classifier_body is None:
        raise ModelUnavailableError(
            f"expected {METADATA_FILE} and {CLASSIFIER_FILE} in {files.location}{folder}, found "
            f"{'neither' if metadata is None and classifier_body is None else 'only one'}: no classifier is "
            "committed yet (a run commits one once 2 labels have 5 training images each)"
        )
    try:
        classifier = load_classifier(classifier_body)
    except ClassifierError as err:
        raise ModelUnavailableError(f"expected a classifier in {files.location}{folder}: {err}") from err
    spec = weights or configured("weights") or metadata.weights or settings.weights
    lineage = metadata.lineage
    try:
        featurizer = get_featurizer(
            spec,
            lineage.backend,
            precision=lineage.precision,
            cache_dir=settings.model_cache_dir,
            num_threads=num_threads,
        )
    except (SettingsError, ImportError) as err:  # a backend or precision this image or CPU cannot run
        raise ModelUnavailableError(
            f"expected to run version {committed.version}'s lineage (backend {lineage.backend}, precision "
            f"{lineage.precision}) here, got: {err}"
        ) from err
    if featurizer.weights_id != lineage.weights_id:
        raise ModelUnavailableError(
            f"expected weights with id {lineage.weights_id} (the ones version {committed.version} was trained on), "
            f"got {featurizer.weights_id} from {spec!r}: set POMONA_WEIGHTS (or --weights) to the lineage's weights"
        )
    return ServedModel(classifier=classifier, featurizer=featurizer, committed=committed, lineage=lineage)


@dataclass
class LatestModel:
    """The served model of `files`, looking at LATEST at most every `check_seconds` and reloading when it moved.

    A warm Lambda container or the local endpoint answers from memory; one small GET a minute (by default) is
    what keeps it current. A reload reads LATEST, `metadata.json` and `classifier.npz`; the featurizer is memoised
    per process. When the check or the reload fails while a model is loaded, that model keeps answering (and the
    failure is logged) until the next check: a bad commit or a throttled GET must not take the answers down.
    """

    files: Files
    settings: Settings
    weights: str | None = None
    num_threads: int = 1
    clock: Callable[[], float] = time.monotonic
    _model: ServedModel | None = field(default=None, init=False)
    _checked: float = field(default=float("-inf"), init=False)
    _catalog: dict[str, dict[str, Any] | None] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def get(self) -> ServedModel:
        """The model to answer with now; `ModelUnavailableError` before the first commit."""
        with self._lock:
            now = self.clock()
            current = self._model
            if current is not None and now - self._checked < self.settings.model_check_seconds:
                return current
            self._checked = now
            try:
                return self._refresh(current)
            except Exception:
                if current is None:
                    raise
                log.exception("checking for a new classifier failed; answering with the loaded one")
                return current

    def _refresh(self, current: ServedModel | None) -> ServedModel:
        latest = read_latest(_reader(self.files), self.settings.output_prefix)
        if latest.version == 0:
            raise ModelUnavailableError(
                f"expected a committed model under {self.files.location}{self.settings.output_prefix}models/, "
                "found no models/pca/LATEST naming one: no batch has been committed yet"
            )
        if current is not None and current.committed == latest:
            return current
        loaded = load_served_model(
            self.files, latest, self.settings, weights=self.weights, num_threads=self.num_threads
        )
        self._model = loaded
        self._catalog.clear()
        log.info("classifier loaded", extra={"model_version": loaded.model_version})
        return loaded

    def catalog(self, label: str) -> dict[str, Any] | None:
        """`models/catalog/<label>.json` when the team wrote one (a JSON object); read once per label and model. An
        entry that cannot be read or is not an object is logged and left out: it never costs the answer."""
        with self._lock:
            if label not in self._catalog:
                key = f"{self.settings.output_prefix}{CATALOG_FOLDER}{label}.json"
                try:
                    body = read_optional(self.files, key)
                    entry = None if body is None else json.loads(body)
                except (ClientError, ValueError) as err:
                    log.warning("catalog entry unreadable, left out", extra={"key": key, "error": str(err)})
                    entry = None
                if entry is not None and not isinstance(entry, dict):
                    log.warning("catalog entry is not a JSON object, left out", extra={"key": key})
                    entry = None
                self._catalog[label] = entry
            return self._catalog[label]


def _reader(files: Files) -> Callable[[str], bytes | None]:
    """`files.read`, a refused read taken as absent (`read_optional`)."""
    return functools.partial(read_optional, files)


def read_optional(files: Files, key: str) -> bytes | None:
    """The object at `key`, or None when there is none. S3 answers a missing key with 403 rather than 404 unless
    the caller may list the bucket, and this function's role may list models/ at most: 403 reads as absent."""
    try:
        return files.read(key)
    except ClientError as err:
        if error_code(err) in {"AccessDenied", "403"}:
            log.info("read refused, taken as absent", extra={"key": key})
            return None
        raise
