"""The tracker pointed at an embedded platform, with project ``digits`` to log runs into."""

import json
from pathlib import Path

import httpx
import pytest

from modelcloud_testing.embedded import Embedded
from modelcloud_testing.registries import REPOSITORY

DIGITS_TRAINING = REPOSITORY / "examples" / "digits-training" / "train.py"


@pytest.fixture
def tracking_env(embedded: Embedded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Embedded:
    monkeypatch.delenv("MODELCLOUD_TRACKING", raising=False)
    for name in ("MODELCLOUD_URL", "MODELCLOUD_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELCLOUD_CONFIG", str(tmp_path / ".modelcloud" / "config.json"))
    monkeypatch.setenv("MODELCLOUD_TRACKING_SPOOL", str(tmp_path / "spool"))
    monkeypatch.setenv("MODELCLOUD_TRACKING_DB", str(tmp_path / "never-used.db"))
    config = json.loads((tmp_path / ".modelcloud" / "config.json").read_text())
    token = Path(config["token_file"]).read_text().strip()
    created = httpx.post(
        f"{config['url']}/v1/projects",
        json={"name": "digits"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 201, created.text
    return embedded
