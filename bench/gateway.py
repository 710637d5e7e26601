"""The gateway's added latency and throughput, against nginx as a reverse proxy (issue 6).

Method. One run starts the embedded platform (``modelcloud up``) on a fresh data folder,
deploys a trivial model (the greeter: one ``text`` in, one ``text`` out, no work), and
starts nginx (Debian's package) as a reverse proxy to the same replica, with a keep-alive
upstream pool as one would configure it in production. wrk (Debian's package) then sends
``POST /greet`` with a small JSON body for ``--seconds`` per case, at concurrency 1, 16 and
64, to three targets in turn: the replica directly, the gateway's versioned URL
(``/models/bench/greeter/v1/greet``, token checked, least-outstanding routing, metrics)
and nginx. The rounds alternate the order of the targets (``--rounds``; the median is
reported) so that drift on a shared machine hits them alike.

Everything runs on the same machine: wrk, nginx, the gateway and the replica share its
cores, so a proxy's CPU is taken from the replica; the figures say what one box does.
The gateway's bound on calls in flight per replica (``GATEWAY_MAX_OUTSTANDING``, default
32, answered past it with 503 + Retry-After) is raised to 128 here so that concurrency 64
measures proxying, not backpressure; non-2xx answers are counted and printed.

Needs ``nginx`` and ``wrk`` (``apt-get install nginx-light wrk``).
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from local_platform import BIN, clean_env, embedded, free_port

GREETER = """
import modelcloud
from modelcloud.data_types import text


@modelcloud.command("greet", inputs={"name": text()}, outputs={"message": text()})
def greet(model, inputs):
    return {"message": "hello, " + inputs["name"]}


if __name__ == "__main__":
    modelcloud.run()
"""
NGINX = """
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    upstream replica {{
        server {replica};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replica;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"name": "ada"}'
wrk.headers["Content-Type"] = "application/json"
"""
CONCURRENCY = (1, 16, 64)
TARGETS = ("direct", "gateway", "nginx")


@dataclass(frozen=True)
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(url: str, concurrency: int, seconds: int, script: Path, token: str) -> Run:
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(concurrency, 2)}",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            "-H",
            f"Authorization: Bearer {token}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    if len(percentiles) != 2:
        raise SystemExit(f"wrk printed no latency distribution for {url}:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.MULTILINE)
    failed = int(errors.group(1)) if errors else 0
    if socket_errors:
        failed += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return Run(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        errors=failed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="per case and round")
    parser.add_argument("--rounds", type=int, default=3, help="the median is reported")
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install nginx-light wrk")

    work = Path(tempfile.mkdtemp(prefix="mc-gateway-bench-"))
    env = clean_env(work, GATEWAY_MAX_OUTSTANDING="128")
    try:
        with embedded(work, env) as (gateway, token):
            runs = measure(work, env, gateway, token, args.seconds, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(runs, args.seconds, args.rounds)


def measure(
    work: Path, env: dict[str, str], gateway: str, token: str, seconds: int, rounds: int
) -> dict[tuple[str, int], list[Run]]:
    """Deploy the greeter, put nginx in front of its replica, and run wrk on every target."""
    nginx: subprocess.Popen[bytes] | None = None
    try:
        folder = work / "greeter"
        folder.mkdir()
        (folder / "cloud_model.py").write_text(GREETER)
        (folder / "modelcloud.yml").write_text("service:\n  name: greeter\n")
        subprocess.run(
            [str(BIN / "modelcloud"), "deploy", str(folder), "--project", "bench", "--json"],
            env=env,
            check=True,
            capture_output=True,
        )
        (deployment,) = httpx.get(
            f"{gateway}/v1/projects/bench/deployments",
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        replica = deployment["replicas"][0]["address"]

        nginx_port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(NGINX.format(work=work, replica=replica, port=nginx_port))
        nginx = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"])
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        urls = {
            "direct": f"http://{replica}/greet",
            "gateway": f"{gateway}/models/bench/greeter/v1/greet",
            "nginx": f"http://127.0.0.1:{nginx_port}/greet",
        }
        for url in urls.values():  # each answers before anything is timed
            for _ in range(50):
                try:
                    answer = httpx.post(
                        url, json={"name": "ada"}, headers={"Authorization": f"Bearer {token}"}
                    )
                    if answer.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            assert answer.json() == {"message": "hello, ada"}, (url, answer.text)

        runs: dict[tuple[str, int], list[Run]] = {}
        for round_no in range(rounds):
            order = TARGETS if round_no % 2 == 0 else TARGETS[::-1]
            for concurrency in CONCURRENCY:
                for target in order:
                    run = wrk(urls[target], concurrency, seconds, script, token)
                    runs.setdefault((target, concurrency), []).append(run)
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=30)
    return runs


def report(runs: dict[tuple[str, int], list[Run]], seconds: int, rounds: int) -> None:
    def median(target: str, concurrency: int, field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs[(target, concurrency)])

    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"{seconds} s per case, median of {rounds} rounds\n"
    )
    print(
        "| concurrency | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| throughput / direct | errors |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for concurrency in CONCURRENCY:
        direct_rps = median("direct", concurrency, "rps")
        direct_p50 = median("direct", concurrency, "p50_ms")
        direct_p99 = median("direct", concurrency, "p99_ms")
        for target in TARGETS:
            rps = median(target, concurrency, "rps")
            p50 = median(target, concurrency, "p50_ms")
            p99 = median(target, concurrency, "p99_ms")
            errors = sum(r.errors for r in runs[(target, concurrency)])
            added = (
                ("", "", "")
                if target == "direct"
                else (
                    f"{p50 - direct_p50:.2f}",
                    f"{p99 - direct_p99:.2f}",
                    f"{rps / direct_rps:.2f}",
                )
            )
            print(
                f"| {concurrency} | {target} | {rps:.0f} | {p50:.2f} | {p99:.2f} | "
                f"{added[0]} | {added[1]} | {added[2]} | {errors} |"
            )


if __name__ == "__main__":
    main()
