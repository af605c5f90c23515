"""Where deployed adapters live: one immutable folder per (name, version, digest).

Replicas load adapters from here, so a folder must never be seen half-written: files are copied
into a staging folder inside the root, their digest checked against the one validation computed,
and only then renamed into place (a rename within one filesystem is atomic). The digest in the
folder's name makes a path unambiguous even if a version number were reused after a Redis loss.
The root is a directory, a shared filesystem in a cluster; an object store (an ``s3://`` URL)
would be another implementation of the same two methods, ``put`` and ``path_for``."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from tqdm import tqdm

from finetunes.artifact import ADAPTER_FILES, ArtifactError, digest_files
from finetunes.registry import NAME

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, name: str, version: int, digest: str) -> Path:
        if not NAME.fullmatch(name):  # also what keeps it one path component
            raise ArtifactError("not a valid fine-tune name", "name")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ArtifactError(f"expected a version ≥ 1, got {version!r}", "version")
        if not _DIGEST.fullmatch(digest):
            raise ArtifactError(f"expected sha256:<64 hex digits>, got {digest!r}", "digest")
        return self.root / name / f"v{version}-{digest.removeprefix('sha256:')[:12]}"

    def put(self, folder: Path, name: str, version: int, digest: str, progress: bool = True) -> Path:
        """Copy the validated adapter files of ``folder``; return the folder replicas load from.

        ``digest`` is the one ``validate_adapter`` returned: a copy that differs (the source
        changed since, or the disk corrupted it) raises ``ArtifactError`` and leaves nothing."""
        target = self.path_for(name, version, digest)
        if target.is_dir():
            return self._existing(target, digest)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=self.root))
        try:
            sources = [Path(folder) / relative for relative in ADAPTER_FILES]
            total = sum(source.stat().st_size for source in sources)
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"copying {name} v{version}",
                      disable=not progress) as bar:
                for relative, source in zip(ADAPTER_FILES, sources, strict=True):
                    _copy(source, staging / relative, bar)
            copied = digest_files(staging, ADAPTER_FILES)
            if copied != digest:
                raise ArtifactError(f"the copy's digest {copied} is not the validated {digest}: the files "
                                    "changed after validation; deploy again", str(folder))
            _fsync(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                staging.rename(target)
            except OSError:  # another deploy of the same version won the race
                if target.is_dir():
                    return self._existing(target, digest)
                raise
            _fsync(target.parent)
            return target
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _existing(target: Path, digest: str) -> Path:
        """A retried deploy finds its own folder: fine if the contents are the same."""
        if digest_files(target, ADAPTER_FILES) != digest:
            raise ArtifactError(f"already exists with other contents than {digest}", str(target))
        return target


def _copy(source: Path, destination: Path, bar: tqdm) -> None:
    with source.open("rb") as reader, destination.open("wb") as writer:
        while chunk := reader.read(_CHUNK):
            writer.write(chunk)
            bar.update(len(chunk))
        writer.flush()
        os.fsync(writer.fileno())


def _fsync(folder: Path) -> None:
    """So a crash after the rename cannot leave a named folder with missing entries."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
