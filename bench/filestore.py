"""The model-file pipe against plain boto3, to the same S3 server (issue 4's benchmark).

Method: one run starts moto's S3 server on loopback (no MinIO binary can be installed
here), the registry and the file store (``FILESTORE_STORAGE=s3`` on that server), then
times, side by side:

* one large file (``--large-mib``, default 2048): ``pipe.import_file`` vs boto3
  ``upload_file`` (its default multipart settings), and ``pipe.pull_file`` vs boto3
  ``download_file`` in one stream (moto serves each ranged GET by copying the whole object,
  so boto3's default parallel ranged download is quadratic there);
* a folder of many small files (``--files``, default 1000 of 4 KiB): ``pipe.import_dir``
  vs boto3 ``upload_file`` per file, and ``pipe.pull_dir`` vs ``download_file`` per file;
* a second ``import_dir`` of the unchanged folder (uploads counted by the file store's own
  metrics: PUTs of files, packs, starts of direct uploads).

``--mode`` picks how the pipe's bytes travel (what the file store offers): ``default``
sends large files straight to S3 in parts (each part's URL signed with its CRC32; the file
store checks the CRC32s S3 computed, and never reads the bytes) and downloads straight
from S3 (presigned); ``through`` passes every byte through the file store, which checks
the SHA-256 on the way. boto3's bytes always go straight to S3. The pipe also computes the
SHA-256 of every file it pushes (its content address, and the seed's ``crc``). The file
store's peak resident memory (VmHWM) is read from /proc after the run.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import httpx
from boto3.s3.transfer import TransferConfig
from local_platform import free_port

from modelcloud.pipe import ModelFile
from services.filestore.settings import FilestoreSettings

BIN = Path(sys.executable).parent
STORE_BUCKET = FilestoreSettings.model_fields["s3_bucket"].default
CASES = ("large upload", "large download", "small files upload", "small files download")
# moto answers each ranged GET by copying the whole object, so boto3's default parallel
# ranged download is quadratic there (512 MiB: 24 s); one stream is boto3's best on it.
ONE_STREAM = TransferConfig(multipart_threshold=1 << 62)
MODES = {
    "default": (
        "large uploads straight to S3 in parts, presigned downloads",
        {"FILESTORE_DIRECT_UPLOADS": "true", "FILESTORE_DIRECT_DOWNLOADS": "true"},
    ),
    "through": (
        "every byte through the file store",
        {"FILESTORE_DIRECT_UPLOADS": "false", "FILESTORE_DIRECT_DOWNLOADS": "false"},
    ),
}


def start(args: list[str], env: dict[str, str], ready: str | None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if ready is None or httpx.get(ready).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{args[0]} did not start")


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a process so far, in KiB."""
    return next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM")
    )


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as out:
        for _ in range(size >> 20):
            out.write(os.urandom(1 << 20))


def round_pairs(
    client: Any,
    large: Path,
    small: Path,
    pipe: Any,
    small_pipe: Any,
    pulled: Path,
    plain: Path,
) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """Each case's pipe action and boto3 action, for one round."""
    return {
        "large upload": (
            lambda: pipe.import_file(large),
            lambda: client.upload_file(str(large), "plain", "large.bin"),
        ),
        "large download": (
            lambda: pipe.pull_file("large.bin", pulled / "large.bin"),
            lambda: client.download_file(
                "plain", "large.bin", str(plain / "large.bin"), Config=ONE_STREAM
            ),
        ),
        "small files upload": (
            lambda: small_pipe.import_dir(small, subdir="small"),
            lambda: [
                client.upload_file(str(p), "plain", f"small/{p.name}")
                for p in sorted(small.iterdir())
            ],
        ),
        "small files download": (
            lambda: small_pipe.pull_dir(pulled),
            lambda: [
                client.download_file("plain", f"small/{p.name}", str(plain / p.name))
                for p in sorted(small.iterdir())
            ],
        ),
    }


def forget_large_objects(client: Any) -> None:
    """Delete the round's large objects from the S3 server, both sides' (the pipe's round
    has a version of its own that no later round reads): moto keeps what it stores on this
    machine, and six 2 GiB objects would crowd its memory and page cache in later rounds."""
    client.delete_object(Bucket="plain", Key="large.bin")
    listing = client.list_objects_v2(Bucket=STORE_BUCKET, Prefix="objects/")
    for item in listing.get("Contents", []):
        client.delete_object(Bucket=STORE_BUCKET, Key=item["Key"])


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by the benchmark's client (this process), the file store and the
    S3 server during one action."""

    def __init__(self, store: int, s3: int) -> None:
        self.pids = {"client": os.getpid(), "file store": store, "S3": s3}

    def timed(self, action: Callable[[], object]) -> tuple[float, dict[str, float]]:
        # Written data still on its way to disk (the round's fresh files, the other side's
        # pulled copy) would slow whichever side runs while it is flushed.
        os.sync()
        before = {name: cpu_s(pid) for name, pid in self.pids.items()}
        seconds = timed(action)
        return seconds, {name: cpu_s(pid) - before[name] for name, pid in self.pids.items()}


def _is_upload(metric_line: str) -> bool:
    """PUT of one file, a pack of many, or the start of a direct upload."""
    return 'method="PUT"' in metric_line or (
        'method="POST"' in metric_line
        and any(f'/{kind}"' in metric_line for kind in ("packs", "uploads"))
    )


def puts(filestore: str) -> float:
    lines = httpx.get(f"{filestore}/metrics").text.splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("http_requests_total") and _is_upload(line)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-mib", type=int, default=2048)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="the median is reported")
    parser.add_argument("--quick", action="store_true", help="64 MiB and 100 files")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), metavar="CASE")
    parser.add_argument(
        "--mode",
        choices=list(MODES),
        default="default",
        help="; ".join(f"{name}: {text}" for name, (text, _) in MODES.items()),
    )
    args = parser.parse_args()
    large_mib, count = (64, 100) if args.quick else (args.large_mib, args.files)
    rounds = 1 if args.quick else args.rounds

    work = Path(tempfile.mkdtemp(prefix="mc-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "FILESTORE_"))}
    env |= {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    s3 = f"http://127.0.0.1:{free_port()}"
    registry = f"http://127.0.0.1:{free_port()}"
    filestore = f"http://127.0.0.1:{free_port()}"
    processes = []
    try:
        processes.append(
            start(
                [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", s3.rsplit(":", 1)[1]], env, s3
            )
        )
        token = subprocess.run(
            [
                str(BIN / "modelcloud"),
                "registry",
                "create-admin",
                "bench",
                "--data-dir",
                str(work / "r"),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        processes.append(
            start(
                [
                    str(BIN / "modelcloud"),
                    "serve",
                    "registry",
                    "--port",
                    registry.rsplit(":", 1)[1],
                    "--data-dir",
                    str(work / "r"),
                ],
                env,
                f"{registry}/readyz",
            )
        )
        httpx.post(
            f"{registry}/v1/projects",
            json={"name": "bench"},
            headers={"Authorization": f"Bearer {token}"},
        )
        store_env = env | {
            "FILESTORE_REGISTRY_URL": registry,
            "FILESTORE_STORAGE": "s3",
            "FILESTORE_S3_ENDPOINT_URL": s3,
            "FILESTORE_S3_ACCESS_KEY_ID": "test",
            "FILESTORE_S3_SECRET_ACCESS_KEY": "test",
            **MODES[args.mode][1],
        }
        store = start(
            [
                str(BIN / "modelcloud"),
                "serve",
                "filestore",
                "--port",
                filestore.rsplit(":", 1)[1],
                "--data-dir",
                str(work / "f"),
            ],
            store_env,
            f"{filestore}/readyz",
        )
        processes.append(store)

        client = boto3.client(
            "s3",
            endpoint_url=s3,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",  # noqa: S106 - moto takes any key
        )
        client.create_bucket(Bucket="plain")
        quietly: dict[str, Any] = {"token": token, "quiet": True}
        idle_kib = vm_hwm(store.pid)

        large = work / "large.bin"
        small = work / "small"
        small.mkdir()
        cases: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
        meter = CpuMeter(store.pid, processes[0].pid)
        # A download needs its upload first; only the cases asked for are reported.
        needed = set(args.cases) | {c.replace("download", "upload") for c in args.cases}
        cpu: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {n: [] for n in CASES}
        for round_no in range(rounds):
            # New content every round (content addressing would skip a repeat), a version of
            # its own for the small files (pull_dir pulls a whole version), and the order of
            # pipe and boto3 alternating from round to round.
            write_random(large, large_mib << 20)
            for i in range(count):
                (small / f"f{i:05d}.bin").write_bytes(os.urandom(4096))
            pipe = ModelFile(
                "bench", f"large-{round_no}", server=filestore, project="bench", **quietly
            ).filepipe()
            small_pipe = ModelFile(
                "bench", f"small-{round_no}", server=filestore, project="bench", **quietly
            ).filepipe()
            pulled = work / f"pulled-{round_no}"
            plain = work / f"plain-{round_no}"
            pulled.mkdir()
            plain.mkdir()
            pairs = round_pairs(client, large, small, pipe, small_pipe, pulled, plain)
            for name, (with_pipe, with_boto3) in pairs.items():
                if name not in needed:
                    continue
                if round_no % 2:
                    (boto_s, boto_cpu), (pipe_s, pipe_cpu) = (
                        meter.timed(with_boto3),
                        meter.timed(with_pipe),
                    )
                else:
                    (pipe_s, pipe_cpu), (boto_s, boto_cpu) = (
                        meter.timed(with_pipe),
                        meter.timed(with_boto3),
                    )
                cases[name].append((pipe_s, boto_s))
                cpu[name].append((pipe_cpu, boto_cpu))
            shutil.rmtree(pulled)
            shutil.rmtree(plain)
            forget_large_objects(client)
        again: tuple[float, float] | None = None
        if "small files upload" in needed:
            before = puts(filestore)
            seconds = timed(lambda: small_pipe.import_dir(small, subdir="small"))  # last round's
            again = seconds, puts(filestore) - before
        peak_kib = vm_hwm(store.pid)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"large file {large_mib} MiB, {count} small files of 4 KiB, "
        f"mode {args.mode} ({MODES[args.mode][0]}), median of {rounds} rounds\n"
    )
    small_mib = count * 4096 / (1 << 20)
    print("| case | MiB | pipe s | pipe MiB/s | boto3 s | boto3 MiB/s | pipe / boto3 throughput |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    reported = [name for name in CASES if name in args.cases]
    for name in reported:
        times = cases[name]
        mib = large_mib if name.startswith("large") else small_mib
        pipe_s = statistics.median(t[0] for t in times)
        boto_s = statistics.median(t[1] for t in times)
        each = ", ".join(f"{b / p:.2f}" for p, b in times)
        print(
            f"| {name} | {mib:.0f} | {pipe_s:.2f} | {mib / pipe_s:.1f} | {boto_s:.2f} | "
            f"{mib / boto_s:.1f} | **{boto_s / pipe_s:.2f}** ({each}) |"
        )
    print("\nCPU seconds per case (medians; client / file store / S3 server):\n")
    print("| case | pipe: client | file store | S3 | boto3: client | S3 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in reported:
        rows = cpu[name]
        pipe_cpu = {k: statistics.median(r[0][k] for r in rows) for k in meter.pids}
        boto_cpu = {k: statistics.median(r[1][k] for r in rows) for k in meter.pids}
        print(
            f"| {name} | {pipe_cpu['client']:.2f} | {pipe_cpu['file store']:.2f} | "
            f"{pipe_cpu['S3']:.2f} | {boto_cpu['client']:.2f} | {boto_cpu['S3']:.2f} |"
        )
    if again is not None:
        print(
            f"\nsecond push of the unchanged {count} files: {again[0]:.2f} s, "
            f"{again[1]:.0f} uploads"
        )
    print(
        f"file store peak resident memory (VmHWM): {peak_kib / 1024:.0f} MiB "
        f"({idle_kib / 1024:.0f} MiB once started, before any transfer)"
    )


if __name__ == "__main__":
    main()
