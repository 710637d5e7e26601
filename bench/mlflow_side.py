"""MLflow's half of bench/tracking.py, run in a virtual environment of its own (MLflow pins
packages of its own): ``mlflow.log_metric`` one point per call, and
``MlflowClient.log_batch`` with MLflow's largest batch (1,000 metrics per call), into the
tracking store given (a SQLite file or a PostgreSQL database). Prints one JSON line."""

import json
import sys
import time

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient


def main() -> None:
    store, per_call_points, batch_points = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mlflow.set_tracking_uri(store)
    client = MlflowClient(store)
    experiment = client.create_experiment(f"bench-{time.time_ns()}")

    with mlflow.start_run(experiment_id=experiment):
        started = time.perf_counter()
        for step in range(per_call_points):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        per_call_s = time.perf_counter() - started

    run = client.create_run(experiment)
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, 1.0 / (step + 1), now, step)
        for step in range(batch_points // 4)
        for key in ("loss", "acc", "precision", "f1")
    ]
    started = time.perf_counter()
    for start in range(0, len(metrics), 1000):
        client.log_batch(run.info.run_id, metrics=metrics[start : start + 1000])
    batch_s = time.perf_counter() - started
    client.set_terminated(run.info.run_id)
    print(
        json.dumps(
            {
                "mlflow": mlflow.__version__,
                "log_metric_points": per_call_points,
                "log_metric_s": per_call_s,
                "log_batch_points": len(metrics),
                "log_batch_s": batch_s,
            }
        )
    )


if __name__ == "__main__":
    main()
