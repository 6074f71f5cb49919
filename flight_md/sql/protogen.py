"""Generates the Python classes of :file:`flight_sql.proto` (``python -m flight_md.sql.protogen``).

The generated ``flight_sql_pb2.py`` and ``flight_sql_pb2.pyi`` are committed, so that a server
needs only the ``protobuf`` runtime, never the compiler. They are made with the protoc of
``grpcio-tools`` (a test-only dependency); the protobuf version they were made for is written in
``flight_sql_pb2.py``'s header ("Protobuf Python Version"), and its runtime refuses to load them
with an older ``protobuf`` (the range in pyproject.toml). tests/sql/test_protogen.py
regenerates them into a temporary directory and checks that they equal the committed files.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Final

__all__ = ["PROTO", "generate", "main"]

PACKAGE_DIR: Final = Path(__file__).resolve().parent
ROOT: Final = PACKAGE_DIR.parent.parent
PROTO: Final = PACKAGE_DIR / "flight_sql.proto"
OUTPUTS: Final = ("flight_sql_pb2.py", "flight_sql_pb2.pyi")
_NOQA: Final = b"# ruff: noqa\n"


def generate(out_dir: Path) -> dict[str, bytes]:
    """Run protoc on :data:`PROTO`; the generated files by name (also written under ``out_dir``).

    Raises:
        RuntimeError: protoc failed (its message says why).
    """
    from grpc_tools import protoc  # test/dev only: servers load the committed output

    # The proto's path relative to the repository root names it in protobuf's descriptor pool
    # ("flight_md/sql/flight_sql.proto"), so it cannot clash with another package's file.
    relative = PROTO.relative_to(ROOT).as_posix()
    code = protoc.main(["protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
                        relative])
    if code != 0:
        raise RuntimeError(f"protoc failed on {relative} (exit {code})")
    generated = out_dir / PROTO.parent.relative_to(ROOT)
    # Generated code follows protoc's style, not ours: ruff is told to skip it.
    return {name: _NOQA + (generated / name).read_bytes() for name in OUTPUTS}


def main() -> int:
    """Regenerate the committed files next to the proto."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in generate(Path(tmp)).items():
            (PACKAGE_DIR / name).write_bytes(data)
            print(f"wrote {PACKAGE_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
