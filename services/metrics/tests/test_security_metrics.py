"""Issue 13, item 6: metric points with times at the edges of what a datetime holds are a
422 naming the field, not a 500, and store nothing."""

from typing import Any

import pytest

from services.metrics.tests.conftest import Tracker

RUNS = "/v1/projects/vision/runs"


async def new_run(tracker: Tracker) -> str:
    answer = await tracker.ada.post(RUNS, json={"name": "edges"})
    assert answer.status_code == 201, answer.text
    run_id: str = answer.json()["id"]
    return run_id


@pytest.mark.parametrize(
    "time",
    [
        "0001-01-01T00:00:00+01:00",  # year 0 in UTC
        "9999-12-31T23:59:59-01:00",  # year 10000 in UTC
        "0001-01-01T00:00:00",  # no offset: local time, no unix time either
        "1969-12-31T23:59:59Z",  # before what the compact form's unix times allow
    ],
)
async def test_a_point_time_out_of_range_is_a_422_naming_the_field(
    tracker: Tracker, time: str
) -> None:
    run_id = await new_run(tracker)
    points: list[dict[str, Any]] = [
        {"key": "loss", "step": 0, "value": 1.0},
        {"key": "loss", "step": 1, "value": 0.5, "time": time},
    ]

    answer = await tracker.ada.post(f"{RUNS}/{run_id}/metrics", json={"points": points})

    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in answer.json()["errors"]] == ["points.1.time"]
    run = (await tracker.ada.get(f"{RUNS}/{run_id}")).json()
    assert run["latest"] == {}  # the good point in the batch was not stored either


@pytest.mark.parametrize(
    "time", ["1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59+01:00"]
)
async def test_point_times_at_the_edges_of_the_range_are_stored(
    tracker: Tracker, time: str
) -> None:
    run_id = await new_run(tracker)
    points = [{"key": "loss", "step": 3, "value": 0.25, "time": time}]

    answer = await tracker.ada.post(f"{RUNS}/{run_id}/metrics", json={"points": points})

    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 1
    series = (await tracker.ada.get(f"{RUNS}/{run_id}/metrics/loss")).json()
    assert series["steps"] == [3]
