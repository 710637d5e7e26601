"""Runs, their parameters and metric points: creating, ingesting, reading, comparing.

Each user sees their own runs and the runs shared with the project; any other run id is
answered 404, as if it did not exist. Points are inserted in batches with "on conflict do
nothing" on (run, key, step), so a batch sent twice (a retry after a lost answer, a spooled
batch sent again) stores each point once.
"""

import json
import operator
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import and_, func, or_
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.problems import Conflict, NotFound, PayloadTooLarge
from services.metrics.runs.live import POINTS_PER_EVENT, LiveHub, Update
from services.metrics.runs.models import (
    Comparison,
    IngestResult,
    MetricPoint,
    PointBatch,
    PointColumns,
    Run,
    RunCreate,
    RunParam,
    RunRead,
    RunStatus,
    RunUpdate,
    Series,
)

_COMPARE: dict[str, Callable[[Any, float], Any]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
METRIC_FILTER = re.compile(r"^(?P<key>.+?)(?P<op>>=|<=|>|<)(?P<bound>[-+0-9.eE]+)$")


async def create_run(
    session: AsyncSession, project: str, user: str, data: RunCreate, hub: LiveHub | None = None
) -> RunRead:
    run_id = data.id or uuid4()
    existing = await session.get(Run, run_id)
    if existing is not None:
        if existing.user != user or existing.project != project:
            raise Conflict(f"run id {run_id} is taken")
        return await read_run(session, existing)  # a retried create
    now = datetime.now(UTC)
    run = Run(
        id=run_id,
        project=project,
        experiment=data.experiment,
        name=data.name,
        user=user,
        status=RunStatus.RUNNING,
        started_at=now,
        last_seen_at=now,
        tags=data.tags,
        code_version=data.code_version,
        model_version=data.model_version,
        shared=data.shared,
    )
    session.add(run)
    await session.flush()
    for key, value in data.params.items():
        session.add(RunParam(run_id=run_id, key=key, value=json.dumps(value)))
    await session.commit()
    read = await read_run(session, run)
    _announce(hub, run, read)
    return read


async def visible_run(session: AsyncSession, project: str, user: str, run_id: UUID) -> Run:
    run = await session.get(Run, run_id)
    if run is None or run.project != project or (run.user != user and not run.shared):
        raise NotFound(f"there is no run {run_id} in project {project!r}")
    return run


async def own_run(session: AsyncSession, project: str, user: str, run_id: UUID) -> Run:
    run = await visible_run(session, project, user, run_id)
    if run.user != user:
        raise NotFound(f"run {run_id} is shared with you, but only {run.user} changes it")
    return run


async def log_params(session: AsyncSession, run: Run, params: dict[str, Any]) -> RunRead:
    for key, value in params.items():
        found = await session.get(RunParam, (run.id, key))
        if found is None:
            session.add(RunParam(run_id=run.id, key=key, value=json.dumps(value)))
        else:
            found.value = json.dumps(value)
    run.last_seen_at = datetime.now(UTC)
    await session.commit()
    return await read_run(session, run)


async def ingest(
    session: AsyncSession,
    run: Run,
    batch: PointBatch,
    max_points: int,
    hub: LiveHub | None = None,
) -> IngestResult:
    now = datetime.now(UTC)
    columns = batch.columns(now.timestamp())
    received = len(columns)
    if received > max_points:
        raise PayloadTooLarge(f"at most {max_points} points per request; send them in batches")
    stored = await _insert_points(session, run.id, columns) if received else 0
    run.last_seen_at = now
    revived = run.status is RunStatus.CRASHED
    if revived:  # it was only quiet: it is alive
        run.status = RunStatus.RUNNING
    await session.commit()
    if hub is not None and stored:
        if received > POINTS_PER_EVENT:
            hub.publish(run.project, Update(run.id, run.user, run.shared, "reload", {}))
        else:
            points = zip(columns.keys, columns.steps, columns.values, strict=True)
            data = {"points": [list(point) for point in points]}
            hub.publish(run.project, Update(run.id, run.user, run.shared, "points", data))
    if revived:
        _announce(hub, run, await read_run(session, run))
    return IngestResult(received=received, stored=stored)


async def _insert_points(session: AsyncSession, run_id: UUID, columns: PointColumns) -> int:
    """Insert what is new; returns how many were. Points already stored are left alone."""
    connection = await session.connection()
    dialect = connection.dialect
    if dialect.name == "sqlite":
        # The driver's own executemany (one prepared statement, the loop in C) is several
        # times faster than building the rows into statements; its rowcount counts the
        # rows inserted, which "on conflict do nothing" leaves out.
        table = MetricPoint.__table__.c  # type: ignore[attr-defined]
        run_key = _to_driver(table.run_id, dialect)(run_id)
        moment = _to_driver(table.logged_at, dialect)
        rows = [
            (run_key, key, step, value, moment(datetime.fromtimestamp(at, UTC)))
            for key, step, value, at in zip(
                columns.keys, columns.steps, columns.values, columns.times, strict=True
            )
        ]
        result = await connection.exec_driver_sql(
            "INSERT INTO metric_point (run_id, key, step, value, logged_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            rows,
        )
        return max(result.rowcount, 0)
    # PostgreSQL: one statement over the columns as arrays, whatever the number of points.
    result = await connection.exec_driver_sql(
        "INSERT INTO metric_point (run_id, key, step, value, logged_at) "
        "SELECT $1::uuid, k, s, v, to_timestamp(t) FROM unnest($2::text[], $3::bigint[], "
        "$4::float8[], $5::float8[]) AS u(k, s, v, t) ON CONFLICT DO NOTHING",
        (run_id, columns.keys, columns.steps, columns.values, columns.times),
    )
    return max(result.rowcount, 0)


def _to_driver(column: Any, dialect: Dialect) -> Callable[[Any], Any]:
    """How SQLAlchemy writes this column's values for this database (UUIDs as hex, times
    as text on SQLite), so rows sent past it read back as if it had written them."""
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return process if process is not None else (lambda value: value)


async def update_run(
    session: AsyncSession, run: Run, data: RunUpdate, hub: LiveHub | None = None
) -> RunRead:
    was_shared = run.shared  # readers who could see it hear that it changed, even unshared
    if data.status is not None:
        run.status = data.status
        run.ended_at = None if data.status is RunStatus.RUNNING else datetime.now(UTC)
    if data.notes is not None:
        run.notes = data.notes
    if data.shared is not None:
        run.shared = data.shared
    if data.tags is not None:
        run.tags = data.tags
    run.last_seen_at = datetime.now(UTC)
    await session.commit()
    read = await read_run(session, run)
    _announce(hub, run, read, shared=was_shared or run.shared)
    return read


def _announce(hub: LiveHub | None, run: Run, read: RunRead, *, shared: bool | None = None) -> None:
    if hub is not None:
        update = Update(
            run.id,
            run.user,
            run.shared if shared is None else shared,
            "run",
            read.model_dump(mode="json"),
        )
        hub.publish(run.project, update)


async def list_runs(
    session: AsyncSession,
    project: str,
    user: str,
    *,
    experiment: str | None = None,
    status: RunStatus | None = None,
    params: dict[str, str] | None = None,
    metrics: list[tuple[str, str, float]] | None = None,
    limit: int = 100,
) -> list[RunRead]:
    query = select(Run).where(Run.project == project, or_(col(Run.user) == user, col(Run.shared)))
    if experiment is not None:
        query = query.where(Run.experiment == experiment)
    if status is not None:
        query = query.where(Run.status == status)
    for key, value in (params or {}).items():
        query = query.where(
            select(RunParam.run_id)
            .where(
                RunParam.run_id == Run.id,
                RunParam.key == key,
                or_(col(RunParam.value) == value, col(RunParam.value) == json.dumps(value)),
            )
            .exists()
        )
    for key, comparison, bound in metrics or []:
        later = aliased(MetricPoint)
        last_step = (
            select(func.max(later.step))
            .where(later.run_id == Run.id, later.key == key)
            .scalar_subquery()
        )
        query = query.where(
            select(MetricPoint.run_id)
            .where(
                col(MetricPoint.run_id) == Run.id,
                col(MetricPoint.key) == key,
                col(MetricPoint.step) == last_step,
                _COMPARE[comparison](col(MetricPoint.value), bound),
            )
            .exists()
        )
    runs = (await session.exec(query.order_by(col(Run.started_at).desc()).limit(limit))).all()
    return await read_runs(session, runs)


async def series(session: AsyncSession, run: Run, key: str, max_points: int) -> Series:
    """A metric's points by step; evenly thinned to about ``max_points`` when longer (the
    first and the last point always kept)."""
    total = (
        await session.exec(
            select(func.count()).where(MetricPoint.run_id == run.id, MetricPoint.key == key)
        )
    ).one()
    query = select(MetricPoint.step, MetricPoint.value).where(
        MetricPoint.run_id == run.id, MetricPoint.key == key
    )
    if total > max_points:
        stride = -(-total // max_points)
        numbered = (
            select(
                MetricPoint.step,
                MetricPoint.value,
                func.row_number().over(order_by=col(MetricPoint.step)).label("n"),
            )
            .where(MetricPoint.run_id == run.id, MetricPoint.key == key)
            .subquery()
        )
        query = select(numbered.c.step, numbered.c.value).where(
            or_((numbered.c.n - 1) % stride == 0, numbered.c.n == total)
        )
        rows = (await session.exec(query.order_by(numbered.c.step))).all()
    else:
        rows = (await session.exec(query.order_by(col(MetricPoint.step)))).all()
    return Series(
        key=key, steps=[r[0] for r in rows], values=[r[1] for r in rows], total=int(total)
    )


async def compare(
    session: AsyncSession, project: str, user: str, run_ids: Sequence[UUID]
) -> Comparison:
    runs = await read_runs(session, [await visible_run(session, project, user, i) for i in run_ids])
    keys = sorted({key for run in runs for key in run.params})
    params = {
        key: {str(run.id): run.params[key] for run in runs if key in run.params} for key in keys
    }
    differing = [
        key
        for key in keys
        if len(params[key]) != len(runs) or len({json.dumps(v) for v in params[key].values()}) > 1
    ]
    return Comparison(runs=runs, params=params, differing=differing)


async def mark_quiet_runs_crashed(session: AsyncSession, quiet_for_s: float) -> int:
    """Runs still 'running' that have sent nothing for ``quiet_for_s``: their process died
    without a word (SIGKILL, a lost machine)."""
    cutoff = datetime.now(UTC) - timedelta(seconds=quiet_for_s)
    quiet = (
        await session.exec(
            select(Run).where(
                and_(col(Run.status) == RunStatus.RUNNING, col(Run.last_seen_at) < cutoff)
            )
        )
    ).all()
    for run in quiet:
        run.status = RunStatus.CRASHED
        run.ended_at = run.last_seen_at
    await session.commit()
    return len(quiet)


async def read_run(session: AsyncSession, run: Run) -> RunRead:
    (read,) = await read_runs(session, [run])
    return read


async def read_runs(session: AsyncSession, runs: Sequence[Run]) -> list[RunRead]:
    """The runs with their parameters and each metric's last value: two queries for all."""
    ids = [run.id for run in runs]
    params: dict[UUID, dict[str, Any]] = {i: {} for i in ids}
    for param in await session.exec(select(RunParam).where(col(RunParam.run_id).in_(ids))):
        params[param.run_id][param.key] = json.loads(param.value)
    last = (
        select(MetricPoint.run_id, MetricPoint.key, func.max(MetricPoint.step).label("step"))
        .where(col(MetricPoint.run_id).in_(ids))
        .group_by(col(MetricPoint.run_id), col(MetricPoint.key))
        .subquery()
    )
    latest: dict[UUID, dict[str, float]] = {i: {} for i in ids}
    rows = await session.exec(
        select(MetricPoint.run_id, MetricPoint.key, MetricPoint.value).join(
            last,
            and_(
                col(MetricPoint.run_id) == last.c.run_id,
                col(MetricPoint.key) == last.c.key,
                col(MetricPoint.step) == last.c.step,
            ),
        )
    )
    for run_id, key, value in rows:
        latest[run_id][key] = value
    return [
        RunRead(
            id=run.id,
            project=run.project,
            experiment=run.experiment,
            name=run.name,
            user=run.user,
            status=run.status,
            started_at=_utc(run.started_at),
            ended_at=_utc(run.ended_at) if run.ended_at else None,
            tags=run.tags,
            code_version=run.code_version,
            model_version=run.model_version,
            notes=run.notes,
            shared=run.shared,
            params=params[run.id],
            latest=latest[run.id],
        )
        for run in runs
    ]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
