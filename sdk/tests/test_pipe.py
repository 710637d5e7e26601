"""The seed's model-file snippets (seed 004, Tutorial 0), run verbatim against a central
directory, plus what they must refuse."""

import datetime
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from modelcloud.pipe import PipeError, PipeFileNotFound, UnsafePath


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model author's working folder with a model file and a workspace folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.db").write_bytes(b"weights" * 1000)
    space = tmp_path / "local_model_workspace"
    (space / "features").mkdir(parents=True)
    (space / "setup.py").write_text("print('setup')\n")
    (space / "train.py").write_text("import torch\n" * 10)
    (space / "features" / "columns.json").write_text("[]")
    return tmp_path


def test_the_seed_snippets_run_verbatim_against_a_center_directory(workspace: Path) -> None:
    center = workspace / "center"
    # 1.0 register a model and version
    from bolt4ds.pipe import APILocal, ModelFile, list_profiles

    test = ModelFile(model_name="model_name", version="model_version", center_path=str(center))
    pipe = test.filepipe()
    # 1.1 upload a file and a folder
    pipe.import_file("model.db", subdir=None, move=False)
    pipe.import_dir("local_model_workspace", subdir=None, move=False)
    # 1.2 look at the center
    files, names = pipe.scan_local(include="*.py", sortby="mod", attributes=True)
    assert sorted(names) == ["setup.py", "train.py"]
    setup = next(f for f in files if f["filename"] == "setup.py")
    assert set(setup) == {"filename", "modified_at", "size", "crc"}
    assert isinstance(setup["modified_at"], datetime.datetime)
    assert setup["size"] == len("print('setup')\n")
    assert setup["crc"] == hashlib.sha256(b"print('setup')\n").hexdigest()
    assert pipe.dir == center / "model_name" / "model_version"
    assert pipe.filerepo == center / "model_name"
    assert pipe.config["filereporoot"] == str(center)
    # 1.3 pull and delete
    pulled = pipe.pull_file("model.db", "model_workspace_path/")
    assert pulled.read_bytes() == (workspace / "model.db").read_bytes()
    assert sorted(pipe.pull_dir("model_workspace_path")) == [
        "features/columns.json",
        "setup.py",
        "train.py",
    ]
    deleted = pipe.delete_files_local(
        files=["model.db"], confirm=False, delete_all=None, ignore_errors=False
    )
    assert deleted == ["model.db"]
    assert "model.db" not in pipe.scan_local()
    # 2.0 versions of a model, 3.0 every model
    ModelFile("model_name", "v2", center_path=str(center)).filepipe().import_file("model.db")
    config = workspace / "cfg.json"
    config.write_text(f'{{"center_path": "{center}"}}')
    assert APILocal(profile="model_name", filecfg=str(config)).list_local_pipes() == [
        "model_version",
        "v2",
    ]
    assert list(list_profiles(center_path=center)) == ["model_name"]


def test_scan_sorts_filters_and_the_crc_is_the_sha256(workspace: Path) -> None:
    from modelcloud.pipe import ModelFile

    pipe = ModelFile("m", "1", center_path=workspace / "c").filepipe()
    (workspace / "big.bin").write_bytes(b"x" * 5000)
    pipe.import_file("big.bin")
    time.sleep(0.01)
    pipe.import_dir("local_model_workspace", subdir="code")
    files, names = pipe.scan_local(sortby="size", attributes=True)
    assert [f["size"] for f in files] == sorted(f["size"] for f in files)
    assert names[-1] == "big.bin"
    by_name = pipe.scan_local(sortby="name")
    assert by_name == sorted(by_name)
    assert pipe.scan_local(include="*.json") == ["code/features/columns.json"]
    assert pipe.scan_local(include="code/*", exclude=["*.json", "train.py"]) == ["code/setup.py"]
    big = next(f for f in files if f["filename"] == "big.bin")
    assert big["crc"] == hashlib.sha256(b"x" * 5000).hexdigest()
    with pytest.raises(PipeError, match="sortby"):
        pipe.scan_local(sortby="date")  # type: ignore[arg-type]


def test_a_center_indexed_with_md5s_reports_sha256s(workspace: Path) -> None:
    """Centers written when the crc was an MD5 keep those in their index; a scan reads each
    file once more and reports its SHA-256."""
    from modelcloud.pipe import ModelFile
    from modelcloud.pipe._center import INDEX_NAME

    pipe = ModelFile("m", "1", center_path=workspace / "c").filepipe()
    pipe.import_file("model.db")
    index = Path(pipe.dir) / INDEX_NAME
    stat = (Path(pipe.dir) / "model.db").stat()
    old = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "md5": "0" * 32}
    index.write_text(json.dumps({"model.db": old}))
    (found,), _ = pipe.scan_local(attributes=True)
    assert found["crc"] == hashlib.sha256((workspace / "model.db").read_bytes()).hexdigest()
    assert json.loads(index.read_text())["model.db"]["sha256"] == found["crc"]


def test_pull_dir_is_incremental(workspace: Path) -> None:
    from modelcloud.pipe import ModelFile

    pipe = ModelFile("m", "1", center_path=workspace / "c").filepipe()
    pipe.import_dir("local_model_workspace")
    assert len(pipe.pull_dir(workspace / "copy")) == 3
    assert pipe.pull_dir(workspace / "copy") == []
    (workspace / "local_model_workspace" / "train.py").write_text("changed\n")
    pipe.import_file(workspace / "local_model_workspace" / "train.py")
    assert pipe.pull_dir(workspace / "copy") == ["train.py"]
    assert (workspace / "copy" / "train.py").read_text() == "changed\n"


def test_move_removes_the_local_copy_and_default_center_comes_from_the_environment(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelcloud.pipe import APILocal, ModelFile, list_profiles

    monkeypatch.setenv("MODELCLOUD_CENTER", str(workspace / "shared"))
    pipe = ModelFile("m", "1").filepipe()
    pipe.import_file("model.db", subdir="weights", move=True)
    assert not (workspace / "model.db").exists()
    assert (workspace / "shared" / "m" / "1" / "weights" / "model.db").is_file()
    pipe.import_dir("local_model_workspace", move=True)
    assert not (workspace / "local_model_workspace").exists()
    assert APILocal("m").list_local_pipes() == ["1"]
    assert list_profiles()["m"]["versions"] == ["1"]


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "a/../../b",
        "a\\..\\b",
        "x\x00y",
        ".modelcloud-index.json",
    ],
)
def test_unsafe_names_are_refused_and_touch_nothing(workspace: Path, name: str) -> None:
    from modelcloud.pipe import ModelFile

    pipe = ModelFile("m", "1", center_path=workspace / "c").filepipe()
    pipe.import_file("model.db")
    with pytest.raises(UnsafePath) as excinfo:
        pipe.pull_file(name, workspace / "out")
    assert excinfo.value.filename == name
    with pytest.raises(UnsafePath):
        pipe.delete_files_local(files=[name], confirm=False)
    with pytest.raises(UnsafePath):
        pipe.import_file("model.db", subdir=name)
    assert pipe.scan_local() == ["model.db"]
    for bad in ("../x", "a/b", ""):
        with pytest.raises(UnsafePath):
            ModelFile(bad, "1", center_path=workspace / "c")
        with pytest.raises(UnsafePath):
            ModelFile("m", bad, center_path=workspace / "c")


def test_missing_files_name_the_file(workspace: Path) -> None:
    from modelcloud.pipe import ModelFile

    pipe = ModelFile("m", "1", center_path=workspace / "c").filepipe()
    with pytest.raises(PipeFileNotFound, match=r"nope\.bin") as excinfo:
        pipe.pull_file("nope.bin", workspace)
    assert excinfo.value.filename == "nope.bin"
    with pytest.raises(PipeFileNotFound, match=r"missing\.txt"):
        pipe.import_file("missing.txt")
    with pytest.raises(PipeFileNotFound, match="gone"):
        pipe.delete_files_local(files=["gone"], confirm=False)
    assert pipe.delete_files_local(files=["gone"], confirm=False, ignore_errors=True) == []
    with pytest.raises(PipeError, match="name the files"):
        pipe.delete_files_local(confirm=False)


def test_delete_all_and_an_interrupted_import_leaves_nothing(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelcloud.pipe import ModelFile, _center

    pipe = ModelFile("m", "1", center_path=workspace / "c").filepipe()
    pipe.import_dir("local_model_workspace")
    assert sorted(pipe.delete_files_local(delete_all=True, confirm=False)) == [
        "features/columns.json",
        "setup.py",
        "train.py",
    ]
    assert pipe.scan_local() == []
    assert not (pipe.dir / "features").exists()

    real_replace = os.replace

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(_center.os, "replace", crash)
    with pytest.raises(PipeError, match=r"model\.db"):
        pipe.import_file("model.db")
    monkeypatch.setattr(_center.os, "replace", real_replace)
    assert [p.name for p in pipe.dir.iterdir() if not p.name.startswith(".modelcloud-index")] == []
