"""Finding a canary string where it must not be: in any file under the folders a run wrote
(logs, data directories, spill folders)."""

from __future__ import annotations

from pathlib import Path


def scan_files(folders: list[Path], needle: str) -> list[str]:
    """The files under ``folders`` whose bytes hold ``needle`` (unreadable ones skipped)."""
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            try:
                if path.is_file() and needle.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found
