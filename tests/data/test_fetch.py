from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from fruitlab.data.fetch import (
    MARKER,
    ArchiveFile,
    Remote,
    extract_archive,
    fetch,
    is_fetched,
    resolve_data_dir,
    verify_file,
)
from fruitlab.errors import DataError

from .helpers import make_tar, make_zip, sha256

TOY_MEMBERS = {"pack/a.txt": b"alpha\n", "pack/sub/b.txt": b"beta\n"}


def toy_remote(archive: Path, urls: tuple[str, ...] = (), digest: str | None = None) -> Remote:
    file = ArchiveFile(archive.name, sha256=digest or sha256(archive), urls=urls, manual="ask the toy maintainers")
    return Remote("toy", files=(file,), expect=("pack/a.txt",))


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    make_tar(tmp_path / "mirror" / "toy.tar.gz", TOY_MEMBERS)
    return tmp_path / "mirror"


def test_data_dir_is_argument_then_env_then_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FRUITLAB_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("FRUITLAB_DATA_DIR")
    assert resolve_data_dir() == Path.home() / ".cache" / "fruitlab" / "datasets"


def test_fetch_from_mirror_installs_verified_files_once(mirror: Path, data_dir: Path) -> None:
    remote = toy_remote(mirror / "toy.tar.gz")
    folder = fetch(remote, data_dir, mirror)
    assert folder == data_dir / "toy"
    assert (folder / "pack" / "sub" / "b.txt").read_bytes() == b"beta\n"
    assert is_fetched(remote, data_dir)
    assert not (data_dir / "toy.tar.gz").exists()  # extracted straight from the mirror, not copied

    (mirror / "toy.tar.gz").unlink()  # installed and marked: the mirror is no longer needed
    assert fetch(remote, data_dir, mirror) == folder


def test_mirror_comes_from_the_environment(mirror: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRUITLAB_DATA_MIRROR", str(mirror))
    assert (fetch(toy_remote(mirror / "toy.tar.gz"), data_dir) / "pack" / "a.txt").is_file()


def test_force_reinstalls(mirror: Path, data_dir: Path) -> None:
    remote = toy_remote(mirror / "toy.tar.gz")
    folder = fetch(remote, data_dir, mirror)
    (folder / "pack" / "a.txt").write_text("edited")
    (folder / "stray.txt").write_text("left over")
    fetch(remote, data_dir, mirror, force=True)
    assert (folder / "pack" / "a.txt").read_bytes() == b"alpha\n"
    assert not (folder / "stray.txt").exists()


def test_sha256_mismatch_names_file_and_both_hashes_and_installs_nothing(mirror: Path, data_dir: Path) -> None:
    archive = mirror / "toy.tar.gz"
    expected = "0" * 64
    with pytest.raises(DataError) as err:
        fetch(toy_remote(archive, digest=expected), data_dir, mirror)
    message = str(err.value)
    assert str(archive) in message and expected in message and sha256(archive) in message
    assert not (data_dir / "toy").exists()
    assert not any(data_dir.iterdir())  # no staging folder left behind either


def test_md5_is_checked_when_published(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"data")
    file = ArchiveFile("f.bin", sha256=sha256(path), md5="f" * 32)
    with pytest.raises(DataError, match="md5 mismatch"):
        verify_file(file, path)


def test_file_placed_in_the_data_dir_is_used(mirror: Path, data_dir: Path) -> None:
    data_dir.mkdir()
    (mirror / "toy.tar.gz").rename(data_dir / "toy.tar.gz")
    remote = toy_remote(data_dir / "toy.tar.gz")
    assert (fetch(remote, data_dir) / "pack" / "a.txt").is_file()
    assert (data_dir / "toy.tar.gz").is_file()  # the user's own file is kept


def test_missing_file_says_where_to_get_it_and_where_to_put_it(tmp_path: Path, data_dir: Path) -> None:
    remote = toy_remote(make_tar(tmp_path / "elsewhere" / "toy.tar.gz", TOY_MEMBERS))
    with pytest.raises(DataError) as err:
        fetch(remote, data_dir)
    message = str(err.value)
    assert "toy.tar.gz" in message and "ask the toy maintainers" in message
    assert "FRUITLAB_DATA_MIRROR" in message and str(data_dir / "toy.tar.gz") in message
    assert "no public download URL" in message

    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'} does not exist"):
        fetch(remote, data_dir, mirror=tmp_path / "nowhere")


def test_real_fruits_remote_without_mirror_points_to_kaggle(data_dir: Path) -> None:
    with pytest.raises(DataError) as err:
        fetch("fruits_fresh_rotten", data_dir)
    message = str(err.value)
    assert "kaggle.com/datasets/sriramr/fruits-fresh-and-rotten-for-classification" in message
    assert "lorenzo-querol/CSINTSY-rotten-fruits-classification" in message
    assert str(data_dir / "fruits-fresh-rotten.tar.gz") in message and "FRUITLAB_DATA_MIRROR" in message


def test_unknown_remote_name_suggests_the_close_one() -> None:
    with pytest.raises(DataError, match="did you mean 'cifar10'"):
        fetch("cifar1O")


# ------------------------------------------------------------------------------------------------ download
def test_download_from_a_local_http_server(tmp_path: Path, data_dir: Path, http_server: tuple[str, Path]) -> None:
    base, served = http_server
    archive = make_tar(served / "toy.tar.gz", TOY_MEMBERS)
    remote = toy_remote(archive, urls=(f"{base}/missing.tar.gz", f"{base}/toy.tar.gz"))
    folder = fetch(remote, data_dir, progress=False)
    assert (folder / "pack" / "a.txt").read_bytes() == b"alpha\n"
    assert sorted(p.name for p in data_dir.iterdir()) == ["toy"]  # archive removed after extraction, no .part


def test_download_with_wrong_checksum_is_refused(data_dir: Path, http_server: tuple[str, Path]) -> None:
    base, served = http_server
    archive = make_tar(served / "toy.tar.gz", TOY_MEMBERS)
    expected = "f" * 64
    with pytest.raises(DataError) as err:
        fetch(toy_remote(archive, urls=(f"{base}/toy.tar.gz",), digest=expected), data_dir, progress=False)
    message = str(err.value)
    assert f"{base}/toy.tar.gz" in message and expected in message and sha256(archive) in message
    assert not any(data_dir.iterdir())  # neither the .part nor the archive nor an extracted folder


def test_failed_downloads_are_listed(tmp_path: Path, data_dir: Path, http_server: tuple[str, Path]) -> None:
    base, _ = http_server
    archive = make_tar(tmp_path / "toy.tar.gz", TOY_MEMBERS)
    with pytest.raises(DataError, match=rf"download failed: {base}/toy.tar.gz: .*404"):
        fetch(toy_remote(archive, urls=(f"{base}/toy.tar.gz",)), data_dir, progress=False)


# ---------------------------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("name", ["../evil.txt", "pack/../../evil.txt", "/tmp/evil-fruitlab.txt"])
@pytest.mark.parametrize("maker", [make_tar, make_zip])
def test_extraction_refuses_paths_that_leave_the_folder(tmp_path: Path, name: str, maker) -> None:
    archive = maker(tmp_path / "bad.archive", {"ok.txt": b"ok", name: b"evil"})
    dest = tmp_path / "out" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(DataError, match="refusing to extract"):
        extract_archive(archive, dest)
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/evil-fruitlab.txt").exists()


def test_extraction_refuses_links(tmp_path: Path) -> None:
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tar:
        link = tarfile.TarInfo("pack/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(DataError, match="only files and folders"):
        extract_archive(archive, tmp_path / "out")


def test_extraction_chooses_the_format_by_content(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "looks-like.tar.gz", {"pack/a.txt": b"zip inside"})
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "pack" / "a.txt").read_bytes() == b"zip inside"
    not_archive = tmp_path / "x.zip"
    not_archive.write_bytes(io.BytesIO(b"plain").getvalue())
    with pytest.raises(DataError, match="not a tar or zip"):
        extract_archive(not_archive, tmp_path / "out")


def test_archive_without_the_expected_content_is_not_installed(tmp_path: Path, data_dir: Path) -> None:
    archive = make_tar(tmp_path / "m" / "toy.tar.gz", {"other/a.txt": b"x"})
    with pytest.raises(DataError, match=r"did not contain pack/a\.txt"):
        fetch(toy_remote(archive), data_dir, tmp_path / "m")
    assert not (data_dir / "toy").exists() and not (data_dir / "toy" / MARKER).exists()


def test_an_installed_copy_missing_its_content_is_fetched_again(mirror: Path, data_dir: Path) -> None:
    remote = toy_remote(mirror / "toy.tar.gz")
    folder = fetch(remote, data_dir, mirror)
    (folder / "pack" / "a.txt").unlink()
    assert not is_fetched(remote, data_dir)
    assert (fetch(remote, data_dir, mirror) / "pack" / "a.txt").is_file()
