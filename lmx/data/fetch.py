"""Public downloads lmx fetches itself (datasets outside tfds' catalog): each URL with its
sha256 in code, checked before anything is cached under $LMX_DATA_DIR (default ~/.cache/lmx).

A download is fetched to a temporary file, refused on a checksum mismatch, extracted into a
temporary folder and only then renamed to CACHE/NAME, so a failed fetch leaves no half-written
cache. `python -m lmx.data fetch NAME` runs it by hand; a config file "fetch:NAME/FILE"
(lmx.data.sources.local_file) runs it on first use. Nothing here is shipped in the repository:
their licences restrict use (CC BY-NC-SA: non-commercial, share-alike), so users fetch them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile

from absl import logging


@dataclasses.dataclass(frozen=True)
class Download:
    """One public archive: where it is, what it must hash to, what it holds."""
    url: str
    sha256: str
    licence: str
    files: tuple[str, ...]  # paths inside the extracted folder that must exist


DOWNLOADS: dict[str, Download] = {
    # Malo et al. 2014, v1.0 as the authors published it on the HuggingFace Hub (Pyry Takala's
    # account); the sha256 and size (681,890 bytes) are those HF's dataset_infos.json records.
    "financial_phrasebank": Download(
        url="https://huggingface.co/datasets/takala/financial_phrasebank/resolve/main/data/"
            "FinancialPhraseBank-v1.0.zip",
        sha256="0e1a06c4900fdae46091d031068601e3773ba067c7cecb5b0da1dcba5ce989a6",
        licence="CC BY-NC-SA 3.0 (non-commercial; not redistributed by lmx)",
        files=("FinancialPhraseBank-v1.0/Sentences_AllAgree.txt",
               "FinancialPhraseBank-v1.0/Sentences_50Agree.txt")),
}


def cache_dir() -> str:
    """$LMX_DATA_DIR, else ~/.cache/lmx."""
    return os.environ.get("LMX_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "lmx")


def _download(url: str, out: str, timeout: float) -> str:
    """Streams `url` (http(s) or file://) into `out`; returns its sha256."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(out, "wb") as f:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def _extract(archive: str, folder: str) -> None:
    """A zip archive's members into `folder` (a member outside it is refused); else the file."""
    if not zipfile.is_zipfile(archive):
        shutil.copy(archive, folder)
        return
    with zipfile.ZipFile(archive) as z:
        root = os.path.realpath(folder)
        for member in z.namelist():
            target = os.path.realpath(os.path.join(folder, member))
            if os.path.commonpath([root, target]) != root:
                raise ValueError(f"{archive}: member {member!r} would land outside {folder}")
        z.extractall(folder)


def fetch(name: str, *, url: str = "", timeout: float = 60.0) -> str:
    """The cached folder of download `name`, fetched and checked first if not cached.

    `url`: a mirror to fetch from instead (an http(s) or file:// URL); it must hash the same.
    """
    if name not in DOWNLOADS:
        raise ValueError(f"lmx.data.fetch: unknown download {name!r}; known: {sorted(DOWNLOADS)}")
    spec = DOWNLOADS[name]
    final = os.path.join(cache_dir(), name)
    if os.path.isdir(final):
        return final
    os.makedirs(cache_dir(), exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{name}.", dir=cache_dir())  # same disk: rename is atomic
    try:
        archive = os.path.join(work, "download")
        source = url or spec.url
        logging.info("fetching %s from %s (%s)", name, source, spec.licence)
        got = _download(source, archive, timeout)
        if got != spec.sha256:
            raise ValueError(f"{name}: {source} has sha256 {got}, expected {spec.sha256}; "
                             "nothing was cached")
        extracted = os.path.join(work, name)
        os.makedirs(extracted)
        _extract(archive, extracted)
        missing = [f for f in spec.files if not os.path.isfile(os.path.join(extracted, f))]
        if missing:
            raise ValueError(f"{name}: the archive from {source} lacks {missing}")
        os.replace(extracted, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
