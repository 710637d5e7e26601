"""The longest an upload may take (``FILESTORE_UPLOAD_MAX_AGE_S``), enforced at its end.

An upload still going on after that long is refused when it completes, and commits
nothing: so whatever an upload left behind that is older than the limit (a temporary file,
an unfinished multipart upload, an object no entry reads) is abandoned by definition, and
start-up clean-up (``blobs/cleanup.py``) and the collector may remove it without asking
which replica started it.
"""

import time

from services.common.problems import ServiceProblem


class UploadExpired(ServiceProblem):
    """410: the upload took longer than the file store lets one take; start it again."""

    status, slug, title = 410, "upload-expired", "Upload expired"


def check_age(*, started: float, max_age_s: float, path: str, now: float | None = None) -> None:
    """Refuse an upload begun at ``started`` (``time.time()``) over ``max_age_s`` ago."""
    elapsed = (time.time() if now is None else now) - started
    if elapsed > max_age_s:
        raise UploadExpired(
            f"{path}: the upload took {elapsed:.0f} s, over the {max_age_s:.0f} s an upload may "
            "take; its bytes were not kept, upload it again"
        )
