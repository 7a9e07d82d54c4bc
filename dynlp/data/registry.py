"""Known corpora, their official sources and sha256 sums, and a verified fetch into a cache.

Owns Dataset, DATASETS, fetch, list_datasets, DataError and the ``dynlp data`` command.
Imports the standard library only (tqdm optionally); nothing from dynlp outside dynlp.data.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO, Callable, Mapping, NamedTuple

CACHE_VARIABLE = "DYNLP_DATA"
MIRROR_VARIABLE = "DYNLP_DATA_MIRROR"
DEFAULT_CACHE = Path("~/.cache/dynlp")
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60
UD_BASE = "https://raw.githubusercontent.com/UniversalDependencies"


class DataError(Exception):
    """A dataset could not be found, transferred or verified."""


@dataclass(frozen=True)
class Dataset:
    """One corpus: where its files come from and what they must hash to.

    ``splits`` maps split -> file name; ``sha256`` maps file name -> hex digest. Files
    are downloaded from ``urls[file]``, or, when ``archive_url`` is set, extracted from
    that zip at ``archive_members[file]``. Mirrors and the cache keep the files flat
    in the folder ``folder`` (the name with dashes turned into underscores).
    """

    name: str
    description: str
    splits: Mapping[str, str]
    sha256: Mapping[str, str]
    urls: Mapping[str, str] = field(default_factory=dict)
    archive_url: str | None = None
    archive_members: Mapping[str, str] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        return self.name.replace("-", "_")

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(self.sha256)

    def source(self, file_name: str) -> str:
        """The official address of one file (for an archive member: zip URL + member)."""
        if self.archive_url is not None:
            return f"{self.archive_url}!/{self.archive_members[file_name]}"
        return self.urls[file_name]


def _ud(name: str, repository: str, tag: str, description: str,
        sums: dict[str, str]) -> Dataset:
    splits = {split: file for file in sums for split in ("train", "dev", "test")
              if file.endswith(f"-ud-{split}.conllu")}
    urls = {file: f"{UD_BASE}/{repository}/{tag}/{file}" for file in sums}
    return Dataset(name, description, MappingProxyType(splits), MappingProxyType(sums),
                   MappingProxyType(urls))


DATASETS: Mapping[str, Dataset] = MappingProxyType({
    "ud-english-ewt": _ud(
        "ud-english-ewt", "UD_English-EWT", "r2.16",
        "UD English EWT v2.16, CoNLL-U (web text; tagging and dependency parsing)",
        {
            "en_ewt-ud-train.conllu":
                "3fb78e2b55482c8ee00caa653af436c88c9e5bc9a73ce26e4ae3ddc79d2b7e7b",
            "en_ewt-ud-dev.conllu":
                "531a54ff90d6ab12201c5a50c3e78e6ddac4de69abc4bce5d275d3cd29efe2b6",
            "en_ewt-ud-test.conllu":
                "e266e515a0a7547657ed3d90d9ba46487d6bd251f27ad4269d4e8a427c8555cd",
        },
    ),
    "ud-vietnamese-vtb": _ud(
        "ud-vietnamese-vtb", "UD_Vietnamese-VTB", "r2.17",
        "UD Vietnamese VTB v2.17, CoNLL-U (news; multi-syllable forms with spaces)",
        {
            "vi_vtb-ud-train.conllu":
                "1df180722db99b724f7368aca50597133bee28606de3394cd8d12a57da89978d",
            "vi_vtb-ud-dev.conllu":
                "0b779257b9225575b3b30e15d64cc4ef9945a77f8cceb9f92d794b483a2752dd",
            "vi_vtb-ud-test.conllu":
                "abc1b0ea98661bbb494a8c0da123ba2fe1a3ef71322c380fe66468884d9b4285",
        },
    ),
    "sst": Dataset(
        "sst",
        "Stanford Sentiment Treebank, PTB trees with labels 0-4 at every node",
        MappingProxyType({"train": "train.txt", "dev": "dev.txt", "test": "test.txt"}),
        MappingProxyType({
            "train.txt": "e2f3f41b0b1e6d4dddc0effe3bfc2d27ed8928079aa9a03d652311614fc5feb7",
            "dev.txt": "0e9336aed6e4730e19f58d00a77b3f0297efdb755f7b5e598c98a05e3f97ea40",
            "test.txt": "6e54806dee95cf80cd918e7dfb3f6770f6df24bf826f289a4d1f709e1c8f6761",
        }),
        archive_url="https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip",
        archive_members=MappingProxyType({
            "train.txt": "trees/train.txt",
            "dev.txt": "trees/dev.txt",
            "test.txt": "trees/test.txt",
        }),
    ),
})


class DatasetStatus(NamedTuple):
    name: str
    description: str
    cached: bool
    folder: Path


def get_dataset(name: str) -> Dataset:
    """The registry entry for name; DataError listing the known names otherwise."""
    dataset = DATASETS.get(name)
    if dataset is None:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return dataset


def cache_root(cache: str | os.PathLike | None = None) -> Path:
    """``cache``, else $DYNLP_DATA, else ~/.cache/dynlp."""
    if cache is not None:
        return Path(cache)
    return Path(os.environ.get(CACHE_VARIABLE) or DEFAULT_CACHE).expanduser()


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def list_datasets(cache: str | os.PathLike | None = None) -> list[DatasetStatus]:
    """Every known dataset with its description and whether the cache holds verified files."""
    root = cache_root(cache)
    statuses = []
    for name in sorted(DATASETS):
        dataset = DATASETS[name]
        folder = root / dataset.folder
        cached = all(_is_valid(folder / file, dataset.sha256[file]) for file in dataset.files)
        statuses.append(DatasetStatus(name, dataset.description, cached, folder))
    return statuses


def _is_valid(path: Path, expected: str) -> bool:
    return path.is_file() and sha256_of(path) == expected


def fetch(
    name: str,
    mirror: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Make sure the dataset is in the cache and return {split: path}.

    Files already cached are checked against their sha256 (a bad one is deleted and
    fetched again). Missing files are copied from ``mirror`` (or $DYNLP_DATA_MIRROR),
    laid out as ``<mirror>/<folder>/<file>``, or downloaded from the official address.
    Each file is written to a temporary file in the target folder, verified and then
    moved into place with ``os.replace``; on any failure the temporary file is removed
    and DataError is raised, so the cache never holds a partial or unverified file.
    """
    dataset = get_dataset(name)
    folder = cache_root(cache) / dataset.folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create cache folder {folder}: {error}") from error
    missing = []
    for file in dataset.files:
        target = folder / file
        if target.exists() and not _is_valid(target, dataset.sha256[file]):
            _report(progress, f"{target}: checksum mismatch, fetching it again")
            target.unlink()
        if not target.exists():
            missing.append(file)
    if missing:
        mirror_root = mirror if mirror is not None else os.environ.get(MIRROR_VARIABLE) or None
        if mirror_root is not None:
            _copy_from_mirror(dataset, missing, Path(mirror_root), folder, progress)
        elif dataset.archive_url is not None:
            _extract_from_archive(dataset, missing, folder, progress)
        else:
            for file in missing:
                _download_file(dataset, file, folder, progress)
    return {split: folder / file for split, file in dataset.splits.items()}


resolve = fetch


def _report(progress: bool, message: str) -> None:
    if progress:
        print(f"dynlp data: {message}", file=sys.stderr)


def _install(
    source: BinaryIO, target: Path, expected: str, origin: str,
    size: int | None = None, progress: bool = False,
) -> None:
    """Stream source into a temporary file next to target, verify it, then rename."""
    handle = tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False
    )
    temporary = Path(handle.name)
    try:
        digest = hashlib.sha256()
        with handle, _progress_bar(progress, size, target.name) as advance:
            for block in iter(lambda: source.read(CHUNK_BYTES), b""):
                digest.update(block)
                handle.write(block)
                advance(len(block))
        actual = digest.hexdigest()
        if actual != expected:
            raise DataError(
                f"{target.name}: sha256 mismatch for {origin}: expected {expected}, got {actual}"
            )
        os.chmod(temporary, 0o666 & ~_umask())  # as a file made by open(); mkstemp's is 0600
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _NoBar:
    def __enter__(self) -> Callable[[int], None]:
        return lambda count: None

    def __exit__(self, *exc_info: object) -> None:
        return None


class _TqdmBar:
    def __init__(self, size: int | None, label: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=size, desc=label, unit="B", unit_scale=True, leave=False)

    def __enter__(self) -> Callable[[int], None]:
        return self.bar.update

    def __exit__(self, *exc_info: object) -> None:
        self.bar.close()


def _progress_bar(progress: bool, size: int | None, label: str) -> _NoBar | _TqdmBar:
    if not progress:
        return _NoBar()
    try:
        return _TqdmBar(size, label)
    except ImportError:
        return _NoBar()


def _copy_from_mirror(
    dataset: Dataset, files: list[str], mirror: Path, folder: Path, progress: bool
) -> None:
    for file in files:
        source = mirror / dataset.folder / file
        if not source.is_file():
            raise DataError(f"{file}: not found in mirror (looked for {source})")
        _report(progress, f"copying {source} -> {folder / file}")
        try:
            with open(source, "rb") as handle:
                _install(handle, folder / file, dataset.sha256[file], str(source))
        except OSError as error:
            raise DataError(f"{file}: copy from {source} to {folder} failed: {error}") from error


def _open_url(url: str) -> BinaryIO:
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise DataError(f"cannot download {url}: {error}") from error


def _content_length(response: BinaryIO) -> int | None:
    size = getattr(response, "headers", {}).get("Content-Length")
    return int(size) if size and size.isdigit() else None


def _download_file(dataset: Dataset, file: str, folder: Path, progress: bool) -> None:
    url = dataset.urls[file]
    _report(progress, f"downloading {url}")
    response = _open_url(url)
    try:
        with response:
            _install(response, folder / file, dataset.sha256[file], url,
                     _content_length(response), progress)
    except (urllib.error.URLError, OSError) as error:
        raise DataError(f"{file}: download from {url} to {folder} failed: {error}") from error


def _extract_from_archive(
    dataset: Dataset, files: list[str], folder: Path, progress: bool
) -> None:
    url = dataset.archive_url
    assert url is not None
    _report(progress, f"downloading {url}")
    response = _open_url(url)
    archive_handle = tempfile.NamedTemporaryFile(
        dir=folder, prefix=".archive.", suffix=".zip.part", delete=False
    )
    archive = Path(archive_handle.name)
    try:
        size = _content_length(response)
        with response, archive_handle, _progress_bar(progress, size, Path(url).name) as advance:
            for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                archive_handle.write(block)
                advance(len(block))
        with zipfile.ZipFile(archive) as opened:
            names = set(opened.namelist())
            for file in files:
                member = dataset.archive_members[file]
                if member not in names:
                    raise DataError(f"{file}: member {member} missing from {url}")
                with opened.open(member) as source:
                    _install(source, folder / file, dataset.sha256[file], f"{url}!/{member}")
    except (urllib.error.URLError, OSError, zipfile.BadZipFile) as error:
        raise DataError(f"download or extraction of {url} failed: {error}") from error
    finally:
        archive.unlink(missing_ok=True)


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgumentError(message)


def cli_data(argv: list[str]) -> int:
    """``dynlp data list`` and ``dynlp data fetch NAME [--mirror DIR] [--cache DIR]``.

    Prints results to stdout; any error is one ``dynlp data: error: ...`` line on
    stderr and the return value 1.
    """
    parser = _Parser(prog="dynlp data", description="List and fetch the known datasets.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    listing = commands.add_parser("list", help="show the datasets and whether they are cached")
    listing.add_argument("--cache", help="cache folder (default $DYNLP_DATA or ~/.cache/dynlp)")
    getting = commands.add_parser("fetch", help="copy or download a dataset into the cache")
    getting.add_argument("name", help="dataset name, see 'dynlp data list'")
    getting.add_argument("--mirror", help="folder holding <name_with_underscores>/<file>")
    getting.add_argument("--cache", help="cache folder (default $DYNLP_DATA or ~/.cache/dynlp)")
    getting.add_argument("--quiet", action="store_true", help="no progress messages")
    try:
        arguments = parser.parse_args(argv)
        if arguments.command == "list":
            for status in list_datasets(arguments.cache):
                state = "cached" if status.cached else "not cached"
                print(f"{status.name}\t{state}\t{status.description}")
        else:
            paths = fetch(arguments.name, mirror=arguments.mirror, cache=arguments.cache,
                          progress=not arguments.quiet)
            for split, path in paths.items():
                print(f"{split}\t{path}")
    except SystemExit as exit_request:
        return exit_request.code if isinstance(exit_request.code, int) else 0
    except BrokenPipeError:
        raise  # the reader of stdout has gone: the caller exits quietly
    except (_ArgumentError, DataError, OSError) as error:
        print(f"dynlp data: error: {error}", file=sys.stderr)
        return 1
    return 0
