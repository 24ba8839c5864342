"""Shared fixtures: event fixtures, a Lambda context, a session moto server and a fresh deployment per test."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pomona.core.resources import describe
from pomona.core.settings import Settings

if TYPE_CHECKING:
    from pomona.featurize.driver import JobOptions
from pomona.local.poller import LambdaContext
from pomona.local.stack import LOCAL_ENV, local_session, provision, start_server

ROOT = Path(__file__).resolve().parents[1]
EVENTS = Path(__file__).resolve().parent / "events"
SHARED = ROOT.parent / "shared"
SAMPLE_DIR = SHARED / "data" / "fruits-360-sample"
ORIGINALS_DIR = SHARED / "data" / "fruits-360-original-size"
WEIGHTS = SHARED / "models" / "mobilenet_v2_1.0_224_no_top.weights.h5"

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# Tests never talk to real AWS: moto's placeholder credentials, set before any Spark worker is forked.
os.environ.update(LOCAL_ENV)


# Markers from where a test lives and what it uses, so `-m "not integration"` really starts no server or Spark.
FOLDER_MARKERS = {"integration": ("integration",), "e2e": ("integration", "e2e", "slow")}
SERVER_FIXTURES = frozenset({"moto_endpoint", "spark"})  # a moto server, a Spark session
SLOW_FIXTURES = frozenset({"spark", "model_cache"})  # a JVM, a TensorFlow conversion


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = Path(__file__).resolve().parent
    for item in items:
        folder = item.path.resolve().relative_to(tests).parts[0]
        used = set(getattr(item, "fixturenames", ()))
        names = set(FOLDER_MARKERS.get(folder, ()))
        names |= {"integration"} if used & SERVER_FIXTURES else set()
        names |= {"slow"} if used & SLOW_FIXTURES else set()
        for name in sorted(names - {m.name for m in item.iter_markers()}):
            item.add_marker(name)


def require(path: Path) -> Path:
    """`path`, or skip the test: shared/ sits beside the repo on CI and developer machines, not everywhere."""
    if not path.exists():
        pytest.skip(f"needs {path} (the shared/ folder beside the repository), which is absent here")
    return path


# The shared/ data, in one place: tests take these fixtures, which skip with the reason where it is absent.


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """540 100×100 Fruits-360 photos in 18 class folders, with MANIFEST.tsv."""
    return require(SAMPLE_DIR)


@pytest.fixture(scope="session")
def originals_dir() -> Path:
    """120 larger Fruits-360 photos of 6 other fruits."""
    return require(ORIGINALS_DIR)


@pytest.fixture(scope="session")
def weights_path() -> Path:
    """ImageNet MobileNetV2 backbone weights."""
    return require(WEIGHTS)


@pytest.fixture(scope="session")
def a_real_photo() -> bytes | None:
    """The sample's first photo, or None where shared/ is absent (for tests that fall back to a synthetic one)."""
    photos = sorted(SAMPLE_DIR.glob("*/*.jpg")) if SAMPLE_DIR.is_dir() else []
    return photos[0].read_bytes() if photos else None


def load_event(name: str) -> dict[str, Any]:
    """An event fixture from tests/events/, as AWS delivers it."""
    return json.loads((EVENTS / name).read_text())  # type: ignore[no-any-return]


@pytest.fixture(name="load_event")
def load_event_fixture() -> Callable[[str], dict[str, Any]]:
    return load_event


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server, endpoint = start_server()
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """The one SparkSession of the test run, `local[2]` as `pomona demo` runs the job; stopped at the end."""
    from pomona.featurize.entry import spark_session

    session = spark_session("local[2]", app_name="pomona-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random MobileNetV2 weights converted for LiteRT once, up front, so concurrent runs never race for it.

    Random weights keep the job's tests independent of shared/; the e2e test uses the real ones."""
    from pomona.featurize.lineage import prepare_model

    path = tmp_path_factory.mktemp("pomona-model-cache")
    prepare_model(Settings(weights="random", backend="litert", cache_dir=str(path)))
    return path


@pytest.fixture(scope="session")
def random_model(model_cache: Path) -> Callable[[Settings], Settings]:
    """`random_model(settings)`: the settings, running the job with the session's random-weights model."""

    def with_random_model(settings: Settings) -> Settings:
        return settings.replace(weights="random", backend="litert", cache_dir=str(model_cache))

    return with_random_model


@pytest.fixture
def job_options() -> JobOptions:
    """No long-poll on an empty queue, and several partitions even for a dozen images."""
    from pomona.featurize.driver import JobOptions

    return JobOptions(wait_s=0, images_per_partition=8)


@pytest.fixture
def ingest(deployment: Settings) -> Iterator[Settings]:
    """The deployment, with the Lambda handler's cached clients rebuilt for it (and again afterwards)."""
    from pomona.ingest import handler

    handler._ingestor.cache_clear()
    yield deployment
    handler._ingestor.cache_clear()


@pytest.fixture
def deployment(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A freshly provisioned deployment of its own on the session's moto server, its settings exported."""
    name = f"t{uuid.uuid4().hex[:10]}"
    settings = provision(describe(name), session=local_session(), endpoint_url=moto_endpoint, base=Settings())
    for var, value in {**LOCAL_ENV, **settings.to_env()}.items():
        monkeypatch.setenv(var, value)
    return settings


@pytest.fixture
def s3_event_factory() -> Callable[..., dict[str, Any]]:
    """A direct S3 notification for one object, in AWS's shape (keys URL-encoded as S3 sends them)."""

    def make(
        *, bucket: str, key: str, version_id: str | None, event_name: str = "ObjectCreated:Put"
    ) -> dict[str, Any]:
        from urllib.parse import quote_plus

        event = load_event("s3_put.json")
        record = event["Records"][0]
        record["eventName"] = event_name
        record["s3"]["bucket"]["name"] = bucket
        record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
        record["s3"]["object"]["key"] = quote_plus(key, safe="/")
        record["s3"]["object"]["versionId"] = version_id
        return event

    return make
