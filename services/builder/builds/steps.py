"""A build spec as the steps a backend runs: validated argument lists, never shell lines.

Each step is split like a POSIX shell would split it (quotes, backslashes), but no shell
runs it: unquoted operators (pipes, redirections, ``;``, ``&&``, subshells) are refused,
and ``$VAR`` or backticks reach the program as they are written. So a step can never be
pasted into a shell line, and the Docker backend writes it as a JSON exec-form
``RUN [...]``.
"""

import shlex
from dataclasses import dataclass
from pathlib import Path

from modelcloud_proto.specs import BuildSpec, Device

_OPERATOR_CHARS = frozenset(";&|<>()")


class StepRejected(ValueError):
    """A build step or entrypoint cannot be run as a plain command."""

    step = "modelcloud.yml"


@dataclass(frozen=True)
class Step:
    """``text`` as the author wrote it (for logs and failures), ``argv`` as it runs."""

    text: str
    argv: tuple[str, ...]


def parse_command(text: str) -> tuple[str, ...]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise StepRejected(f"{text!r}: {exc}") from None
    if any(token and set(token) <= _OPERATOR_CHARS for token in tokens):
        raise StepRejected(
            f"{text!r}: shell operators (; & | < > ( )) are not run by a shell here; "
            "write one command per step"
        )
    argv = tuple(shlex.split(text))
    if not argv:
        raise StepRejected("an empty command")
    return argv


def plan_steps(spec: BuildSpec, device: Device) -> list[Step]:
    """The spec's steps for a build that will run on ``device`` (``if_gpu`` steps for a GPU
    service, ``if_cpu`` steps otherwise)."""
    extra = spec.if_gpu if device is Device.GPU else spec.if_cpu
    return [Step(text, parse_command(text)) for text in [*spec.build_steps, *extra]]


def entrypoint(spec: BuildSpec) -> tuple[str, ...]:
    return parse_command(spec.entrypoint)


def check_entrypoint(command: tuple[str, ...], source: Path) -> None:
    """``python script.py``: the script must be in the bundle."""
    script = command[1] if len(command) > 1 else "-"
    is_script = Path(command[0]).name.startswith("python") and not script.startswith("-")
    if is_script and not (source / script).is_file():
        raise StepRejected(f"{script} is not in the bundle")


def prepare(spec: BuildSpec, device: Device, source: Path) -> tuple[list[Step], tuple[str, ...]]:
    """The steps and the entrypoint of a build, or :class:`StepRejected` naming the part at
    fault (``modelcloud.yml`` or ``entrypoint``) as ``.step``."""
    try:
        steps, command = plan_steps(spec, device), entrypoint(spec)
    except StepRejected as exc:
        exc.step = "modelcloud.yml"
        raise
    try:
        check_entrypoint(command, source)
    except StepRejected as exc:
        exc.step = "entrypoint"
        raise
    return steps, command
