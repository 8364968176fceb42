"""Getting a dataset's files into the data dir, verified.

For each file, in order: an already installed and verified copy (marker file) -> a local mirror folder (argument,
else $FRUITLAB_DATA_MIRROR) -> the file placed by hand in the data dir -> a public URL -> a DataError that says
where to get the file and where to put it. Every file is checked against its sha256 before use; archives are
extracted into a staging folder and moved into place only when complete, so an interrupted fetch never looks
like a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import uuid
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from fruitlab.data.remotes import REMOTES, ArchiveFile, Remote
from fruitlab.errors import DataError, did_you_mean

__all__ = ["ArchiveFile", "Remote", "extract_archive", "fetch", "is_fetched", "obtain_file", "resolve_data_dir"]

DATA_DIR_ENV = "FRUITLAB_DATA_DIR"
MIRROR_ENV = "FRUITLAB_DATA_MIRROR"
MARKER = ".fruitlab-fetched.json"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The argument, else $FRUITLAB_DATA_DIR, else ~/.cache/fruitlab/datasets (not created here)."""
    value = data_dir or os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "fruitlab" / "datasets"


def resolve_mirror(mirror: str | os.PathLike[str] | None = None) -> Path | None:
    """The argument, else $FRUITLAB_DATA_MIRROR, else None."""
    value = mirror or os.environ.get(MIRROR_ENV)
    return Path(value).expanduser() if value else None


def get_remote(name: str | Remote) -> Remote:
    if isinstance(name, Remote):
        return name
    if name not in REMOTES:
        raise DataError(
            f"no remote files are known for {name!r}{did_you_mean(name, REMOTES)}; known: {', '.join(REMOTES)}"
        )
    return REMOTES[name]


def fetch(
    name: str | Remote,
    data_dir: str | os.PathLike[str] | None = None,
    mirror: str | os.PathLike[str] | None = None,
    force: bool = False,
    *,
    progress: bool = True,
) -> Path:
    """Install a remote's files into `<data_dir>/<name>/` (extracting archives) and return that folder."""
    remote = get_remote(name)
    root = resolve_data_dir(data_dir)
    target = root / remote.name
    if not force and is_fetched(remote, root):
        return target
    mirror_dir = resolve_mirror(mirror)
    root.mkdir(parents=True, exist_ok=True)
    obtained = [_obtain(f, remote.name, root, mirror_dir, progress) for f in remote.files]
    _install(remote, [path for path, _ in obtained], root)
    for path, downloaded in obtained:
        if downloaded:
            path.unlink(missing_ok=True)  # extracted now; a later fetch(force=True) downloads it again
    return target


def is_fetched(remote: str | Remote, data_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when `<data_dir>/<name>/` was installed completely from files with the expected checksums."""
    remote = get_remote(remote)
    target = resolve_data_dir(data_dir) / remote.name
    try:
        marked = json.loads((target / MARKER).read_text()) == _marker(remote)
    except (OSError, ValueError):
        return False
    # A folder someone emptied by hand is not installed any more: fetch it again rather than fail later.
    return marked and all((target / p).exists() for p in remote.expect)


def available_locally(
    remote: str | Remote, data_dir: str | os.PathLike[str] | None = None, mirror: str | os.PathLike[str] | None = None
) -> bool:
    """True when every file of the remote is in the mirror or the data dir, so fetching needs no network."""
    remote = get_remote(remote)
    places = [p for p in (resolve_mirror(mirror), resolve_data_dir(data_dir)) if p is not None]
    return all(any((place / f.name).is_file() for place in places) for f in remote.files)


def obtain_file(
    file: ArchiveFile,
    dataset: str,
    data_dir: str | os.PathLike[str] | None = None,
    mirror: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
) -> Path:
    """A verified local copy of one file (mirror, data dir, or downloaded into the data dir)."""
    root = resolve_data_dir(data_dir)
    return _obtain(file, dataset, root, resolve_mirror(mirror), progress)[0]


def verify_file(file: ArchiveFile, path: Path, origin: str = "") -> None:
    """DataError unless the file has the published checksum(s); the message names the file and both hashes."""
    sha256, md5 = _digests(path)
    checks = [("sha256", file.sha256, sha256), ("md5", file.md5, md5)]
    for algo, expected, actual in checks:
        if expected and actual != expected.lower():
            source = f" ({origin})" if origin else ""
            fix = f" from {file.urls[0]}" if file.urls else ""
            raise DataError(
                f"{path}{source}: {algo} mismatch for {file.name}: expected {expected}, got {actual}. "
                f"The file is incomplete, corrupt or a different version and was not used; "
                f"replace it with a fresh copy{fix}"
            )


# --------------------------------------------------------------------------------------------- obtaining
def _obtain(file: ArchiveFile, dataset: str, root: Path, mirror: Path | None, progress: bool) -> tuple[Path, bool]:
    """(verified path, True when it was downloaded just now)."""
    for candidate, origin in ((mirror and mirror / file.name, "in the mirror"), (root / file.name, "in the data dir")):
        if candidate and candidate.is_file():
            verify_file(file, candidate, origin)
            return candidate, False
    downloaded, errors = _download(file, root, progress)
    if downloaded is not None:
        return downloaded, True
    raise _missing_file_error(file, dataset, root, mirror, errors)


def _download(file: ArchiveFile, root: Path, progress: bool) -> tuple[Path | None, list[str]]:
    """Try each URL into `<name>.part`, verify, then rename; (path or None, one error line per failed URL)."""
    if not file.urls:
        return None, []
    from torch.hub import download_url_to_file  # lazy: importing torch takes seconds

    final = root / file.name
    part = final.with_name(f"{final.name}.part")
    errors = []
    for url in file.urls:
        try:
            download_url_to_file(url, str(part), hash_prefix=None, progress=progress)
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors; ValueError: a malformed URL
            part.unlink(missing_ok=True)
            errors.append(f"{url}: {exc}")
            continue
        try:
            verify_file(file, part, origin=f"downloaded from {url}")
        except DataError:
            part.unlink(missing_ok=True)  # never leave a bad download where the next run would find it
            raise
        os.replace(part, final)
        return final, errors
    return None, errors


def _missing_file_error(
    file: ArchiveFile, dataset: str, root: Path, mirror: Path | None, errors: list[str]
) -> DataError:
    tried = []
    if mirror is None:
        tried.append(f"no mirror folder is set (pass mirror= or set {MIRROR_ENV})")
    elif not mirror.is_dir():
        tried.append(f"the mirror folder {mirror} does not exist")
    else:
        tried.append(f"{mirror / file.name} does not exist")
    tried.append(f"{root / file.name} does not exist")
    tried.extend(f"download failed: {e}" for e in errors)
    if not file.urls:
        tried.append("it has no public download URL")
    where = f"a mirror folder (and set {MIRROR_ENV} to that folder)" if mirror is None else f"{mirror}/"
    return DataError(
        f"cannot get {file.name} for dataset {dataset!r}: " + "; ".join(tried) + ".\n"
        f"Where to get it: {file.manual or ', '.join(file.urls)}.\n"
        f"Where to put it: {where} or {root / file.name} (expected sha256 {file.sha256})."
    )


def _digests(path: Path) -> tuple[str, str]:
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


# -------------------------------------------------------------------------------------------- installing
def _marker(remote: Remote) -> dict[str, object]:
    return {"remote": remote.name, "files": {f.name: f.sha256 for f in remote.files}}


def _install(remote: Remote, paths: list[Path], root: Path) -> None:
    target = root / remote.name
    staging = root / f".{remote.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        for file, path in zip(remote.files, paths, strict=True):
            if file.unpack:
                extract_archive(path, staging)
            else:
                shutil.copyfile(path, staging / file.name)
        missing = [p for p in remote.expect if not (staging / p).exists()]
        if missing:
            names = ", ".join(f.name for f in remote.files)
            raise DataError(f"{names} for {remote.name!r} did not contain {', '.join(missing)}; is it the right file?")
        (staging / MARKER).write_text(json.dumps(_marker(remote)))
        _move_into_place(staging, target, remote)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, target: Path, remote: Remote) -> None:
    if target.exists():
        shutil.rmtree(target)  # an old, partial or forced copy inside our own data dir
    try:
        os.replace(staging, target)
    except OSError:
        # Another process installed the same files meanwhile (e.g. one per GPU): theirs is as good as ours.
        if not is_fetched(remote, target.parent):
            raise


# ------------------------------------------------------------------------------------------- extracting
def extract_archive(archive: Path, dest: Path) -> None:
    """Extract a tar (any compression) or zip archive, chosen by content; DataError for unsafe members."""
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, dest)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, dest)
    else:
        raise DataError(f"{archive}: not a tar or zip archive; replace it with the published file")


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # one pass: check each member just before extracting it
                _check_member(member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise DataError(
                        f"{archive}: refusing to extract {member.name!r}: only files and folders are allowed"
                    )
                tar.extract(member, dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc}); the archive is damaged - replace it") from None


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(info.filename, archive)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink stored with its unix mode
                    raise DataError(f"{archive}: refusing to extract {info.filename!r}: links are not allowed")
                zf.extract(info, dest)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc}); the archive is damaged - replace it") from None


def _check_member(name: str, archive: Path) -> None:
    """Refuse absolute paths and '..': extracting them would write outside the destination folder."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or ".." in parts:
        raise DataError(
            f"{archive}: refusing to extract {name!r}: archive members must be relative paths without '..'. "
            "The archive is damaged or malicious; delete it and get it again"
        )
