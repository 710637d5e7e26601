"""``python cloud_model.py`` as the seed runs it: the console lines, the env overrides,
setup failures, and the client and CLI talking to the real server process."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from modelcloud.client import ModelClient
from modelcloud.exceptions import InvalidInput, UnknownCommand

SEED_SHAPED = textwrap.dedent(
    """
    import json
    import modelcloud
    from modelcloud.data_types import image, text, number

    labels = {"0": "small", "1": "large"}

    @modelcloud.setup
    def setup():
        return lambda img: int(img.size[0] * img.size[1] > 100)

    @modelcloud.command('classify', inputs={ 'photo': image() }, outputs={ 'label': text() })
    def classify(model, input):
        img = input['photo']
        label = labels[str(model(img))]
        return { 'label': label }

    @modelcloud.command('scale', inputs={'x': number(min=0, max=10)}, outputs={'y': number()})
    def scale(model, input):
        return {'y': input['x'] * 2}

    if __name__ == '__main__':
        modelcloud.run()
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(folder: Path, source: str, **env: str) -> subprocess.Popen[str]:
    (folder / "cloud_model.py").write_text(source)
    return subprocess.Popen(
        [sys.executable, "cloud_model.py"],
        cwd=folder,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Served:
    """A model server process; ``stop()`` ends it once and returns what it printed."""

    def __init__(self, url: str, process: subprocess.Popen[str]) -> None:
        self.url = url
        self.process = process
        self.output: tuple[str, str] | None = None

    def stop(self) -> tuple[str, str]:
        if self.output is None:
            self.process.terminate()
            self.output = self.process.communicate(timeout=30)
        return self.output


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    process = start(tmp_path, SEED_SHAPED, MODELCLOUD_PORT=str(port), MODELCLOUD_HOST="127.0.0.1")
    server = Served(f"http://127.0.0.1:{port}", process)
    try:
        with ModelClient(server.url) as client:
            client.wait_ready(timeout=30)
        yield server
    finally:
        server.stop()


def test_seed_script_prints_the_seed_lines_and_serves(served, tmp_path):
    with ModelClient(served.url) as client:
        assert client.call("classify", photo=_png(tmp_path, (20, 20))) == {"label": "large"}
        assert client.call("scale", x=2.5) == {"y": 5.0}
    out, _ = served.stop()
    port = served.url.rsplit(":", 1)[1]
    assert out.splitlines()[:2] == [
        "Setting up model...",
        f"Starting model server at http://127.0.0.1:{port}...",
    ]


def test_client_raises_the_typed_errors(served):
    with ModelClient(served.url) as client:
        with pytest.raises(InvalidInput) as excinfo:
            client.call("scale", x=11)
        assert excinfo.value.errors[0].field == "x"
        with pytest.raises(UnknownCommand):
            client.call("nope")
        assert [c.name for c in client.meta().commands] == ["classify", "scale"]


def test_cli_call_uploads_files_and_prints_json(served, tmp_path):
    url = served.url
    cli = Path(sys.executable).with_name("modelcloud")
    photo = _png(tmp_path, (5, 5))
    done = subprocess.run(
        [str(cli), "call", url, "classify", f"photo=@{photo}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout) == {"label": "small"}
    done = subprocess.run(
        [str(cli), "call", url, "scale", "x=99"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert "x: must be at most 10" in done.stderr
    assert "Traceback" not in done.stderr


def test_setup_failure_exits_with_a_clear_message(tmp_path):
    source = textwrap.dedent(
        """
        import modelcloud

        @modelcloud.setup
        def setup():
            raise FileNotFoundError('weights.pth')

        modelcloud.run()
        """
    )
    process = start(tmp_path, source, MODELCLOUD_PORT=str(free_port()))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert out.splitlines() == ["Setting up model..."]
    assert err.strip().endswith("modelcloud: setup raised FileNotFoundError: weights.pth")


def test_bad_environment_settings_name_the_variable(tmp_path):
    process = start(tmp_path, SEED_SHAPED, MODELCLOUD_PORT="ninety")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "MODELCLOUD_PORT='ninety'" in err
    assert "Traceback" not in err


def _png(folder: Path, size: tuple[int, int]) -> Path:
    path = folder / f"photo-{size[0]}x{size[1]}.png"
    Image.new("RGB", size).save(path)
    return path
