"""Tests for dynlp.data.registry: verified fetch from mirrors, file URLs and zips; the CLI.

No network: fake datasets point at tmp_path mirrors or file:// URLs. The real mirror in
../shared/data is used when present.
"""

import hashlib
import zipfile
from pathlib import Path
from types import MappingProxyType

import pytest

from dynlp.data import registry
from dynlp.data.registry import DATASETS, DataError, Dataset, cli_data, fetch, list_datasets

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CONTENT = {"fake-train.txt": b"train data\n", "fake-dev.txt": b"dev data\n"}
SPLITS = {"train": "fake-train.txt", "dev": "fake-dev.txt"}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    monkeypatch.delenv("DYNLP_DATA", raising=False)
    monkeypatch.delenv("DYNLP_DATA_MIRROR", raising=False)


def register(monkeypatch, **options) -> Dataset:
    dataset = Dataset(
        "fake-set", "a fake dataset for tests", SPLITS,
        {file: digest(data) for file, data in CONTENT.items()}, **options
    )
    monkeypatch.setattr(registry, "DATASETS", MappingProxyType({**DATASETS, "fake-set": dataset}))
    return dataset


def make_mirror(root: Path, content=CONTENT) -> Path:
    folder = root / "fake_set"
    folder.mkdir(parents=True)
    for file, data in content.items():
        (folder / file).write_bytes(data)
    return root


def test_registry_entries():
    assert set(DATASETS) == {"ud-english-ewt", "ud-vietnamese-vtb", "sst"}
    ewt = DATASETS["ud-english-ewt"]
    assert ewt.folder == "ud_english_ewt"
    assert ewt.splits["train"] == "en_ewt-ud-train.conllu"
    assert ewt.source("en_ewt-ud-dev.conllu") == (
        "https://raw.githubusercontent.com/UniversalDependencies/UD_English-EWT/r2.16/"
        "en_ewt-ud-dev.conllu"
    )
    vtb = DATASETS["ud-vietnamese-vtb"]
    assert vtb.folder == "ud_vietnamese_vtb" and "/UD_Vietnamese-VTB/r2.17/" in vtb.urls[
        "vi_vtb-ud-test.conllu"]
    sst = DATASETS["sst"]
    assert sst.splits == {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"}
    assert sst.archive_members["dev.txt"] == "trees/dev.txt"
    for dataset in DATASETS.values():
        assert set(dataset.splits) == {"train", "dev", "test"}
        assert set(dataset.splits.values()) == set(dataset.files)
        assert all(len(value) == 64 for value in dataset.sha256.values())


def test_fetch_from_mirror_then_from_cache(monkeypatch, tmp_path):
    register(monkeypatch)
    mirror = make_mirror(tmp_path / "mirror")
    cache = tmp_path / "cache"
    paths = fetch("fake-set", mirror=mirror, cache=cache, progress=False)
    assert paths == {split: cache / "fake_set" / file for split, file in SPLITS.items()}
    assert paths["train"].read_bytes() == CONTENT["fake-train.txt"]
    assert sorted(p.name for p in (cache / "fake_set").iterdir()) == sorted(CONTENT)
    (mirror / "fake_set" / "fake-train.txt").unlink()
    assert fetch("fake-set", mirror=mirror, cache=cache, progress=False) == paths


def test_corrupt_mirror_file_leaves_nothing(monkeypatch, tmp_path):
    dataset = register(monkeypatch)
    mirror = make_mirror(tmp_path / "mirror", {**CONTENT, "fake-dev.txt": b"tampered\n"})
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as caught:
        fetch("fake-set", mirror=mirror, cache=cache, progress=False)
    message = str(caught.value)
    assert "fake-dev.txt" in message and dataset.sha256["fake-dev.txt"] in message
    assert digest(b"tampered\n") in message
    assert not (cache / "fake_set" / "fake-dev.txt").exists()
    assert [p.name for p in (cache / "fake_set").iterdir()] == ["fake-train.txt"]


def test_corrupt_cached_file_is_fetched_again(monkeypatch, tmp_path):
    register(monkeypatch)
    mirror = make_mirror(tmp_path / "mirror")
    cache = tmp_path / "cache"
    paths = fetch("fake-set", mirror=mirror, cache=cache, progress=False)
    paths["dev"].write_bytes(b"bit rot\n")
    fetch("fake-set", mirror=mirror, cache=cache, progress=False)
    assert paths["dev"].read_bytes() == CONTENT["fake-dev.txt"]


def test_environment_variables(monkeypatch, tmp_path):
    register(monkeypatch)
    monkeypatch.setenv("DYNLP_DATA_MIRROR", str(make_mirror(tmp_path / "mirror")))
    monkeypatch.setenv("DYNLP_DATA", str(tmp_path / "env-cache"))
    paths = fetch("fake-set", progress=False)
    assert paths["dev"] == tmp_path / "env-cache" / "fake_set" / "fake-dev.txt"
    assert paths["dev"].read_bytes() == CONTENT["fake-dev.txt"]


def test_missing_mirror_file_and_unknown_name(monkeypatch, tmp_path):
    register(monkeypatch)
    mirror = make_mirror(tmp_path / "mirror", {"fake-train.txt": CONTENT["fake-train.txt"]})
    with pytest.raises(DataError, match="fake-dev.txt: not found in mirror"):
        fetch("fake-set", mirror=mirror, cache=tmp_path / "cache", progress=False)
    with pytest.raises(DataError, match="known datasets: fake-set, sst, ud-english-ewt"):
        fetch("no-such-set", cache=tmp_path / "cache", progress=False)


def test_download_from_url(monkeypatch, tmp_path):
    source = make_mirror(tmp_path / "server") / "fake_set"
    urls = {file: (source / file).as_uri() for file in CONTENT}
    register(monkeypatch, urls=urls)
    paths = fetch("fake-set", cache=tmp_path / "cache", progress=False)
    assert paths["train"].read_bytes() == CONTENT["fake-train.txt"]
    (tmp_path / "cache" / "fake_set" / "fake-dev.txt").unlink()
    (source / "fake-dev.txt").unlink()
    with pytest.raises(DataError, match="cannot download"):
        fetch("fake-set", cache=tmp_path / "cache", progress=False)
    assert sorted(p.name for p in (tmp_path / "cache" / "fake_set").iterdir()) == [
        "fake-train.txt"]


def test_download_and_extract_zip(monkeypatch, tmp_path, capsys):
    archive = tmp_path / "trees.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        for file, data in CONTENT.items():
            opened.writestr(f"trees/{file}", data)
        opened.writestr("trees/other.txt", b"ignored\n")
    members = {file: f"trees/{file}" for file in CONTENT}
    register(monkeypatch, archive_url=archive.as_uri(), archive_members=members)
    cache = tmp_path / "cache"
    paths = fetch("fake-set", cache=cache, progress=True)
    assert paths["dev"].read_bytes() == CONTENT["fake-dev.txt"]
    assert sorted(p.name for p in (cache / "fake_set").iterdir()) == sorted(CONTENT)
    assert f"downloading {archive.as_uri()}" in capsys.readouterr().err


def test_zip_with_bad_member_leaves_nothing(monkeypatch, tmp_path):
    archive = tmp_path / "trees.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        opened.writestr("trees/fake-train.txt", b"wrong\n")
        opened.writestr("trees/fake-dev.txt", CONTENT["fake-dev.txt"])
    members = {file: f"trees/{file}" for file in CONTENT}
    register(monkeypatch, archive_url=archive.as_uri(), archive_members=members)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="fake-train.txt: sha256 mismatch"):
        fetch("fake-set", cache=cache, progress=False)
    assert list((cache / "fake_set").iterdir()) == []


def test_list_datasets(monkeypatch, tmp_path):
    register(monkeypatch)
    cache = tmp_path / "cache"
    statuses = {status.name: status for status in list_datasets(cache)}
    assert set(statuses) == {"fake-set", "sst", "ud-english-ewt", "ud-vietnamese-vtb"}
    assert not statuses["fake-set"].cached
    fetch("fake-set", mirror=make_mirror(tmp_path / "mirror"), cache=cache, progress=False)
    statuses = {status.name: status for status in list_datasets(cache)}
    assert statuses["fake-set"].cached and not statuses["sst"].cached
    assert statuses["fake-set"].description == "a fake dataset for tests"


def test_cli(monkeypatch, tmp_path, capsys):
    register(monkeypatch)
    mirror = make_mirror(tmp_path / "mirror")
    cache = tmp_path / "cache"
    assert cli_data(["fetch", "fake-set", "--mirror", str(mirror), "--cache", str(cache),
                     "--quiet"]) == 0
    output = capsys.readouterr().out
    assert f"train\t{cache / 'fake_set' / 'fake-train.txt'}" in output
    assert cli_data(["list", "--cache", str(cache)]) == 0
    assert "fake-set\tcached\t" in capsys.readouterr().out
    for argv in (["fetch", "nope", "--cache", str(cache)], [], ["frobnicate"], ["fetch"]):
        assert cli_data(argv) == 1
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dynlp data: error: ")
    assert cli_data(["--help"]) == 0
    assert "usage: dynlp data" in capsys.readouterr().out


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"no real mirror at {SHARED}")
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_real_fetch_from_real_mirror(tmp_path, name):
    paths = fetch(name, mirror=SHARED, cache=tmp_path, progress=False)
    dataset = DATASETS[name]
    assert set(paths) == {"train", "dev", "test"}
    for split, path in paths.items():
        assert path == tmp_path / dataset.folder / dataset.splits[split]
        assert path.read_bytes() == (SHARED / dataset.folder / path.name).read_bytes()
