"""The tracker with no server: a real training loop (scikit-learn's digits) logs through
the three-step API into a local SQLite file, and reads back as the seed promises."""

import importlib.util
import logging
from pathlib import Path
from types import ModuleType

import pytest

import modelcloud


@pytest.fixture(autouse=True)
def local_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODELCLOUD_TRACKING", "local")
    monkeypatch.setenv("MODELCLOUD_TRACKING_DB", str(tmp_path / "tracking.db"))
    monkeypatch.setenv("MODELCLOUD_TRACKING_SPOOL", str(tmp_path / "spool"))
    return tmp_path / "tracking.db"


def digits_example() -> ModuleType:
    """``examples/digits-training/train.py``, the example users run."""
    path = Path(__file__).resolve().parents[2] / "examples" / "digits-training" / "train.py"
    spec = importlib.util.spec_from_file_location("digits_training", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_steps_then_read_back_with_no_server() -> None:
    run = modelcloud.tracking.start(project="digits", name="sgd", params={"alpha": 1e-4})
    digits_example().train(run, epochs=5, alpha=1e-4)
    run.finish()

    (found,) = modelcloud.tracking.runs(project="digits")
    assert found.name == "sgd"
    assert found.status == "finished"
    assert found.params == {"alpha": 1e-4}
    assert set(found.metrics) == {"loss", "acc", "precision", "f1"}
    assert [step for step, _ in found.metrics["acc"]] == [0, 1, 2, 3, 4]
    assert found.metrics["acc"][-1][1] > 0.85  # it really learned the digits
    assert found.metrics["loss"][-1][1] < found.metrics["loss"][0][1] * 1.5


def test_a_raising_block_marks_the_run_failed_and_keeps_its_points() -> None:
    def diverge() -> None:
        with modelcloud.tracking.start("digits", "boom") as run:
            run.log(loss=1.0)
            run.log(loss=0.5)  # the next step
            raise RuntimeError("diverged")

    with pytest.raises(RuntimeError):
        diverge()
    (found,) = modelcloud.tracking.runs(project="digits")
    assert found.status == "failed"
    assert found.metrics == {"loss": [(0, 1.0), (1, 0.5)]}


def test_non_finite_values_are_dropped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), modelcloud.tracking.start("digits", "nan") as run:
        run.log(step=0, loss=float("nan"), acc=0.5)
        run.log(step=1, loss=float("inf"), acc=0.6)
        run.log(step=2, loss="high", acc=0.7)  # type: ignore[arg-type]
    (found,) = modelcloud.tracking.runs(project="digits")
    assert found.metrics == {"acc": [(0, 0.5), (1, 0.6), (2, 0.7)]}
    warnings = [r for r in caplog.records if "only finite numbers" in r.getMessage()]
    assert len(warnings) == 1


def test_runs_are_listed_per_project_and_experiment() -> None:
    for project, experiment in (("a", "x"), ("a", "y"), ("b", "x")):
        modelcloud.tracking.start(
            project, f"{project}-{experiment}", experiment=experiment
        ).finish()
    assert [r.name for r in modelcloud.tracking.runs("a")] == ["a-x", "a-y"]
    assert [r.name for r in modelcloud.tracking.runs("a", experiment="y")] == ["a-y"]


def test_finish_while_the_sender_is_busy_loses_nothing() -> None:
    for attempt in range(3):  # finish() lands at a different moment of the sender's cycle
        run = modelcloud.tracking.start("load", f"many-{attempt}")
        for step in range(20_000):
            run.log(step=step, loss=1.0, acc=0.5, precision=0.25, f1=0.125)
        run.finish()
    for found in modelcloud.tracking.runs("load"):
        assert found.status == "finished"
        assert {key: len(points) for key, points in found.metrics.items()} == dict.fromkeys(
            ("acc", "f1", "loss", "precision"), 20_000
        )
