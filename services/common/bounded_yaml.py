"""YAML read from untrusted uploads with its cost bounded before anything is built.

``yaml.safe_load`` alone is unsafe on hostile input: its composer and constructor recurse
once per nesting level (20,000 nested ``[`` ended in a ``RecursionError``, a 500, after 41 s
of a frozen event loop), and aliases expand exponentially (the "billion laughs"). Here the
text is first checked for size, then walked as a stream of parser events, which is
iterative and stops at the first event past the limits: more than ``max_depth`` nested
collections, any alias, more than one document. Only a document that passed is loaded.

libyaml's parser is used when PyYAML has it: it is iterative and fast (the pure-Python
scanner looks up to 1,024 characters ahead for a possible key at every nesting level, up
to 0.6 s on a line of ``[``). Both block: async callers run :func:`load_yaml` in a worker
thread (``asyncio.to_thread``).
"""

from typing import Any, Final

import yaml

__all__ = ["MAX_DEPTH", "YamlRejected", "load_yaml"]

MAX_DEPTH: Final = 64
_Loader: Final[type[yaml.SafeLoader]] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlRejected(ValueError):
    """The text is refused; ``message`` says why (with a line number when there is one)
    and is safe to show the sender."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def load_yaml(text: str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The one document in ``text`` as Python data (``None`` when empty), built with
    ``yaml.SafeLoader``'s types. Raises :class:`YamlRejected`."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise YamlRejected(f"is {size} bytes, over the limit of {max_bytes}")
    try:
        _check_events(text, max_depth)
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader, checked above
    except YamlRejected:
        raise
    except yaml.YAMLError as exc:
        raise YamlRejected(f"is not valid YAML: {_problem(exc)}") from None
    except (ValueError, RecursionError, MemoryError):
        # An integer past Python's 4,300-digit limit, say: not YAML we can hold.
        raise YamlRejected("is not valid YAML: a value cannot be read") from None


def _check_events(text: str, max_depth: int) -> None:
    loader = _Loader(text)
    depth = documents = 0
    try:
        while loader.check_event():
            event = loader.get_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > max_depth:
                    raise YamlRejected(
                        f"{_line(event)}nests deeper than {max_depth} levels of lists and mappings"
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(event, yaml.AliasEvent):
                # `*ref` to nested `&ref` lists expands exponentially; no build file needs one.
                raise YamlRejected(f"{_line(event)}YAML aliases (*name) are not allowed")
            elif isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise YamlRejected(f"{_line(event)}holds more than one YAML document")
    finally:
        loader.dispose()


def _line(event: yaml.Event) -> str:
    mark = event.start_mark
    return f"line {mark.line + 1}: " if mark is not None else ""


def _problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"{exc.problem or 'syntax error'} (line {exc.problem_mark.line + 1})"
    return str(exc)
