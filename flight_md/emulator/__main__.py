"""``python -m flight_md.emulator serve ...`` and ``python -m flight_md.emulator fault ...``."""

from __future__ import annotations

import argparse
import logging
import sys

from flight_md.emulator.command import add_arguments, add_fault_arguments, run, run_fault


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run ``serve`` (the emulator) or ``fault``."""
    parser = argparse.ArgumentParser(prog="python -m flight_md.emulator", description="local exchange emulator")
    commands = parser.add_subparsers(dest="command", required=True)
    add_arguments(commands.add_parser("serve", help="run an emulator"))
    add_fault_arguments(commands.add_parser("fault", help="switch a fault on a running emulator"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args) if args.command == "serve" else run_fault(args)


if __name__ == "__main__":
    sys.exit(main())
