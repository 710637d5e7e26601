"""The naming rules of the seed: names are letters, digits, '_' and '-' (no spaces, no '/');
version strings may not contain '_'."""

from typing import Annotated

from pydantic import StringConstraints

Name = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", strip_whitespace=False),
]
VersionString = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9.+-]{0,63}$", strip_whitespace=False)
]
NAME_RULE = "1-64 letters, digits, '_' or '-', starting with a letter or digit"
VERSION_RULE = "1-64 letters, digits, '.', '+' or '-' (no '_'), starting with a letter or digit"
