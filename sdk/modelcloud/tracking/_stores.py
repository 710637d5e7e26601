"""Where runs are kept: the platform's metrics service, or a local SQLite file.

Both take the same operations, each safe to repeat (the run id is chosen here, a point is
stored once per (run, metric, step)), so a batch that may or may not have arrived is simply
sent again.
"""

import json
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

Point = tuple[str, int, float, float]  # metric, step, value, unix time
_POINTS_PER_REQUEST = 20_000


@dataclass
class RunRecord:
    """A run as read back: what it was given and what it logged."""

    id: str
    project: str
    experiment: str
    name: str
    user: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    started_at: datetime | None = None
    ended_at: datetime | None = None


class Unreachable(Exception):
    """The store could not be reached; the operation may be retried as it is."""


class Store(Protocol):
    def create(self, run: dict[str, Any]) -> None: ...
    def points(self, project: str, run_id: str, points: list[Point]) -> None: ...
    def finish(self, project: str, run_id: str, status: str) -> None: ...
    def runs(self, project: str, experiment: str | None) -> list[RunRecord]: ...
    def close(self) -> None: ...


class RemoteStore:
    """The metrics service, through the platform's gateway."""

    def __init__(self, url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=30)
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="tracking-send")

    def create(self, run: dict[str, Any]) -> None:
        body = {k: v for k, v in run.items() if k not in ("project", "user")}
        self._call("POST", f"/v1/projects/{run['project']}/runs", json=body)

    def points(self, project: str, run_id: str, points: list[Point]) -> None:
        path = f"/v1/projects/{project}/runs/{run_id}/metrics"
        bodies = (
            _columns(points[start : start + _POINTS_PER_REQUEST])
            for start in range(0, len(points), _POINTS_PER_REQUEST)
        )
        # Two requests in flight: one is stored while the next is encoded and sent. Their
        # order does not matter (a point is keyed by its step); if one fails, the whole
        # batch is sent again later and what arrived is not stored twice.
        sent = [self._pool.submit(self._call, "POST", path, json=body) for body in bodies]
        for future in sent:
            future.result()

    def finish(self, project: str, run_id: str, status: str) -> None:
        self._call("PATCH", f"/v1/projects/{project}/runs/{run_id}", json={"status": status})

    def runs(self, project: str, experiment: str | None) -> list[RunRecord]:
        query = {"limit": 1000} | ({"experiment": experiment} if experiment else {})
        found = []
        for run in self._call("GET", f"/v1/projects/{project}/runs", params=query).json():
            record = _record(run)
            for key in run["latest"]:
                series = self._call(
                    "GET",
                    f"/v1/projects/{project}/runs/{run['id']}/metrics/{key}",
                    params={"max_points": 100_000},
                ).json()
                record.metrics[key] = list(zip(series["steps"], series["values"], strict=True))
            found.append(record)
        return found

    def close(self) -> None:
        self._pool.shutdown()
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            answer = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"{self.http.base_url}: {exc}") from exc
        if answer.status_code >= 500 or answer.status_code == 429:
            raise Unreachable(f"{method} {path}: HTTP {answer.status_code}")
        if not answer.is_success:
            detail = answer.text[:500]
            raise TrackingRefused(f"{method} {path}: HTTP {answer.status_code}: {detail}")
        return answer


class TrackingRefused(Exception):
    """The metrics service refused an operation (it would refuse it again)."""


class LocalStore:
    """A SQLite file: zero configuration, one user (this machine's)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=10000")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS run (
                id TEXT PRIMARY KEY, project TEXT NOT NULL, experiment TEXT NOT NULL,
                name TEXT NOT NULL, user TEXT NOT NULL, status TEXT NOT NULL,
                params TEXT NOT NULL, tags TEXT NOT NULL,
                started_at TEXT NOT NULL, ended_at TEXT
            );
            CREATE TABLE IF NOT EXISTS point (
                run_id TEXT NOT NULL REFERENCES run(id), key TEXT NOT NULL,
                step INTEGER NOT NULL, value REAL NOT NULL, time REAL NOT NULL,
                PRIMARY KEY (run_id, key, step)
            );
            """
        )

    def create(self, run: dict[str, Any]) -> None:
        with self._lock:
            self.db.execute(
                "INSERT OR IGNORE INTO run VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, NULL)",
                (
                    run["id"],
                    run["project"],
                    run["experiment"],
                    run["name"],
                    run["user"],
                    json.dumps(run["params"]),
                    json.dumps(run["tags"]),
                    datetime.now(UTC).isoformat(),
                ),
            )

    def points(self, project: str, run_id: str, points: list[Point]) -> None:
        with self._lock:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR IGNORE INTO point VALUES (?, ?, ?, ?, ?)",
                [(run_id, k, s, v, t) for k, s, v, t in points],
            )
            self.db.execute("COMMIT")

    def finish(self, project: str, run_id: str, status: str) -> None:
        with self._lock:
            self.db.execute(
                "UPDATE run SET status = ?, ended_at = ? WHERE id = ?",
                (status, datetime.now(UTC).isoformat(), run_id),
            )

    def runs(self, project: str | None, experiment: str | None) -> list[RunRecord]:
        query = "SELECT id, project, experiment, name, user, status, params, started_at, ended_at"
        query += " FROM run WHERE (? IS NULL OR project = ?) AND (? IS NULL OR experiment = ?)"
        with self._lock:
            rows = self.db.execute(
                query + " ORDER BY started_at", (project, project, experiment, experiment)
            ).fetchall()
            found = []
            for row in rows:
                record = RunRecord(
                    id=row[0],
                    project=row[1],
                    experiment=row[2],
                    name=row[3],
                    user=row[4],
                    status=row[5],
                    params=json.loads(row[6]),
                    started_at=datetime.fromisoformat(row[7]),
                    ended_at=datetime.fromisoformat(row[8]) if row[8] else None,
                )
                for key, step, value in self.db.execute(
                    "SELECT key, step, value FROM point WHERE run_id = ? ORDER BY key, step",
                    (row[0],),
                ):
                    record.metrics.setdefault(key, []).append((step, value))
                found.append(record)
        return found

    def close(self) -> None:
        with self._lock:
            self.db.close()


def _columns(points: list[Point]) -> dict[str, Any]:
    """The compact body: each metric's steps, values and times as columns."""
    series: dict[str, dict[str, list[Any]]] = {}
    for key, step, value, at in points:
        columns = series.get(key)
        if columns is None:
            columns = series[key] = {"steps": [], "values": [], "times": []}
        columns["steps"].append(step)
        columns["values"].append(value)
        columns["times"].append(at)
    return {"series": series}


def _record(run: dict[str, Any]) -> RunRecord:
    return RunRecord(
        id=run["id"],
        project=run["project"],
        experiment=run["experiment"],
        name=run["name"],
        user=run["user"],
        status=run["status"],
        params=run["params"],
        started_at=datetime.fromisoformat(run["started_at"]),
        ended_at=datetime.fromisoformat(run["ended_at"]) if run["ended_at"] else None,
    )
