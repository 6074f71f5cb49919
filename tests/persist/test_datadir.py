"""The data directory: its default, its layout, its one-writer lock and its format version.

The lock is tested across real processes (a child holds it; a SIGKILLed child leaves no
stale lock behind), with real files under pytest's ``tmp_path``.
"""

from __future__ import annotations

import re
import signal
import textwrap
from pathlib import Path

import pytest

from flight_md.errors import StartupError
from flight_md.persist.datadir import FORMAT_VERSION, SUBDIRS, DataDir, default_data_dir
from tests.support import ChildProcess

HOLD = textwrap.dedent("""
    import signal, sys
    from flight_md.persist.datadir import DataDir
    d = DataDir.open(sys.argv[1])
    print("locked", flush=True)
    signal.pause()  # hold the lock until the test kills us
""")

TRY = textwrap.dedent("""
    import sys
    from flight_md.errors import StartupError
    from flight_md.persist.datadir import DataDir
    try:
        DataDir.open(sys.argv[1])
    except StartupError as exc:
        print(f"refused: {exc}", flush=True)
        sys.exit(1)
    print("opened", flush=True)
""")


def test_default_follows_xdg_data_home(tmp_path: Path) -> None:
    assert default_data_dir(environ={"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "flight-md"
    assert default_data_dir(demo=True, environ={"XDG_DATA_HOME": str(tmp_path)}) == \
        tmp_path / "flight-md" / "demo"
    home = Path.home() / ".local" / "share" / "flight-md"
    assert default_data_dir(environ={}) == home
    # The XDG spec: a relative XDG_DATA_HOME is invalid and ignored.
    assert default_data_dir(environ={"XDG_DATA_HOME": "relative/dir"}) == home


def test_open_creates_the_layout_and_reopens(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    with DataDir.open(root) as d:
        assert d.path == root and d.format_version == FORMAT_VERSION and d.locked
        assert all((root / name).is_dir() for name in SUBDIRS)
        assert (root / "FORMAT").read_text() == f"flight-md data format {FORMAT_VERSION}\n"
        assert (d.journal, d.history, d.events, d.quarantine) == tuple(root / n for n in SUBDIRS)
    assert not d.locked
    DataDir.open(root).close()  # closed means unlocked


def test_second_open_in_this_process_is_refused(tmp_path: Path) -> None:
    import os

    with DataDir.open(tmp_path), pytest.raises(StartupError) as info:
        DataDir.open(tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and f"pid {os.getpid()}" in message
    assert "--data-dir" in message


def test_lock_refuses_a_second_process_and_dies_with_its_holder(tmp_path: Path) -> None:
    holder = ChildProcess(["-c", HOLD, str(tmp_path)], ready=re.compile("locked")).start()
    try:
        with pytest.raises(StartupError, match=rf"in use by another flight-md server \(pid {holder.pid}\)"):
            DataDir.open(tmp_path)
        other = ChildProcess(["-c", TRY, str(tmp_path)])
        other.start()
        assert other.wait(30) == 1, other.output
        assert f"refused: data dir {str(tmp_path)!r} is in use" in other.output
        assert f"(pid {holder.pid})" in other.output
    finally:
        holder.signal(signal.SIGKILL)
        holder.wait(30)
    # The kernel dropped the flock with the process: no stale lock after kill -9.
    with DataDir.open(tmp_path) as d:
        assert d.locked


@pytest.mark.parametrize(("content", "match"), [
    (f"flight-md data format {FORMAT_VERSION + 1}\n", r"newer than this flight-md understands.*upgrade"),
    ("flight-md data format 0\n", r"no longer reads.*move it aside"),
    ("hello\n", r"unreadable FORMAT file \('hello'\)"),
])
def test_format_versions_it_cannot_read_are_refused(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "FORMAT").write_text(content)
    with pytest.raises(StartupError, match=match) as info:
        DataDir.open(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert (tmp_path / "FORMAT").read_text() == content  # never rewritten
    DataDir.open(tmp_path / "elsewhere").close()  # and the lock was released: nothing held


def test_a_foreign_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StartupError, match=r"not a flight-md data dir.*'notes.txt'"):
        DataDir.open(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_demo_dir_inside_a_fresh_one_is_not_foreign(tmp_path: Path) -> None:
    root = default_data_dir(environ={"XDG_DATA_HOME": str(tmp_path)})
    DataDir.open(default_data_dir(demo=True, environ={"XDG_DATA_HOME": str(tmp_path)})).close()
    with DataDir.open(root) as d:
        assert d.format_version == FORMAT_VERSION


def test_an_uncreatable_directory_is_a_startup_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StartupError, match=r"cannot create data dir .*file/sub"):
        DataDir.open(tmp_path / "file" / "sub")
    with pytest.raises(StartupError, match=r"is not a directory"):
        DataDir.open(tmp_path / "file")
