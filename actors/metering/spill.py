"""The metadata batcher's overflow on disk: call records (never text) in append-only JSONL
segments, owned by one batcher instance at a time and replayed in order when Redis is back.
A later batcher adopts the segments of one that is gone. An ingress replica keeps its
write-ahead log of unacknowledged records in the same format and folder, so the batcher
replays what a killed replica had not shipped."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections import deque
from fcntl import LOCK_EX, LOCK_NB, flock
from itertools import islice
from pathlib import Path
from typing import Any

from actors.metering.record import CallRecord

logger = logging.getLogger("neuroapi.metering")


class SpillFiles:
    """Append-only JSONL segments ``<seq>.jsonl`` under ``<root>/<instance>/``, owned through an
    flock on ``<root>/<instance>.lock`` held for the instance's life. Records are appended to the
    current segment; replay reads closed segments only, so the two never share a file."""

    def __init__(self, root: Path):
        self.root = root
        self._dir: Path | None = None
        self._lock_fd: int | None = None
        self._current: tuple[Path, int] | None = None  # (path, fd) being appended to
        self._current_lines = 0
        self._closed: deque[Path] = deque()  # ready to replay, oldest first
        self._next_seq = 0
        self._reader: Any = None  # binary file object on _closed[0]

    @property
    def has_data(self) -> bool:
        return bool(self._closed) or self._current_lines > 0

    def _own_dir(self) -> Path:
        if self._dir is None:
            self.root.mkdir(parents=True, exist_ok=True)
            name = f"{time.time_ns()}-{os.getpid()}-{secrets.token_hex(4)}"
            fd = os.open(self.root / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            flock(fd, LOCK_EX | LOCK_NB)  # new and ours: cannot be held
            (self.root / name).mkdir(mode=0o700)
            self._lock_fd, self._dir = fd, self.root / name
        return self._dir

    def _segment(self, seq: int) -> Path:
        return self._own_dir() / f"{seq}.jsonl"

    def adopt_orphans(self) -> int:
        """Take over the segments of instances that are gone (their lock is free); returns how
        many lines they hold. Oldest instance first, each one's segments in order."""
        if not self.root.is_dir():
            return 0
        adopted_lines = 0
        for lock_path in sorted(self.root.glob("*.lock")):
            if self._dir is not None and lock_path.stem == self._dir.name:
                continue
            try:
                fd = os.open(lock_path, os.O_RDWR)
            except FileNotFoundError:
                continue  # its owner just cleaned up
            try:
                flock(fd, LOCK_EX | LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # alive
            try:  # an orphan: move its segments into our folder, in order
                orphan = self.root / lock_path.stem
                segments = sorted(orphan.glob("*.jsonl"), key=lambda p: int(p.stem)) if orphan.is_dir() else []
                for segment in segments:
                    target = self._segment(self._next_seq)
                    self._next_seq += 1
                    os.replace(segment, target)
                    self._closed.append(target)
                    adopted_lines += _count_lines(target)
                if orphan.is_dir():
                    orphan.rmdir()
                lock_path.unlink(missing_ok=True)
            except OSError as error:  # keep what was moved; the rest waits for a later start
                logger.error("metering: could not adopt spill files (%s)", type(error).__name__)
            finally:
                os.close(fd)
        return adopted_lines

    def append(self, records: list[CallRecord]) -> None:
        """All of ``records`` or, on OSError, none (the file is cut back to where it was)."""
        data = "".join(json.dumps(r.to_fields(), separators=(",", ":")) + "\n" for r in records).encode()
        if self._current is None:
            path = self._segment(self._next_seq)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._next_seq += 1
            self._current, self._current_lines = (path, fd), 0
        fd = self._current[1]
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise
        self._current_lines += len(records)

    # ---- as a write-ahead log (``actors.metering.shipper``): the owner never reads back; a
    # dead owner's segments are adopted and replayed like any spill.

    def seal(self) -> int:
        """Close the current segment; returns how many segments are closed (oldest first)."""
        self._rotate()
        return len(self._closed)

    def discard(self, count: int) -> None:
        """Delete the ``count`` oldest closed segments: their records are acknowledged."""
        for _ in range(min(count, len(self._closed))):
            self._closed.popleft().unlink(missing_ok=True)

    def _rotate(self) -> None:
        if self._current is not None:
            path, fd = self._current
            os.close(fd)
            self._current, self._current_lines = None, 0
            if os.path.getsize(path):
                self._closed.append(path)
            else:
                path.unlink(missing_ok=True)

    def read(self, limit: int) -> tuple[list[CallRecord], int]:
        """Up to ``limit`` records from the oldest segment, and how many lines were unreadable.
        The segment is deleted only by ``consumed`` once its records are written."""
        if not self._closed:
            self._rotate()
        records: list[CallRecord] = []
        bad = 0
        while self._closed and not records and not bad:
            if self._reader is None:
                try:
                    self._reader = open(self._closed[0], "rb")  # noqa: SIM115 - held across calls
                except FileNotFoundError:  # removed by hand: nothing to replay there
                    logger.error("metering: a spill file vanished before it was replayed")
                    self._closed.popleft()
                    continue
            for line in islice(self._reader, limit):
                try:
                    records.append(CallRecord.from_fields(json.loads(line)))
                except (ValueError, KeyError, TypeError):
                    bad += 1  # a line cut short by a crash or a full disk
            if not records and not bad:
                self.consumed()  # an empty segment, or one already read to its end
        return records, bad

    def consumed(self) -> None:
        """What was read so far is written: drop the segment once read to its end."""
        if self._reader is not None and self._reader.tell() >= os.fstat(self._reader.fileno()).st_size:
            self._reader.close()
            self._reader = None
            self._closed.popleft().unlink(missing_ok=True)

    def put_first(self, records: list[CallRecord]) -> None:
        """Spill records that are older than everything already spilled (a shutdown's buffer)."""
        seqs = [int(p.stem) for p in self._closed]
        if self._current is not None:
            seqs.append(int(self._current[0].stem))
        path = self._segment(min(seqs, default=self._next_seq) - 1)
        data = "".join(json.dumps(r.to_fields(), separators=(",", ":")) + "\n" for r in records)
        try:
            path.write_text(data)
        except OSError:
            path.unlink(missing_ok=True)
            raise
        self._closed.appendleft(path)

    def close(self) -> None:
        """Release the folder; what is left in it waits for the next instance to adopt."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._rotate()
        if self._dir is not None and self._lock_fd is not None:
            if not self._closed:
                try:
                    self._dir.rmdir()
                    (self.root / f"{self._dir.name}.lock").unlink(missing_ok=True)
                except OSError:
                    pass  # not empty after all: adopted later
            os.close(self._lock_fd)
            self._lock_fd, self._dir = None, None
        self._closed.clear()


def _count_lines(path: Path) -> int:
    lines = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")  # a last line without its newline still counts


class MemoryLog:
    """The batcher's memory buffer, on disk: ``SpillFiles`` used as a write-ahead log (as the
    ingress keeps one). Segments are cut when a batch is taken for writing; each remembers how
    many records had entered memory by then, and is deleted once that many have left it."""

    def __init__(self, root: Path):
        self._files = SpillFiles(root)
        self._in = 0  # records that entered memory, in all
        self._out = 0  # records that left memory, in all
        self._ends: deque[int] = deque()  # per closed segment, oldest first: ``_in`` when it was cut
        self.gap = 0  # records in memory that the log failed to take

    def append(self, records: list[CallRecord]) -> None:
        """Raises ``OSError`` (the records are then in memory only)."""
        self._in += len(records)
        try:
            self._files.append(records)
        except OSError:
            self.gap += len(records)
            raise

    def cut(self) -> None:
        try:
            closed = self._files.seal()
        except OSError:  # the segment stays open and grows: deleted later, or replayed (counted once)
            return
        if len(self._ends) < closed:
            self._ends.append(self._in)

    def left_memory(self, count: int) -> None:
        self._out += count
        done = 0
        while self._ends and self._ends[0] <= self._out:
            self._ends.popleft()
            done += 1
        try:
            self._files.discard(done)
        except OSError as error:  # left behind: replayed by a later batcher, counted once
            logger.error("metering: could not delete a write-ahead log segment (%s)", type(error).__name__)
        if self._out == self._in:
            self.gap = 0

    def close(self, keep: bool) -> None:
        """Release the log; unless ``keep``, first delete it (memory is written or spilled)."""
        if not keep:
            self._files.discard(self._files.seal())
            self._ends.clear()
        self._files.close()
