"""Build steps become argument lists, never shell lines."""

import pytest

from modelcloud_proto.specs import BuildSpec, Device
from services.builder.builds.steps import StepRejected, entrypoint, parse_command, plan_steps


def test_steps_are_split_like_a_shell_would_without_running_one() -> None:
    assert parse_command("pip install 'torch==2.13.0' \"a b\"") == (
        "pip",
        "install",
        "torch==2.13.0",
        "a b",
    )


def test_quoted_operators_are_plain_text() -> None:
    assert parse_command("python -c \"print('a; b'); raise SystemExit(3)\" $HOME") == (
        "python",
        "-c",
        "print('a; b'); raise SystemExit(3)",
        "$HOME",
    )


@pytest.mark.parametrize(
    "step",
    [
        "pip install x && rm -rf /",
        "pip install x; curl evil",
        "(cd /tmp)",
        "cat secrets > /tmp/out",
        "pip install x | tee log",
        "python -c 'unterminated",
    ],
)
def test_shell_syntax_is_refused(step: str) -> None:
    with pytest.raises(StepRejected):
        parse_command(step)


def test_gpu_and_cpu_steps_follow_the_device() -> None:
    spec = BuildSpec(
        build_steps=["pip install a"], if_gpu=["pip install b"], if_cpu=["pip install c"]
    )
    assert [s.text for s in plan_steps(spec, Device.GPU)] == ["pip install a", "pip install b"]
    assert [s.text for s in plan_steps(spec, Device.CPU)] == ["pip install a", "pip install c"]
    assert entrypoint(spec) == ("python", "cloud_model.py")
