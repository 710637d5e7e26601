"""A run being tracked: ``log`` appends to a buffer, a background thread sends batches.

Every operation of a run (create, points, finish) goes through an ordered outbox. When the
store cannot be reached, the operation and everything after it go to the spool folder, one
file each, and are sent from there first once it can be reached again (by this process, or
by the next one that starts a run). Each is safe to send twice, so nothing is lost and
nothing doubles.
"""

import atexit
import getpass
import json
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from modelcloud.tracking._stores import (
    LocalStore,
    Point,
    RemoteStore,
    RunRecord,
    Store,
    TrackingRefused,
    Unreachable,
)

log = logging.getLogger("modelcloud.tracking")
FLUSH_S = 0.5
BATCH = 10_000


def _home() -> Path:
    return Path.home() / ".modelcloud"


def local_db() -> Path:
    return Path(os.environ.get("MODELCLOUD_TRACKING_DB") or _home() / "tracking.db")


def spool_dir() -> Path:
    return Path(os.environ.get("MODELCLOUD_TRACKING_SPOOL") or _home() / "tracking" / "spool")


def _store() -> Store:
    if os.environ.get("MODELCLOUD_TRACKING", "").lower() != "local":
        from modelcloud._platform import PlatformError, connection

        try:
            conn = connection()
        except PlatformError:
            pass
        else:
            return RemoteStore(conn.url, conn.token)
    return LocalStore(local_db())


class Run:
    """One training run. Use :func:`start` to make one."""

    def __init__(
        self,
        store: Store,
        *,
        project: str,
        name: str,
        params: dict[str, Any],
        experiment: str,
        tags: dict[str, str],
        code_version: str | None,
        model_version: str | None,
        flush_s: float = FLUSH_S,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.project = project
        self.name = name
        self.params = dict(params)
        self.status = "running"
        self._store = store
        self._buffer: deque[Point] = deque()
        self._ops: deque[tuple[str, Any]] = deque()
        self._next_step = 0
        self._flush_s = flush_s
        self._wake = threading.Event()
        self._stopping = False
        self._warned_nonfinite = False
        self._spool = spool_dir()
        self._ops.append(
            (
                "create",
                {
                    "id": self.id,
                    "project": project,
                    "name": name,
                    "experiment": experiment,
                    "params": self.params,
                    "tags": tags,
                    "user": getpass.getuser(),
                    "code_version": code_version,
                    "model_version": model_version,
                },
            )
        )
        self._thread = threading.Thread(target=self._loop, name=f"tracking-{name}", daemon=True)
        self._thread.start()
        _active.add(self)

    # ---------------------------------------------------------------- the training loop

    def log(self, step: int | None = None, epoch: int | None = None, **metrics: float) -> None:
        """Record metrics at ``step`` (or ``epoch``; else the step after the last one)."""
        if step is None:
            step = epoch if epoch is not None else self._next_step
        self._next_step = step + 1
        now = time.time()
        append = self._buffer.append
        for key, value in metrics.items():
            append((key, step, value, now))
        if len(self._buffer) >= BATCH:
            self._wake.set()

    def finish(self, status: str = "finished") -> None:
        """Send what is left and mark the run ``status`` (finished, failed or crashed)."""
        if self._stopping:
            return
        self.status = status
        self._stopping = True  # the sender thread takes what is left, then the finish
        _active.discard(self)
        self._wake.set()
        self._thread.join()
        left = sorted(self._spool.glob(f"{self.id}-*.json")) if self._spool.is_dir() else []
        if left:
            log.warning(
                "run %s: the metrics service cannot be reached; %d batches wait in %s and "
                "will be sent by the next run that starts, or by modelcloud.tracking.push()",
                self.name,
                len(left),
                self._spool,
            )
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.finish("finished" if kind is None else "failed")

    # ---------------------------------------------------------------- the sender thread

    def _loop(self) -> None:
        """The only reader of the buffer and the outbox."""
        first = True
        while True:
            self._wake.wait(self._flush_s)
            self._wake.clear()
            stopping = self._stopping
            try:
                self._ops_from_buffer()
                if stopping:
                    self._ops.append(("finish", self.status))
                if first:  # what earlier runs left behind, once the store answers again
                    _drain_spool(self._store, self._spool, skip=self.id)
                    first = False
                self._send()
            except Exception:  # never a silent death of the sender: what it holds waits
                log.exception("run %s: sending failed; keeping the rest on disk", self.name)
                self._spool_ops()
            if stopping:
                return

    def _ops_from_buffer(self) -> None:
        taken = []
        buffer = self._buffer
        for _ in range(len(buffer)):
            key, step, value, at = buffer.popleft()
            try:
                number = float(value)  # numpy and torch scalars too
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                if not self._warned_nonfinite:
                    log.warning(
                        "run %s: %s is %r at step %d; only finite numbers are stored",
                        self.name,
                        key,
                        value,
                        step,
                    )
                    self._warned_nonfinite = True
                continue
            taken.append((key, step, number, at))
        if taken:
            self._ops.append(("points", taken))

    def _send(self) -> None:
        if not _send_spooled(self._store, sorted(self._spool.glob(f"{self.id}-*.json"))):
            self._spool_ops()
            return
        while self._ops:
            op = self._ops[0]
            try:
                _apply(self._store, self.project, self.id, op)
            except Unreachable:
                self._spool_ops()
                return
            except TrackingRefused as exc:
                log.warning("run %s: %s", self.name, exc)
            self._ops.popleft()

    def _spool_ops(self) -> None:
        self._spool.mkdir(parents=True, exist_ok=True)
        while self._ops:
            kind, payload = self._ops.popleft()
            entry = {"op": kind, "project": self.project, "run": self.id, "payload": payload}
            name = self._spool / f"{self.id}-{time.time_ns():020d}.json"
            temporary = name.with_suffix(".tmp")
            temporary.write_text(json.dumps(entry))
            temporary.replace(name)


def _apply(store: Store, project: str, run_id: str, op: tuple[str, Any]) -> None:
    kind, payload = op
    if kind == "create":
        store.create(payload)
    elif kind == "points":
        store.points(project, run_id, [(k, s, v, t) for k, s, v, t in payload])
    else:
        store.finish(project, run_id, payload)


def _send_spooled(store: Store, files: list[Path]) -> bool:
    """Send spooled operations in order; False when the store is still unreachable."""
    for path in files:
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            continue  # another process sent it
        try:
            _apply(store, entry["project"], entry["run"], (entry["op"], entry["payload"]))
        except Unreachable:
            return False
        except TrackingRefused as exc:
            log.warning("spooled %s for run %s refused: %s", entry["op"], entry["run"], exc)
        path.unlink(missing_ok=True)
    return True


def _drain_spool(store: Store, folder: Path, *, skip: str) -> None:
    if not folder.is_dir():
        return
    by_run: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*.json")):
        run_id = path.name[:36]
        if run_id != skip:
            by_run.setdefault(run_id, []).append(path)
    for files in by_run.values():
        if not _send_spooled(store, files):
            return


_active: set[Run] = set()


def _finish_at_exit() -> None:
    for run in list(_active):
        run.finish("finished")


def _crash_on_uncaught(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    for run in list(_active):
        run.finish("crashed")
    _previous_hook(kind, error, trace)


_previous_hook = sys.excepthook
sys.excepthook = _crash_on_uncaught
atexit.register(_finish_at_exit)


def start(
    project: str,
    name: str,
    params: dict[str, Any] | None = None,
    *,
    experiment: str = "default",
    tags: dict[str, str] | None = None,
    code_version: str | None = None,
    model_version: str | None = None,
) -> Run:
    """Start a run of ``project`` named ``name`` with hyperparameters ``params``."""
    return Run(
        _store(),
        project=project,
        name=name,
        params=params or {},
        experiment=experiment,
        tags=tags or {},
        code_version=code_version,
        model_version=model_version,
    )


def runs(project: str, experiment: str | None = None) -> list[RunRecord]:
    """The runs of ``project`` this user can see, with their parameters and metrics."""
    store = _store()
    try:
        return store.runs(project, experiment)
    finally:
        store.close()


def push(project: str | None = None) -> int:
    """Send the runs of the local file (one project's, or all) to the configured platform;
    returns how many. Safe to repeat: what the platform has is not stored twice."""
    from modelcloud._platform import connection

    conn = connection()
    local = LocalStore(local_db())
    remote = RemoteStore(conn.url, conn.token)
    try:
        records = local.runs(project, None)
        for record in records:
            remote.create(
                {
                    "id": record.id,
                    "project": record.project,
                    "name": record.name,
                    "experiment": record.experiment,
                    "params": record.params,
                    "tags": {},
                }
            )
            now = time.time()
            points = [
                (key, step, value, now)
                for key, series in record.metrics.items()
                for step, value in series
            ]
            remote.points(record.project, record.id, points)
            if record.status != "running":
                remote.finish(record.project, record.id, record.status)
        return len(records)
    finally:
        local.close()
        remote.close()
