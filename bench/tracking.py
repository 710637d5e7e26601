"""The tracker against MLflow: points ingested per second and the cost of one ``run.log``
call in a training loop (issue 7).

Method. One run, same machine, same kind of store (``--store sqlite``, the default of both:
a SQLite file; ``--store postgres``: a fresh PostgreSQL database for each side):

* tracker, end to end: ``modelcloud up`` (every service in one process; the metrics service
  on that store), then in this process ``modelcloud.tracking.start`` and ``--steps`` calls
  of ``run.log(step=..., loss=..., acc=..., precision=..., f1=...)`` (4 points each), then
  ``run.finish()``. *log call*: the loop's time per call (the background sender runs
  meanwhile, as in training); *ingested*: points / (first call to ``finish`` returned, every
  point stored).
* tracker API: the same points posted straight to ``/v1/projects/{p}/runs/{id}/metrics``
  through the gateway in requests of 20,000 (what the tracker sends), no SDK.
* tracker, no server: the same loop with ``MODELCLOUD_TRACKING=local`` (a SQLite file).
* MLflow (``bench/mlflow_side.py`` in a virtual environment of its own, ``mlflow`` from the
  package index, same store kind): ``mlflow.log_metric`` one point per call
  (``--mlflow-points`` points), and ``MlflowClient.log_batch`` with 1,000 metrics per call
  (MLflow's limit) for the same points as the tracker.
"""

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from local_platform import clean_env, embedded

ROOT = Path(__file__).resolve().parent
MLFLOW_VENV = ROOT / "out" / "mlflow-venv"
POSTGRES = os.environ.get("MODELCLOUD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def mlflow_python() -> Path:
    python = MLFLOW_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "mlflow", "psycopg2-binary"], check=True
        )
    return python


def database(action: str, name: str) -> None:
    async def run() -> None:
        import asyncpg

        admin = await asyncpg.connect(f"{POSTGRES}/postgres")
        try:
            if action == "create":
                await admin.execute(f'CREATE DATABASE "{name}"')
            else:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(run())


def training_loop(steps: int) -> tuple[float, float]:
    """(seconds in the loop, seconds until finish returned) for one tracked run."""
    import modelcloud

    run = modelcloud.tracking.start("bench", f"run-{uuid.uuid4().hex[:6]}", params={"lr": 0.1})
    started = time.perf_counter()
    for step in range(steps):
        run.log(step=step, loss=1.0 / (step + 1), acc=0.5, precision=0.25, f1=0.125)
    looped = time.perf_counter() - started
    run.finish()
    return looped, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000, help="4 points per step")
    parser.add_argument("--mlflow-points", type=int, default=2_000)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    points = args.steps * 4

    work = Path(tempfile.mkdtemp(prefix="mc-tracking-bench-"))
    names = {side: f"mc_bench_{side}_{uuid.uuid4().hex[:8]}" for side in ("ours", "mlflow")}
    server = POSTGRES.split("://", 1)[1]
    env = clean_env(work)
    if args.store == "postgres":
        for name in names.values():
            database("create", name)
        env["METRICS_DATABASE_URL"] = f"postgresql+asyncpg://{server}/{names['ours']}"
        mlflow_store = f"postgresql+psycopg2://{server}/{names['mlflow']}"
    else:
        mlflow_store = f"sqlite:///{work / 'mlflow.db'}"
    try:
        with embedded(work, env) as (gateway, token):
            headers = {"Authorization": f"Bearer {token}"}
            httpx.post(f"{gateway}/v1/projects", json={"name": "bench"}, headers=headers)
            os.environ.update(
                {
                    "HOME": str(work),
                    "MODELCLOUD_URL": gateway,
                    "MODELCLOUD_TOKEN": token,
                    "MODELCLOUD_TRACKING_DB": str(work / "local.db"),
                }
            )
            training_loop(1000)  # warm-up: imports, connections, the token cache
            loop_s, remote_s = training_loop(args.steps)

            run = httpx.post(
                f"{gateway}/v1/projects/bench/runs", json={"name": "api"}, headers=headers
            ).json()
            bodies = [
                json.dumps(
                    {
                        "points": [
                            {"key": key, "step": step, "value": 0.5}
                            for step in range(start, min(start + 5_000, args.steps))
                            for key in ("loss", "acc", "precision", "f1")
                        ]
                    }
                )
                for start in range(0, args.steps, 5_000)
            ]
            with httpx.Client(base_url=gateway, headers=headers, timeout=120) as client:
                started = time.perf_counter()
                for body in bodies:
                    answer = client.post(
                        f"/v1/projects/bench/runs/{run['id']}/metrics",
                        content=body,
                        headers={"content-type": "application/json"},
                    )
                    answer.raise_for_status()
                api_s = time.perf_counter() - started

            os.environ["MODELCLOUD_TRACKING"] = "local"
            local_loop_s, local_s = training_loop(args.steps)
            del os.environ["MODELCLOUD_TRACKING"]

        side = subprocess.run(
            [
                str(mlflow_python()),
                str(ROOT / "mlflow_side.py"),
                mlflow_store,
                str(args.mlflow_points),
                str(points),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        mlflow = json.loads(side.stdout.strip().splitlines()[-1])
    finally:
        if args.store == "postgres":
            for name in names.values():
                database("drop", name)
        shutil.rmtree(work, ignore_errors=True)

    ours = points / remote_s
    batch = mlflow["log_batch_points"] / mlflow["log_batch_s"]
    single = mlflow["log_metric_points"] / mlflow["log_metric_s"]
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"store {args.store}, {points:,} points ({args.steps:,} steps x 4 metrics), "
        f"MLflow {mlflow['mlflow']}\n"
    )
    print("| what | points | seconds | points/s | vs MLflow log_batch |")
    print("|---|---:|---:|---:|---:|")
    rows = [
        ("tracker through the platform (run.log ... finish)", points, remote_s),
        ("tracker API, 20,000 points per request", points, api_s),
        ("tracker with no server (local SQLite file)", points, local_s),
        ("MLflow log_batch (1,000 per call)", mlflow["log_batch_points"], mlflow["log_batch_s"]),
        ("MLflow log_metric (one per call)", mlflow["log_metric_points"], mlflow["log_metric_s"]),
    ]
    for what, count, seconds in rows:
        print(
            f"| {what} | {count:,} | {seconds:.2f} | {count / seconds:,.0f} | "
            f"{count / seconds / batch:.1f}x |"
        )
    print(
        f"\nrun.log with 4 metrics: {loop_s / args.steps * 1e6:.2f} us per call through the "
        f"platform, {local_loop_s / args.steps * 1e6:.2f} us with no server "
        f"(mlflow.log_metric: {1e6 / single:,.0f} us per point)"
    )
    print(f"tracker through the platform / MLflow log_batch: {ours / batch:.1f}x")


if __name__ == "__main__":
    main()
