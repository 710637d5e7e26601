"""The seed's model-file snippets, verbatim, against a running file store (and the
registry that owns its tokens and projects), with blobs on a local folder or on S3."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import boto3
import httpx
import pytest

import modelcloud.pipe._remote as remote
from modelcloud.pipe import ModelFile
from modelcloud.pipe.errors import PipeError
from services.filestore.settings import FilestoreSettings

CLI = str(Path(sys.executable).with_name("modelcloud"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


def wait_answering(url: str, process: subprocess.Popen[bytes]) -> None:
    """A server with no ``/readyz`` (moto's): up once it answers anything. The file store
    checks its bucket at start, and exits when the S3 server is not there yet."""
    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            httpx.get(url)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


@pytest.fixture(
    params=[
        "local",
        pytest.param("s3-through", marks=pytest.mark.s3),
        pytest.param("s3-direct", marks=pytest.mark.s3),
    ]
)
def platform(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "FILESTORE_"))}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        token = subprocess.run(
            [CLI, "registry", "create-admin", "root", "--data-dir", str(tmp_path / "registry")],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.strip()
        registry = f"http://127.0.0.1:{free_port()}"
        processes.append(
            subprocess.Popen(
                [
                    CLI,
                    "serve",
                    "registry",
                    "--port",
                    registry.rsplit(":", 1)[1],
                    "--data-dir",
                    str(tmp_path / "registry"),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_ready(registry, processes[-1])
        created = httpx.post(
            f"{registry}/v1/projects",
            json={"name": "vision"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201
        store_env = {**env, "FILESTORE_REGISTRY_URL": registry}
        if request.param.startswith("s3"):
            s3 = f"http://127.0.0.1:{free_port()}"
            moto = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
            processes.append(
                subprocess.Popen(
                    [moto, "-H", "127.0.0.1", "-p", s3.rsplit(":", 1)[1]],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_answering(s3, processes[-1])
            store_env |= {
                "FILESTORE_STORAGE": "s3",
                "FILESTORE_S3_ENDPOINT_URL": s3,
                "FILESTORE_S3_ACCESS_KEY_ID": "test",
                "FILESTORE_S3_SECRET_ACCESS_KEY": "test",
            }
        if request.param == "s3-direct":  # model.db (70 kB) goes straight to S3
            store_env |= {"FILESTORE_DIRECT_MIN_BYTES": "50000", "FILESTORE_PART_SIZE": "5242880"}
        if request.param == "s3-through":  # every upload through the file store
            store_env |= {"FILESTORE_DIRECT_UPLOADS": "false"}
        filestore = f"http://127.0.0.1:{free_port()}"
        processes.append(
            subprocess.Popen(
                [
                    CLI,
                    "serve",
                    "filestore",
                    "--port",
                    filestore.rsplit(":", 1)[1],
                    "--data-dir",
                    str(tmp_path / "filestore"),
                ],
                env=store_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_ready(filestore, processes[-1])
        yield {
            "MODELCLOUD_FILESTORE_URL": filestore,
            "MODELCLOUD_TOKEN": token,
            "MODELCLOUD_PROJECT": "vision",
            "MODELCLOUD_PIPE_DIGESTS": str(tmp_path / "digests.sqlite3"),
            "kind": request.param,
            "s3": store_env.get("FILESTORE_S3_ENDPOINT_URL", ""),
            "bucket": FilestoreSettings.model_fields["s3_bucket"].default,
        }
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


def _is_upload(metric_line: str) -> bool:
    """PUT of one file, a pack of many, or the start of a direct upload."""
    return 'method="PUT"' in metric_line or (
        'method="POST"' in metric_line
        and any(f'/{kind}"' in metric_line for kind in ("packs", "uploads"))
    )


def uploads_so_far(filestore: str) -> float:
    metrics = httpx.get(f"{filestore}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("http_requests_total") and _is_upload(line)
    )


def use_platform(platform: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the pipe at the platform, as a user's environment would."""
    for key, value in platform.items():
        if key.startswith("MODELCLOUD_"):
            monkeypatch.setenv(key, value)


def test_the_seed_snippets_run_against_the_file_store(
    platform: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_platform(platform, monkeypatch)
    monkeypatch.chdir(tmp_path)
    Path("model.db").write_bytes(b"weights" * 10_000)
    workspace = Path("local_model_workspace")
    (workspace / "features").mkdir(parents=True)
    for i in range(50):
        (workspace / f"part{i}.py").write_text(f"x = {i}\n")
    (workspace / "features" / "a.json").write_text("[]")

    from bolt4ds.pipe import APILocal, ModelFile, list_profiles

    test = ModelFile(model_name="model_name", version="model_version", center_path=None)
    pipe = test.filepipe()
    pipe.import_file("model.db", subdir=None, move=False)
    pipe.import_dir("local_model_workspace", subdir=None, move=False)
    files, names = pipe.scan_local(include="*.py", sortby="mod", attributes=True)
    assert len(names) == 50
    assert set(files[0]) == {"filename", "modified_at", "size", "crc"}
    assert str(pipe.dir).startswith(platform["MODELCLOUD_FILESTORE_URL"])
    assert pipe.config["server"] == platform["MODELCLOUD_FILESTORE_URL"]

    puts = uploads_so_far(platform["MODELCLOUD_FILESTORE_URL"])
    assert puts >= 2  # model.db, then the workspace's small files in packs
    completed = (
        'uploads/{upload_id}/complete"' in httpx.get(f"{pipe.config['server']}/metrics").text
    )
    assert completed == (platform["kind"] == "s3-direct")
    pipe.import_dir("local_model_workspace", subdir=None, move=False)  # unchanged: 0 bytes
    assert uploads_so_far(platform["MODELCLOUD_FILESTORE_URL"]) == puts

    pulled = pipe.pull_file("model.db", "model_workspace_path/")
    assert pulled.read_bytes() == Path("model.db").read_bytes()
    assert len(pipe.pull_dir("model_workspace_path")) == 51  # model.db is already there
    assert pipe.pull_dir("model_workspace_path") == []
    assert pipe.delete_files_local(
        files=["model.db"], confirm=False, delete_all=None, ignore_errors=False
    ) == ["model.db"]
    assert "model.db" not in pipe.scan_local()
    ModelFile("model_name", "v2").filepipe().import_file("model.db")
    assert APILocal(profile="model_name", filecfg=None).list_local_pipes() == [
        "model_version",
        "v2",
    ]
    assert list_profiles()["model_name"]["versions"] == ["model_version", "v2"]


def test_a_large_file_is_hashed_while_sent_and_remembered(
    platform: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_platform(platform, monkeypatch)
    monkeypatch.setattr(remote, "_STREAM_MIN", 1 << 20)  # "large" from 1 MiB, for speed
    read_first: list[Path] = []
    hash_file = remote._sha256
    monkeypatch.setattr(remote, "_sha256", lambda path: read_first.append(path) or hash_file(path))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom((11 << 20) + 7))  # three parts of 5 MiB when sent direct
    settled = time.time() - 60
    os.utime(big, (settled, settled))
    pipe = ModelFile("weights", "v1").filepipe()

    pipe.import_file(big)
    assert read_first == []  # hashed while sent, however it travels
    listed = {f["filename"]: f for f in pipe.scan_local(attributes=True)[0]}
    assert listed["big.bin"]["crc"] == hashlib.sha256(big.read_bytes()).hexdigest()
    puts = uploads_so_far(platform["MODELCLOUD_FILESTORE_URL"])
    read_first.clear()
    pipe.import_file(big)  # unchanged: its digest is remembered, nothing is read or sent
    assert read_first == []
    assert uploads_so_far(platform["MODELCLOUD_FILESTORE_URL"]) == puts
    pulled = pipe.pull_file("big.bin", tmp_path / "pulled" / "big.bin")
    assert pulled.read_bytes() == big.read_bytes()


@pytest.mark.parametrize(
    "platform", [pytest.param("s3-direct", marks=pytest.mark.s3)], indirect=True
)
def test_a_direct_push_that_reached_s3_damaged_keeps_nothing(
    platform: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_platform(platform, monkeypatch)
    # The CRC32s the client signs differ from the bytes it sends, as if the bytes were
    # damaged on the way: AWS and MinIO refuse the part, moto takes it and the file
    # store's check of the CRC32s that S3 computed refuses the upload.
    crc32 = zlib.crc32
    monkeypatch.setattr(remote, "zlib", SimpleNamespace(crc32=lambda data: crc32(data) ^ 1))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom((11 << 20) + 7))
    pipe = ModelFile("weights", "v1").filepipe()
    with pytest.raises(PipeError, match=r"big\.bin"):
        pipe.import_file(big)
    assert "big.bin" not in pipe.scan_local()
    s3 = boto3.client(
        "s3",
        endpoint_url=platform["s3"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106 - moto accepts any credentials
    )
    assert s3.list_objects_v2(Bucket=platform["bucket"], Prefix="objects/")["KeyCount"] == 0
    assert s3.list_multipart_uploads(Bucket=platform["bucket"]).get("Uploads", []) == []
