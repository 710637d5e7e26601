"""The soak's traffic (issue 14), for locust: one user of the platform's gateway doing the
three things users do all day, mixed by weight: model calls (70 %), registry reads (20 %)
and tracker writes (10 %).

``bench/soak.py`` starts the platform, deploys the greeter and runs this file headless; it
hands over what the users need in the environment (a token is kept off the command line):

* ``SOAK_TOKEN``: a project member's token (not the admin's: calls go through the same
  project-role checks as a user's);
* ``SOAK_PROJECT``, ``SOAK_SERVICE``: where the greeter is deployed (``/v1``);
* ``SOAK_USER_RATE``: requests per second per simulated user (``0``: unpaced, each user
  sends its next request as soon as the last one is answered).

Every answer is checked (status and body), and a failure is recorded as
``<status> <first 200 characters of the body>`` so that a 5xx names its route and says why.
A body that does not parse, or lacks what the check reads, is a failed request too (not an
exception, which locust would count apart from the requests).
"""

import itertools
import os
import random
from collections.abc import Callable
from typing import Any

from locust import FastHttpUser, constant, constant_throughput, task

TOKEN = os.environ.get("SOAK_TOKEN", "")
PROJECT = os.environ.get("SOAK_PROJECT", "soak")
SERVICE = os.environ.get("SOAK_SERVICE", "greeter")
USER_RATE = float(os.environ.get("SOAK_USER_RATE", "0"))
# Points per tracker write: 4 metrics x 5 steps, what a training loop's tracker batches
# between flushes at a few steps per second.
METRICS = ("loss", "acc", "precision", "f1")
STEPS_PER_WRITE = 5
_user_numbers = itertools.count(1)


def _excerpt(body: str | bytes | None) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
    return text[:200]


def _why(status: int, body: str | bytes | None) -> str:
    return f"{status} {_excerpt(body)}"


Judge = Callable[[Any], str | None]  # a parsed body -> what is wrong with it, or None


class PlatformUser(FastHttpUser):
    """One client of the gateway: its own tracked run, its own keep-alive connection."""

    # constant_throughput paces each user at a fixed rate that it cannot exceed: the total
    # offered rate is users x SOAK_USER_RATE, and a platform that cannot keep up shows as an
    # achieved rate below it (soak.py --find-rate relies on that).
    wait_time = constant_throughput(USER_RATE) if USER_RATE > 0 else constant(0)

    def on_start(self) -> None:
        self.client_headers = {"Authorization": f"Bearer {TOKEN}"}
        self.number = next(_user_numbers)
        self.step = 0
        self.run_id = ""
        created = self._checked(
            "POST",
            f"/v1/projects/{PROJECT}/runs",
            name="tracker: create run",
            json={"name": f"soak-user-{self.number}", "experiment": "soak"},
            status=201,
            judge=lambda body: None if isinstance(body["id"], str) and body["id"] else "no run id",
        )
        if created is not None:
            self.run_id = created["id"]

    @task(70)
    def call_model(self) -> None:
        name = random.choice(("ada", "grace", "edsger", "barbara"))
        expected = {"message": f"hello, {name}"}
        self._checked(
            "POST",
            f"/models/{PROJECT}/{SERVICE}/v1/greet",
            name="model: POST greet",
            json={"name": name},
            judge=lambda body: None if body == expected else "a wrong answer",
        )

    @task(10)
    def list_services(self) -> None:
        self._read(f"/v1/projects/{PROJECT}/services", "registry: GET services")

    @task(10)
    def list_versions(self) -> None:
        self._read(f"/v1/projects/{PROJECT}/services/{SERVICE}/versions", "registry: GET versions")

    @task(10)
    def log_metrics(self) -> None:
        if not self.run_id:  # its run could not be created: that failure is counted already
            return
        steps = list(range(self.step, self.step + STEPS_PER_WRITE))
        self.step += STEPS_PER_WRITE
        series = {
            key: {"steps": steps, "values": [1.0 / (step + i + 1) for step in steps]}
            for i, key in enumerate(METRICS)
        }
        self._checked(
            "POST",
            f"/v1/projects/{PROJECT}/runs/{self.run_id}/metrics",
            name="tracker: POST metrics",
            json={"series": series},
        )

    def _read(self, path: str, name: str) -> None:
        self._checked(
            "GET",
            path,
            name=name,
            judge=lambda body: None if isinstance(body, list) and body else "an empty or odd list",
        )

    def _checked(
        self,
        method: str,
        path: str,
        *,
        name: str,
        json: Any = None,
        status: int = 200,
        judge: Judge | None = None,
    ) -> Any:
        """One request, counted as failed unless it answers ``status`` and, with ``judge``,
        a JSON body ``judge`` finds nothing wrong with; that body, or None when it failed."""
        with self.client.request(
            method, path, json=json, headers=self.client_headers, name=name, catch_response=True
        ) as answer:
            if answer.status_code != status:
                answer.failure(_why(answer.status_code, answer.content))
                return None
            if judge is None:
                return None
            # Raised inside catch_response, these would escape locust's request count (it
            # re-raises anything but its own errors): a bad body is a failed request.
            try:
                body = answer.json()
                problem = judge(body)
            except (ValueError, KeyError, TypeError, IndexError) as error:
                problem = f"an unreadable body ({type(error).__name__}: {error})"
            if problem is not None:
                answer.failure(f"{status} with {problem}: {_excerpt(answer.content)}")
                return None
            return body
