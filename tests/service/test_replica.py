"""The ledger's replica (issue 16): Litestream's real binary streaming a real ledger to
moto's S3 on loopback and to a directory, and restoring it elsewhere."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.coordination.replica import Replica
from reconciler.errors import ConfigurationError
from reconciler.ledger import Ledger


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _host, port = server.get_host_and_port()
    urllib.request.urlopen(
        urllib.request.Request(f"http://127.0.0.1:{port}/ledgers", method="PUT"), timeout=10
    )
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_REGION", "us-east-1")):  # fmt: skip
        monkeypatch.setenv(key, value)
    yield f"http://127.0.0.1:{port}"
    server.stop()


def write_runs(state: Path, n: int) -> list[int]:
    with Ledger.open(state) as ledger:
        return [ledger.start_run(command="daemon", commit=f"c{i}") for i in range(n)]


def replicate_then_restore(url: str, tmp_path: Path) -> tuple[list[int], dict[str, object]]:
    leader, successor = tmp_path / "leader", tmp_path / "successor"
    write_runs(leader, 2)
    replica = Replica(url, leader)
    replica.start(leader / "ledger.sqlite")
    try:
        written = write_runs(leader, 3)
        time.sleep(3)  # Litestream ships every second
    finally:
        replica.stop()
    restored = Replica(url, successor).restore()
    with Ledger.open(successor, check="full") as ledger:
        ids = [row["id"] for row in ledger.run_rows()]
    assert set(written) <= set(ids)
    return ids, restored


def test_the_ledger_streams_to_s3_and_a_successor_restores_it(s3: str, tmp_path: Path) -> None:
    url = f"s3://ledgers/acme?endpoint={s3}&region=us-east-1&force-path-style=true"
    ids, restored = replicate_then_restore(url, tmp_path)
    assert restored["restored"] is True and len(ids) == 5


def test_the_ledger_streams_to_a_directory_and_its_lag_is_known(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'replica'}"
    ids, restored = replicate_then_restore(url, tmp_path)
    assert restored["restored"] is True and len(ids) == 5
    lag = Replica(url, tmp_path / "leader").lag_seconds()
    assert lag is not None and lag >= 0


def test_no_replica_yet_restores_nothing_and_leaves_the_ledger_alone(tmp_path: Path) -> None:
    write_runs(tmp_path / "mine", 1)
    before = (tmp_path / "mine" / "ledger.sqlite").read_bytes()
    found = Replica(f"file://{tmp_path / 'empty'}", tmp_path / "mine").restore()
    assert found == {"restored": False, "replica": f"file://{tmp_path / 'empty'}",
                     "why": "no replica yet"}  # fmt: skip
    assert (tmp_path / "mine" / "ledger.sqlite").read_bytes() == before


def test_a_replica_url_of_another_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="file:///DIRECTORY or s3://BUCKET/PATH"):
        Replica("ftp://example/ledger", tmp_path)
