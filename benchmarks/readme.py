"""Copy BENCHMARKS.md's quoted blocks into the README, or check that they are copied.

BENCHMARKS.md holds each figure the README quotes between markers
(``<!-- benchmarks:NAME -->`` ... ``<!-- /benchmarks:NAME -->``, see
:data:`benchmarks.report.README_BLOCKS`): the goals table with its verdicts, the lines
on ``--ingest-process``, and the comparison of the two serve modes (``serve-mode``). The README holds the same markers where it quotes them; this copies
the content between them unchanged, so that the README's figures are those of the committed
BENCHMARKS.md of the same code, misses included.

Usage::

    python -m benchmarks.readme            # rewrite README.md's blocks from BENCHMARKS.md
    python -m benchmarks.readme --check    # exit 1 (and say which) when they differ
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.report import blocks, replace_block

__all__ = ["copy_blocks", "main", "stale_blocks"]

ROOT = Path(__file__).resolve().parent.parent


def stale_blocks(benchmarks: str, readme: str) -> list[str]:
    """Names of the README's blocks that differ from BENCHMARKS.md's (or that it lacks)."""
    source, quoted = blocks(benchmarks), blocks(readme)
    return [name for name in quoted if source.get(name) != quoted[name]]


def copy_blocks(benchmarks: str, readme: str) -> str:
    """``readme`` with every block it holds replaced by BENCHMARKS.md's.

    Raises:
        ValueError: The README quotes a block BENCHMARKS.md does not have.
    """
    source = blocks(benchmarks)
    out = readme
    for name in blocks(readme):
        if name not in source:
            raise ValueError(f"no block {name!r}: regenerate it with the full run (a --smoke "
                         "or --only run may not produce every block)")
        out = replace_block(out, name, source[name])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the README's blocks differ")
    parser.add_argument("--benchmarks", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    source = args.benchmarks.read_text(encoding="utf-8")
    readme = args.readme.read_text(encoding="utf-8")
    if not blocks(readme):
        print(f"{args.readme} quotes no benchmark block", file=sys.stderr)
        return 1
    stale = stale_blocks(source, readme)
    if args.check:
        for name in stale:
            print(f"{args.readme}: block {name!r} differs from {args.benchmarks}",
                  file=sys.stderr)
        return 1 if stale else 0
    if stale:
        try:
            copied = copy_blocks(source, readme)
        except ValueError as exc:
            print(f"{args.benchmarks}: {exc}", file=sys.stderr)
            return 1
        args.readme.write_text(copied, encoding="utf-8")
        print(f"copied {', '.join(stale)} into {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
