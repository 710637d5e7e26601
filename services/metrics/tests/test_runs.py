"""Runs over the REST API: parameters and per-step metrics in batches, replays stored once,
series thinned for long runs, comparisons marking what differs, each user's runs their own,
and bad input answered clearly."""

import asyncio
import json
import math
from typing import Any
from uuid import uuid4

import httpx

from services.common.runtime import service_state
from services.metrics.runs.service import mark_quiet_runs_crashed
from services.metrics.state import MetricsState
from services.metrics.tests.conftest import Tracker

RUNS = "/v1/projects/vision/runs"


async def start(client: httpx.AsyncClient, name: str, **params: Any) -> dict[str, Any]:
    answer = await client.post(RUNS, json={"name": name, "experiment": "digits", "params": params})
    assert answer.status_code == 201, answer.text
    run: dict[str, Any] = answer.json()
    return run


def epochs(count: int, **curves: float) -> list[dict[str, Any]]:
    return [
        {"key": key, "step": epoch, "value": start / (epoch + 1)}
        for epoch in range(count)
        for key, start in curves.items()
    ]


async def test_a_run_logs_params_and_metrics_and_reads_them_back(tracker: Tracker) -> None:
    run = await start(tracker.ada, "baseline", lr=0.01, layers=2, optimizer="adam")
    assert run["status"] == "running"
    assert run["user"] == "ada"
    logged = await tracker.ada.post(
        f"{RUNS}/{run['id']}/metrics", json={"points": epochs(10, loss=2.0, acc=0.5)}
    )
    assert logged.json() == {"received": 20, "stored": 20}
    again = await tracker.ada.post(  # the same batch again (a retry): nothing doubles
        f"{RUNS}/{run['id']}/metrics", json={"points": epochs(10, loss=2.0, acc=0.5)}
    )
    assert again.json() == {"received": 20, "stored": 0}

    loss = (await tracker.ada.get(f"{RUNS}/{run['id']}/metrics/loss")).json()
    assert loss["steps"] == list(range(10))
    assert loss["values"][0] == 2.0
    assert math.isclose(loss["values"][-1], 0.2)

    done = await tracker.ada.patch(f"{RUNS}/{run['id']}", json={"status": "finished"})
    body = done.json()
    assert body["status"] == "finished"
    assert body["ended_at"] is not None
    assert body["params"] == {"lr": 0.01, "layers": 2, "optimizer": "adam"}
    assert math.isclose(body["latest"]["loss"], 0.2)


async def test_the_compact_form_carries_the_same_points(tracker: Tracker) -> None:
    run = await start(tracker.ada, "columns")
    url = f"{RUNS}/{run['id']}/metrics"
    body = {
        "series": {
            "loss": {"steps": [0, 1, 2], "values": [1.0, 0.5, 0.25], "times": [1e9, 1e9, 1e9]},
            "acc": {"steps": [0, 1], "values": [0.5, 0.75]},
        },
        "points": [{"key": "acc", "step": 1, "value": 0.75}],  # the same point twice
    }
    assert (await tracker.ada.post(url, json=body)).json() == {"received": 6, "stored": 5}
    back = (await tracker.ada.get(f"{RUNS}/{run['id']}")).json()
    assert back["latest"] == {"loss": 0.25, "acc": 0.75}
    for bad_time in ("NaN", "-1", "1e300"):
        columns = f'{{"steps": [9], "values": [1], "times": [{bad_time}]}}'
        answer = await tracker.ada.post(
            url,
            content=f'{{"series": {{"loss": {columns}}}}}',
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 422, bad_time
        assert answer.json()["errors"][0]["field"] == "series.loss.times.0"
    uneven = {"series": {"loss": {"steps": [3, 4], "values": [1.0]}}}
    assert (await tracker.ada.post(url, json=uneven)).status_code == 422
    not_finite = await tracker.ada.post(
        url,
        content='{"series": {"loss": {"steps": [5], "values": [NaN]}}}',
        headers={"content-type": "application/json"},
    )
    assert not_finite.status_code == 422
    assert not_finite.json()["errors"][0]["field"] == "series.loss.values.0"


async def test_long_series_are_thinned_keeping_both_ends(tracker: Tracker) -> None:
    run = await start(tracker.ada, "long")
    points = [{"key": "loss", "step": s, "value": float(s)} for s in range(10_001)]
    logged = await tracker.ada.post(f"{RUNS}/{run['id']}/metrics", json={"points": points})
    assert logged.json()["stored"] == 10_001
    thin = (await tracker.ada.get(f"{RUNS}/{run['id']}/metrics/loss?max_points=100")).json()
    assert thin["total"] == 10_001
    assert len(thin["steps"]) <= 101
    assert thin["steps"][0] == 0
    assert thin["steps"][-1] == 10_000
    assert thin["values"] == [float(s) for s in thin["steps"]]


async def test_filters_and_a_comparison_marking_changed_parameters(tracker: Tracker) -> None:
    first = await start(tracker.ada, "lr-small", lr=0.01, layers=2)
    second = await start(tracker.ada, "lr-large", lr=0.1, layers=2)
    third = await start(tracker.ada, "deeper", lr=0.1, layers=4, dropout=0.5)
    found = (await tracker.ada.get(RUNS, params={"param": "lr:0.1"})).json()
    assert {r["name"] for r in found} == {"lr-large", "deeper"}
    both = (await tracker.ada.get(RUNS, params={"param": ["lr:0.1", "layers:4"]})).json()
    assert [r["name"] for r in both] == ["deeper"]

    for run, acc in ((first, 0.8), (second, 0.95), (third, 0.9)):
        points = [{"key": "acc", "step": 0, "value": 0.1}, {"key": "acc", "step": 1, "value": acc}]
        await tracker.ada.post(f"{RUNS}/{run['id']}/metrics", json={"points": points})
    good = (await tracker.ada.get(RUNS, params={"metric": "acc>=0.9"})).json()
    assert {r["name"] for r in good} == {"lr-large", "deeper"}  # the last value counts
    best = (await tracker.ada.get(RUNS, params={"metric": ["acc>0.9", "acc<1"]})).json()
    assert [r["name"] for r in best] == ["lr-large"]
    bad_filter = await tracker.ada.get(RUNS, params={"metric": "acc~0.9"})
    assert bad_filter.status_code == 422

    ids = [first["id"], second["id"], third["id"]]
    compared = (await tracker.ada.get(f"{RUNS}/compare", params={"run": ids})).json()
    assert compared["differing"] == ["dropout", "layers", "lr"]
    two = (await tracker.ada.get(f"{RUNS}/compare", params={"run": ids[:2]})).json()
    assert two["differing"] == ["lr"]
    assert two["params"]["layers"] == {ids[0]: 2, ids[1]: 2}


async def test_each_user_sees_only_their_own_runs_unless_shared(tracker: Tracker) -> None:
    mine = await start(tracker.ada, "ada's")
    theirs = await start(tracker.grace, "grace's")

    async def train(client: httpx.AsyncClient, run: dict[str, Any]) -> None:
        for epoch in range(20):  # both users at once, batch after batch
            batch = [{"key": "loss", "step": epoch, "value": 1 / (epoch + 1)}]
            answer = await client.post(f"{RUNS}/{run['id']}/metrics", json={"points": batch})
            assert answer.json()["stored"] == 1

    await asyncio.gather(train(tracker.ada, mine), train(tracker.grace, theirs))
    for client, run in ((tracker.ada, mine), (tracker.grace, theirs)):
        series = (await client.get(f"{RUNS}/{run['id']}/metrics/loss")).json()
        assert series["steps"] == list(range(20))
    assert [r["name"] for r in (await tracker.ada.get(RUNS)).json()] == ["ada's"]
    assert [r["name"] for r in (await tracker.grace.get(RUNS)).json()] == ["grace's"]
    assert (await tracker.grace.get(f"{RUNS}/{mine['id']}")).status_code == 404
    assert (await tracker.grace.get(f"{RUNS}/{mine['id']}/metrics/loss")).status_code == 404
    sneaky = await tracker.grace.post(
        f"{RUNS}/{mine['id']}/metrics", json={"points": epochs(1, loss=1.0)}
    )
    assert sneaky.status_code == 404
    compared = await tracker.grace.get(
        f"{RUNS}/compare", params={"run": [mine["id"], theirs["id"]]}
    )
    assert compared.status_code == 404

    shared = await tracker.ada.patch(f"{RUNS}/{mine['id']}", json={"shared": True})
    assert shared.json()["shared"] is True
    assert {r["name"] for r in (await tracker.grace.get(RUNS)).json()} == {"ada's", "grace's"}
    assert (await tracker.grace.get(f"{RUNS}/{mine['id']}")).status_code == 200
    reader = service_state(tracker.app, MetricsState).live.join("vision", "grace")
    unshared = await tracker.ada.patch(f"{RUNS}/{mine['id']}", json={"shared": False})
    assert unshared.json()["shared"] is False
    told = reader.queue.get_nowait()  # the page of someone who could see it hears it went
    assert (told.kind, told.data["shared"]) == ("run", False)
    assert (await tracker.grace.get(f"{RUNS}/{mine['id']}")).status_code == 404
    await tracker.ada.patch(f"{RUNS}/{mine['id']}", json={"shared": True})
    change = await tracker.grace.patch(f"{RUNS}/{mine['id']}", json={"notes": "mine now"})
    assert change.status_code == 404  # shared for reading; only ada changes it
    taken = await tracker.grace.post(RUNS, json={"name": "x", "id": mine["id"]})
    assert taken.status_code == 409  # a run id is not reused across users


async def test_bad_input_gets_a_clear_answer_and_changes_nothing(tracker: Tracker) -> None:
    run = await start(tracker.ada, "x")
    url = f"{RUNS}/{run['id']}/metrics"
    for bad in ("NaN", "Infinity", "-Infinity"):
        answer = await tracker.ada.post(
            url,
            content=f'{{"points": [{{"key": "loss", "step": 1, "value": {bad}}}]}}',
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 422, bad
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["errors"][0]["field"] == "points.0.value"
    negative = await tracker.ada.post(url, json={"points": [{"key": "l", "step": -1, "value": 1}]})
    assert negative.status_code == 422
    unknown = await tracker.ada.post(f"{RUNS}/{uuid4()}/metrics", json={"points": []})
    assert unknown.status_code == 404
    assert "there is no run" in unknown.json()["detail"]
    not_a_uuid = await tracker.ada.get(f"{RUNS}/1%20OR%201=1")
    assert not_a_uuid.status_code == 422

    many = {"points": [{"key": "l", "step": s, "value": 0.5} for s in range(100_001)]}
    too_many = await tracker.ada.post(url, json=many)
    assert too_many.status_code == 413
    assert "at most 100000 points" in too_many.json()["detail"]
    million = json.dumps({"points": [{"key": "l", "step": s, "value": 0.5} for s in range(10**6)]})
    huge = await tracker.ada.post(
        url, content=million, headers={"content-type": "application/json"}
    )
    assert huge.status_code == 413  # refused by its size before it is read
    assert huge.headers["content-type"] == "application/problem+json"

    sql = "'; DROP TABLE run; --"
    odd = await start(tracker.ada, sql, **{sql: sql})
    odd_points = [{"key": sql, "step": 0, "value": 1.0}]
    assert (
        await tracker.ada.post(f"{RUNS}/{odd['id']}/metrics", json={"points": odd_points})
    ).json()["stored"] == 1
    back = (await tracker.ada.get(f"{RUNS}/{odd['id']}")).json()
    assert back["name"] == sql
    assert back["params"] == {sql: sql}
    assert back["latest"] == {sql: 1.0}
    listed = (await tracker.ada.get(RUNS, params={"param": f"{sql}:{sql}"})).json()
    assert [r["id"] for r in listed] == [odd["id"]]

    nothing = (await tracker.ada.get(f"{RUNS}/{run['id']}")).json()
    assert nothing["latest"] == {}  # none of the refused points was stored


async def test_runs_that_fall_silent_are_marked_crashed(tracker: Tracker) -> None:
    run = await start(tracker.ada, "killed")
    async with service_state(tracker.app, MetricsState).database.sessions() as session:
        assert await mark_quiet_runs_crashed(session, quiet_for_s=3600) == 0
        assert await mark_quiet_runs_crashed(session, quiet_for_s=0) == 1
    crashed = (await tracker.ada.get(f"{RUNS}/{run['id']}")).json()
    assert crashed["status"] == "crashed"
    revived = await tracker.ada.post(
        f"{RUNS}/{run['id']}/metrics", json={"points": epochs(1, loss=1.0)}
    )
    assert revived.status_code == 200
    assert (await tracker.ada.get(f"{RUNS}/{run['id']}")).json()["status"] == "running"
