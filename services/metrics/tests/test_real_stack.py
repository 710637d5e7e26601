"""The metrics service on PostgreSQL: the same batches, replays and isolation."""

from pathlib import Path

import pytest

from modelcloud_testing.servers import fresh_postgres_database
from services.metrics.tests import test_runs as runs
from services.metrics.tests.conftest import tracker_on

pytestmark = pytest.mark.postgres


async def test_runs_on_postgres(tmp_path: Path) -> None:
    checks = (
        runs.test_a_run_logs_params_and_metrics_and_reads_them_back,
        runs.test_each_user_sees_only_their_own_runs_unless_shared,
        runs.test_filters_and_a_comparison_marking_changed_parameters,
    )
    for index, check in enumerate(checks):
        (tmp_path / str(index)).mkdir()
        async with fresh_postgres_database() as database:
            async for tracker in tracker_on(tmp_path / str(index), database_url=database):
                await check(tracker)
                run = await runs.start(tracker.ada, "big batch")
                points = runs.epochs(20_000, loss=2.0, acc=0.5)  # several INSERT chunks at once
                logged = await tracker.ada.post(
                    f"{runs.RUNS}/{run['id']}/metrics", json={"points": points}
                )
                assert logged.json() == {"received": 40_000, "stored": 40_000}
