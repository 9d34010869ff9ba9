"""Shared pytest fixtures. Each block below belongs to one area; add new fixtures in a block of your own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------------------
# Storage: the real embedded S3 server (SeaweedFS `weed mini`), one per test session; a bucket per test.
# ---------------------------------------------------------------------------------------------------------
from infra.s3 import embedded
from infra.s3.embedded import S3Endpoint
from infra.storage import ObjectStore


@pytest.fixture(scope="session")
def s3_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """State folder of the session's S3 server (data, credentials.json, server.pid, weed.log)."""
    return tmp_path_factory.mktemp("s3state")


@pytest.fixture(scope="session")
def s3_server(s3_state_dir: Path) -> Iterator[S3Endpoint]:
    """The running test S3 server's endpoint and credentials; stopped at the end of the session.

    Tests that name it as a configured endpoint (`storage.endpoint_url`) trust its CA as a user trusts a
    private CA: through AWS_CA_BUNDLE, which every boto3 client (and DVC's) reads."""
    # 64 MB volumes: SeaweedFS needs a volume per bucket, and the tests make a bucket each
    for attempt in range(3):  # a port found free can be taken before weed binds it: retry
        try:
            endpoint = embedded.start(s3_state_dir, embedded.find_free_s3_port(), volume_size_mb=64)
            break
        except embedded.S3ServerError as err:
            taken = "already in use" in str(err) or "not this project's S3 server" in str(err)
            if not taken or attempt == 2:
                raise
    before = os.environ.get("AWS_CA_BUNDLE")
    os.environ["AWS_CA_BUNDLE"] = endpoint.ca_bundle
    try:
        yield endpoint
    finally:
        embedded.stop(s3_state_dir)
        if before is None:
            os.environ.pop("AWS_CA_BUNDLE", None)
        else:
            os.environ["AWS_CA_BUNDLE"] = before


def _drop_bucket(store: ObjectStore) -> None:
    """Delete a test bucket and its objects (frees the server's volumes for the next tests)."""
    try:
        keys = store.list_keys("")
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            store.client.delete_objects(Bucket=store.bucket, Delete={"Objects": batch, "Quiet": True})
        store.client.delete_bucket(Bucket=store.bucket)
    except Exception:  # noqa: BLE001 - best effort; the server is thrown away at session end anyway
        pass


@pytest.fixture
def object_store(s3_server: S3Endpoint) -> Iterator[ObjectStore]:
    """An ObjectStore on the test server with a fresh bucket of its own (removed afterwards)."""
    store = ObjectStore.on_server(s3_server, f"t-{uuid.uuid4().hex[:12]}", "cache")
    store.ensure_bucket()
    yield store
    _drop_bucket(store)


# ------------------------------------------------------------------------------------------ end of storage


# ---------------------------------------------------------------------------------------------------------
# Orchestration: Prefect's temporary test server, one per test session, with a home of its own.
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Flows run against a temporary Prefect server and database (stopped at the end of the session)."""
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    try:
        with prefect_test_harness(server_startup_timeout=120):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def prefect_api_url(prefect_server: None) -> str:
    """That server's API, for `ldmflow` subprocesses: a CLI run then skips starting a temporary server of
    its own (seconds per run; `make run` and tests/test_schedule_e2e.py show the other ways)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


# ------------------------------------------------------------------------------------ end of orchestration


# ---------------------------------------------------------------------------------------------------------
# Order: modules with end-to-end tests run first. `make test` spreads modules over two pytest-xdist workers
# (`--dist loadfile --no-loadscope-reorder`: a module's tests stay together and in order, and modules go
# out in this order); the long ones started first let both workers finish at about the same time.
# ---------------------------------------------------------------------------------------------------------
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    long_running = {item.path for item in items if item.get_closest_marker("e2e")}
    items.sort(key=lambda item: item.path not in long_running)  # stable: order within a module is kept


# --------------------------------------------------------------------------------------------- end of order


# ---------------------------------------------------------------------------------------------------------
# Faults: tests marked `faults` record each fault or bad input they try and what came of it; the rows are
# printed as one table at the end of the run (and written as JSON to $LDMFLOW_FAULT_TABLE when set, which
# benchmarks/faults.py reads). They travel in the test reports' user_properties, so rows recorded on
# pytest-xdist workers reach the table too.
# ---------------------------------------------------------------------------------------------------------
_FAULT_ROWS: list[dict[str, str]] = []
_FAULT_PROPERTY = "ldmflow.fault"


@pytest.fixture
def fault(request: pytest.FixtureRequest):
    """`fault(what, outcome)`: one row of the table; `outcome` says what was observed (refused, rejected
    with a reason, recovered, nothing lost), so write it from what the test measured."""
    if request.node.get_closest_marker("faults") is None:
        raise RuntimeError(f"{request.node.nodeid} records faults: mark it @pytest.mark.faults")

    def record(what: str, outcome: str) -> None:
        row = {"fault": what, "outcome": outcome, "test": request.node.nodeid}
        request.node.user_properties.append((_FAULT_PROPERTY, row))

    return record


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":  # the last report of a test: it carries every row the test recorded
        _FAULT_ROWS.extend(row for name, row in report.user_properties if name == _FAULT_PROPERTY)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _FAULT_ROWS or hasattr(config, "workerinput"):  # an xdist worker: the controller prints it
        return
    import json

    rows = sorted(_FAULT_ROWS, key=lambda r: r["test"])  # workers finish in any order
    width = min(max(len(r["fault"]) for r in rows), 70)
    terminalreporter.section(f"faults and bad inputs tried ({len(rows)})")
    for row in rows:
        terminalreporter.write_line(f"{row['fault'][:width]:<{width}}  {row['outcome'][:100]}")
    if os.environ.get("LDMFLOW_FAULT_TABLE"):
        Path(os.environ["LDMFLOW_FAULT_TABLE"]).write_text(json.dumps(rows, indent=2) + "\n")
