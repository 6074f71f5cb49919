"""The data directory: where a server keeps its journal, its Parquet history and its events.

Layout (format version :data:`FORMAT_VERSION`)::

    DATA_DIR/
      FORMAT        "flight-md data format <N>": the layout version, written once
      lock          held with fcntl.flock by the one server using the directory; holds its pid
      journal/      write-ahead segments (flight_md.persist.journal)
      history/      channel data as hive-partitioned Parquet (flight_md.persist.history)
      events/       the event log's history, beside history/ (hive readers want one key set there)
      quarantine/   corrupt files moved aside by recovery, never deleted by flight_md
      demo/         the --demo server's own data dir (same layout), so demo data never mixes in

The default is ``$XDG_DATA_HOME/flight-md`` (``~/.local/share/flight-md`` when the variable is
unset or not absolute, as the XDG spec says), and ``.../flight-md/demo`` for ``--demo``.

One writer: :meth:`DataDir.open` takes an exclusive ``flock`` on ``lock`` without waiting and
keeps it until :meth:`DataDir.close` (or the process exits, when the kernel drops it, so a
``kill -9`` never leaves a stale lock behind). A second server on the same directory, in this
process or another, gets a :class:`~flight_md.errors.StartupError` naming the directory and
the pid recorded in the lock file. ``flock`` is advisory and local: two machines sharing a
directory over NFS are not kept apart by it.

Format versions: a directory written by an older flight-md whose version is in
:data:`READABLE_VERSIONS` opens as it is (:attr:`DataDir.format_version` says which); a newer
or unknown version is refused with what to do. A non-empty directory without a ``FORMAT``
file is refused too, so ``--data-dir ~`` cannot scatter files into a home directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Self

from flight_md.errors import StartupError

__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "DataDir",
    "default_data_dir",
    "write_atomic",
]

FORMAT_VERSION: Final = 1
"""The layout this flight-md writes."""
READABLE_VERSIONS: Final = frozenset({1})
"""Layouts this flight-md opens: the current one and older ones it still understands."""
FORMAT_FILE: Final = "FORMAT"
LOCK_FILE: Final = "lock"
FORMAT_PREFIX: Final = "flight-md data format "
SUBDIRS: Final = ("journal", "history", "events", "quarantine")
DEMO_SUBDIR: Final = "demo"
_OWN_ENTRIES: Final = frozenset({FORMAT_FILE, LOCK_FILE, DEMO_SUBDIR, *SUBDIRS})
"""Entries a directory may hold and still be taken for a fresh data dir (``demo/`` lives
inside the default one, so the real dir may already exist when the demo ran first)."""


def default_data_dir(*, demo: bool = False, environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/flight-md`` (``.../flight-md/demo`` for the demo server)."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_DATA_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    root = base / "flight-md"
    return root / DEMO_SUBDIR if demo else root


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content,
    never a mix: a temporary file in the same directory, fsynced, renamed over, and the
    directory fsynced so that the rename itself survives a power cut."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that the names created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DataDir:
    """An open, locked data directory (see the module docstring); a resource, not a value:
    get one from :meth:`open` and :meth:`close` it (or use it as a context manager).

    Attributes:
        path: The directory, absolute.
        format_version: The layout version the directory was written with.
    """

    __slots__ = ("_lock_fd", "format_version", "path")

    def __init__(self, path: Path, format_version: int, lock_fd: int) -> None:
        self.path = path
        self.format_version = format_version
        self._lock_fd: int | None = lock_fd

    def __repr__(self) -> str:
        return f"DataDir({str(self.path)!r}, format_version={self.format_version})"

    @classmethod
    def open(cls, path: Path | str) -> DataDir:
        """Create (if needed), lock and check the data directory at ``path``.

        Raises:
            StartupError: Another server holds the directory, it cannot be created or
                written, it is not a flight-md data dir, or its format version is newer or
                no longer supported. The message names the directory and says what to do.
        """
        root = Path(path).expanduser().absolute()
        if root.exists() and not root.is_dir():
            raise StartupError(f"data dir {str(root)!r} is not a directory; "
                               "choose another with --data-dir")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create data dir {str(root)!r}: {exc.strerror or exc}; "
                               "choose another with --data-dir") from exc
        _refuse_foreign(root)
        fd = _lock(root)
        try:
            version = _format_version(root)
            for name in SUBDIRS:
                (root / name).mkdir(exist_ok=True)
        except OSError as exc:
            os.close(fd)
            raise StartupError(f"cannot write data dir {str(root)!r}: {exc.strerror or exc}; "
                               "choose another with --data-dir") from exc
        except BaseException:
            os.close(fd)
            raise
        return cls(root, version, fd)

    @property
    def journal(self) -> Path:
        """Write-ahead journal segments."""
        return self.path / "journal"

    @property
    def history(self) -> Path:
        """Channel data as hive-partitioned Parquet."""
        return self.path / "history"

    @property
    def events(self) -> Path:
        """The event log's Parquet history."""
        return self.path / "events"

    @property
    def quarantine(self) -> Path:
        """Corrupt files moved aside by recovery."""
        return self.path / "quarantine"

    @property
    def locked(self) -> bool:
        """Whether this object still holds the directory's lock."""
        return self._lock_fd is not None

    def close(self) -> None:
        """Release the lock (idempotent); another server may open the directory after this."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _refuse_foreign(root: Path) -> None:
    if (root / FORMAT_FILE).exists():
        return
    foreign = sorted(entry.name for entry in root.iterdir() if entry.name not in _OWN_ENTRIES)
    if foreign:
        raise StartupError(f"{str(root)!r} is not empty and is not a flight-md data dir "
                           f"(no {FORMAT_FILE} file; it holds {foreign[0]!r}); choose an empty "
                           "or new directory with --data-dir")


def _lock(root: Path) -> int:
    lock_path = root / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StartupError(f"cannot write data dir {str(root)!r}: {exc.strerror or exc}; "
                           "choose another with --data-dir") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StartupError(f"cannot lock data dir {str(root)!r}: {exc.strerror or exc}") from exc
        by = f" (pid {holder})" if holder else ""
        raise StartupError(f"data dir {str(root)!r} is in use by another flight-md server{by}; "
                           "stop it or choose another with --data-dir") from None
    # The pid is for the error message of the next server only; the flock is the lock.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _format_version(root: Path) -> int:
    path = root / FORMAT_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        write_atomic(path, f"{FORMAT_PREFIX}{FORMAT_VERSION}\n".encode())
        return FORMAT_VERSION
    line = text.strip()
    number = line.removeprefix(FORMAT_PREFIX)
    if not line.startswith(FORMAT_PREFIX) or not number.isdigit():
        raise StartupError(f"data dir {str(root)!r} has an unreadable {FORMAT_FILE} file "
                           f"({line[:40]!r}); move the directory aside or choose another with "
                           "--data-dir")
    version = int(number)
    if version in READABLE_VERSIONS:
        return version
    if version > FORMAT_VERSION:
        raise StartupError(f"data dir {str(root)!r} has format version {version}, newer than "
                           f"this flight-md understands ({FORMAT_VERSION}); upgrade flight-md or "
                           "choose another --data-dir")
    raise StartupError(f"data dir {str(root)!r} has format version {version}, which this "
                       f"flight-md no longer reads (it reads {sorted(READABLE_VERSIONS)}); "
                       "export it with the flight-md that wrote it, or move it aside")
