"""Training-metadata tracking in three steps::

    import modelcloud

    run = modelcloud.tracking.start(project="digits", name="baseline", params={"lr": 0.01})
    for epoch in range(10):
        ...
        run.log(epoch=epoch, loss=loss, acc=acc, precision=precision, f1=f1)
    run.finish()

``start`` also works as a context manager (``with modelcloud.tracking.start(...) as run``):
the run is marked ``failed`` if the block raises. ``run.log`` only appends to a buffer
(microseconds); a background thread sends the points in batches and at ``finish``/exit.

Where runs go: the platform the CLI is configured for (``MODELCLOUD_URL`` and
``MODELCLOUD_TOKEN``, or what ``modelcloud up`` wrote), else a local SQLite file
(``~/.modelcloud/tracking.db``, or ``MODELCLOUD_TRACKING_DB``) with no server at all;
``MODELCLOUD_TRACKING=local`` picks the file even when a platform is configured. When the
platform cannot be reached, batches wait on disk (``~/.modelcloud/tracking/spool``) and are
sent later, in order, by this process or the next one; the service stores a replayed point
once. :func:`push` sends a local file's runs to the platform.

Reading back (notebooks): ``modelcloud.tracking.runs(project=...)`` returns the runs, each
with ``.name``, ``.params``, ``.status`` and ``.metrics`` (metric name -> list of
``(step, value)``).
"""

from modelcloud.tracking._run import Run, push, runs, start
from modelcloud.tracking._stores import RunRecord

__all__ = ["Run", "RunRecord", "push", "runs", "start"]
