"""Atomic file writes, shared by the result files (``benchmarks.runner``) and the checkpoints (``benchmarks.checkpoint``)."""

import contextlib
import os
import uuid
from pathlib import Path


def write_atomically(path: str | Path, data: bytes) -> None:
    """
    Write a file atomically (a temporary file in the same directory, then a rename): a reader, or a rerun after a
    crash, sees either the whole file or none.

    :param path: the file
    :param data: its contents
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def remove_partial_files(path: Path) -> int:
    """
    :param path: a file written by :func:`write_atomically`
    :return: how many leftover temporary files of it (from a killed writer) were removed
    """
    removed = 0
    if path.parent.is_dir():
        for tmp in path.parent.glob(f"{path.name}.tmp*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
    return removed
