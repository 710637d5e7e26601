"""The tracker against the embedded platform: a real training run logged through the
gateway and read back; and the platform away in the middle of a run: the points wait on
disk and arrive once it is back, each once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import modelcloud
from modelcloud_testing.embedded import Embedded
from modelcloud_testing.tracking import DIGITS_TRAINING

pytestmark = pytest.mark.timeout(300)


def test_a_training_script_logs_through_the_gateway(tracking_env: Embedded, tmp_path: Path) -> None:
    trained = subprocess.run(
        [sys.executable, str(DIGITS_TRAINING), "--name", "sgd", "--epochs", "8"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=os.environ.copy(),
    )
    assert trained.returncode == 0, trained.stderr
    (run,) = modelcloud.tracking.runs(project="digits")
    assert run.name == "sgd"
    assert run.status == "finished"
    assert run.user == "admin"  # the identity of the platform's token
    assert run.params == {"alpha": 0.0001, "epochs": 8}
    assert [step for step, _ in run.metrics["f1"]] == list(range(8))
    assert run.metrics["acc"][-1][1] > 0.85
    assert not list((tmp_path / "spool").glob("*.json"))  # nothing was left waiting
    other = subprocess.run(
        [
            sys.executable,
            str(DIGITS_TRAINING),
            "--name",
            "other",
            "--alpha",
            "0.01",
            "--epochs",
            "8",
        ],
        capture_output=True,
        timeout=120,
        check=True,
        env=os.environ.copy(),
    )
    assert other.returncode == 0
    config = json.loads((tmp_path / ".modelcloud" / "config.json").read_text())
    token = Path(config["token_file"]).read_text().strip()
    runs = httpx.get(
        f"{config['url']}/v1/projects/digits/runs", headers={"Authorization": f"Bearer {token}"}
    ).json()
    compared = httpx.get(  # repeated query keys pass the gateway as they are
        f"{config['url']}/v1/projects/digits/runs/compare",
        params={"run": [r["id"] for r in runs]},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert compared["differing"] == ["alpha"]
    assert not (tmp_path / "never-used.db").exists()  # the platform took it, not a local file


def test_points_wait_on_disk_while_the_platform_is_away(
    tracking_env: Embedded, tmp_path: Path
) -> None:
    run = modelcloud.tracking.start("digits", "interrupted", params={"lr": 0.1})
    for step in range(5):
        run.log(step=step, loss=1.0 / (step + 1))
    tracking_env.down()
    for step in range(5, 10):
        run.log(step=step, loss=1.0 / (step + 1))
    run.finish()  # the platform is down: the rest waits on disk
    assert list((tmp_path / "spool").glob("*.json"))

    tracking_env.up()
    with modelcloud.tracking.start("digits", "next") as later:  # sends what waited first
        later.log(step=0, loss=0.5)
    assert not list((tmp_path / "spool").glob("*.json"))
    runs = {r.name: r for r in modelcloud.tracking.runs(project="digits")}
    interrupted = runs["interrupted"]
    assert interrupted.status == "finished"
    assert interrupted.metrics["loss"] == [(s, 1.0 / (s + 1)) for s in range(10)]  # each once
    assert runs["next"].metrics == {"loss": [(0, 0.5)]}
    assert interrupted.params == {"lr": 0.1}
