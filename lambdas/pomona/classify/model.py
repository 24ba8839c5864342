"""The classifier as served: the latest committed one, with the featurizer of its lineage, reloaded when LATEST moves.

A committed PCA version's folder holds `classifier.npz` beside `metadata.json`, which names the lineage: the
weights (`weights`, `weights_id`) and the backend its features were made with. Serving makes features with the
same weights file and backend, so an answer is computed with the numerics the holdout was scored with; weights
whose id differs from the lineage's are refused rather than used.
"""

from __future__ import annotations

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
from pomona.core.outputs import CLASSIFIER_FILE, METADATA_FILE, Files, pca_latest_key, pca_prefix
from pomona.core.settings import Settings, configured
from pomona.ml.backends import choose_model
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
    """A committed classifier and the featurizer of its lineage."""

    classifier: Classifier
    featurizer: Featurizer
    version: int
    batch_id: str | None
    weights_id: str
    backend: str
    precision: str = "f32"

    @property
    def model_version(self) -> str:
        """`v<N>-<batch id>`, the committed version's folder name."""
        return f"v{self.version}" if self.batch_id is None else f"v{self.version}-{self.batch_id}"


@dataclass(frozen=True)
class Pointer:
    """Where LATEST points: the committed version and its batch."""

    version: int
    batch_id: str | None


def read_pointer(files: Files, prefix: str) -> Pointer | None:
    """LATEST, or None before the first commit."""
    body = read_optional(files, pca_latest_key(prefix))
    if body is None:
        return None
    latest = json.loads(body)
    return Pointer(int(latest["version"]), latest.get("batch_id"))


def load_served_model(
    files: Files, pointer: Pointer, settings: Settings, *, weights: str | None = None, num_threads: int = 1
) -> ServedModel:
    """The classifier of committed version `pointer` in `files`, and its lineage's featurizer.

    The weights are `weights` when given, else POMONA_WEIGHTS when set, else the spec the job recorded."""
    folder = pca_prefix(settings.output_prefix, pointer.version, pointer.batch_id)
    metadata_body = read_optional(files, folder + METADATA_FILE)
    classifier_body = read_optional(files, folder + CLASSIFIER_FILE)
    if metadata_body is None or classifier_body is None:
        raise ModelUnavailableError(
            f"expected {METADATA_FILE} and {CLASSIFIER_FILE} in {files.location}{folder}, found "
            f"{'neither' if metadata_body is None and classifier_body is None else 'only one'}: no classifier is "
            "committed yet (a run commits one once 2 labels have 5 training images each)"
        )
    metadata: dict[str, Any] = json.loads(metadata_body)
    try:
        classifier = load_classifier(classifier_body)
    except ClassifierError as err:
        raise ModelUnavailableError(f"expected a classifier in {files.location}{folder}: {err}") from err
    spec = weights or configured("weights") or metadata.get("weights") or settings.weights
    # Versions record their backend; the settings' (`auto`: a new lineage's) stand in where one does not.
    backend = str(metadata.get("backend") or choose_model(settings.backend, "f32")[0])
    precision = str(metadata.get("precision") or "f32")  # versions written before precision was recorded: f32
    try:
        featurizer = get_featurizer(
            spec, backend, precision=precision, cache_dir=settings.model_cache_dir, num_threads=num_threads
        )
    except (SettingsError, ImportError) as err:  # a backend or precision this image or CPU cannot run
        raise ModelUnavailableError(
            f"expected to run version {pointer.version}'s lineage (backend {backend}, precision {precision}) "
            f"here, got: {err}"
        ) from err
    lineage = metadata.get("weights_id")
    if lineage is not None and featurizer.weights_id != lineage:
        raise ModelUnavailableError(
            f"expected weights with id {lineage} (the ones version {pointer.version} was trained on), got "
            f"{featurizer.weights_id} from {spec!r}: set POMONA_WEIGHTS (or --weights) to the lineage's weights"
        )
    return ServedModel(
        classifier=classifier,
        featurizer=featurizer,
        version=pointer.version,
        batch_id=pointer.batch_id,
        weights_id=featurizer.weights_id,
        backend=backend,
        precision=precision,
    )


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
        pointer = read_pointer(self.files, self.settings.output_prefix)
        if pointer is None:
            raise ModelUnavailableError(
                f"expected a committed model under {self.files.location}{self.settings.output_prefix}models/, "
                "found no models/pca/LATEST: no batch has been committed yet"
            )
        if current is not None and (current.version, current.batch_id) == (pointer.version, pointer.batch_id):
            return current
        loaded = load_served_model(
            self.files, pointer, self.settings, weights=self.weights, num_threads=self.num_threads
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
