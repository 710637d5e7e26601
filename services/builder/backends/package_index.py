"""The package-index settings a build hands to pip: a short allowlist, and no credential.

An index URL may carry credentials (``https://user:token@host/simple/``). Build steps are
the model author's code, and a Docker build shows every build argument in ``docker
history``, so no backend hands a credential to a build: a URL with a user, a password or a
query string (where tokens also travel) is refused, naming the setting and never echoing
the secret. An index that needs authentication is reached through a proxy that adds it on
the builder's network (docs/SECURITY.md). A token written into a URL's path cannot be told
from a folder name and is not caught here.
"""

from collections.abc import Mapping
from urllib.parse import urlsplit

# The pip variables a build may receive, and the builder setting each comes from (for the
# message). Everything else pip reads from the environment (PIP_PROXY, PIP_CLIENT_CERT,
# PIP_CONFIG_FILE, ...) is left out: it could carry or point at a secret.
ALLOWED = {
    "PIP_INDEX_URL": "BUILDER_INDEX_URL",
    "PIP_EXTRA_INDEX_URL": "BUILDER_EXTRA_INDEX_URLS",
    "PIP_FIND_LINKS": "BUILDER_FIND_LINKS",
    "PIP_TRUSTED_HOST": "BUILDER_TRUSTED_HOSTS",
    "PIP_CERT": "BUILDER_CA_BUNDLE",
    "PIP_NO_INDEX": "PIP_NO_INDEX",
}
_URL_LISTS = frozenset({"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"})


class IndexCredentials(ValueError):
    """A package-index setting holds a credential; the message names the setting and shows
    the URL with the secret masked."""


def redact(url: str) -> str:
    """``url`` with any user, password and query masked, for messages and logs."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    query = "?***" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}" if parts.scheme else "***"


def credential_in(url: str) -> bool:
    """Whether a URL carries a user, a password or a query string."""
    parts = urlsplit(url)
    return "@" in parts.netloc or bool(parts.query)


def index_settings(variables: Mapping[str, str]) -> dict[str, str]:
    """The allowed pip variables of ``variables``, each checked: raises
    :class:`IndexCredentials` for the first one that holds a credential."""
    kept = {name: value for name, value in variables.items() if name in ALLOWED}
    for name, value in kept.items():
        setting = ALLOWED[name]
        if name in _URL_LISTS:
            for url in value.split():
                if credential_in(url):
                    raise IndexCredentials(
                        f"{setting} holds a credential ({redact(url)}): builds never pass "
                        "package-index credentials on, since build steps could print them "
                        "and an image's history shows them; give the builder access to "
                        "the index without them (a proxy that authenticates, or an index "
                        "open to the builder's address)"
                    )
        elif name == "PIP_TRUSTED_HOST" and "@" in value:
            raise IndexCredentials(f"{setting} holds a credential: give host names only")
    return kept
