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
"""

import itertools
import os
import random

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


def _why(status: int, body: str | bytes | None) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
    return f"{status} {text[:200]}"


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
        with self.client.post(
            f"/v1/projects/{PROJECT}/runs",
            json={"name": f"soak-user-{self.number}", "experiment": "soak"},
            headers=self.client_headers,
            name="tracker: create run",
            catch_response=True,
        ) as answer:
            if answer.status_code != 201:
                answer.failure(_why(answer.status_code, answer.content))
                return
            self.run_id = answer.json()["id"]

    @task(70)
    def call_model(self) -> None:
        name = random.choice(("ada", "grace", "edsger", "barbara"))
        with self.client.post(
            f"/models/{PROJECT}/{SERVICE}/v1/greet",
            json={"name": name},
            headers=self.client_headers,
            name="model: POST greet",
            catch_response=True,
        ) as answer:
            if answer.status_code != 200:
                answer.failure(_why(answer.status_code, answer.content))
            elif answer.json() != {"message": f"hello, {name}"}:
                answer.failure(f"200 with a wrong answer: {answer.text[:200]}")

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
        with self.client.post(
            f"/v1/projects/{PROJECT}/runs/{self.run_id}/metrics",
            json={"series": series},
            headers=self.client_headers,
            name="tracker: POST metrics",
            catch_response=True,
        ) as answer:
            if answer.status_code != 200:
                answer.failure(_why(answer.status_code, answer.content))

    def _read(self, path: str, name: str) -> None:
        with self.client.get(
            path, headers=self.client_headers, name=name, catch_response=True
        ) as answer:
            if answer.status_code != 200:
                answer.failure(_why(answer.status_code, answer.content))
            elif not isinstance(answer.json(), list) or not answer.json():
                answer.failure(f"200 with an empty or odd list: {answer.text[:200]}")
