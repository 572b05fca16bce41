"""The `retex-hf` command line: one sub-command per module in this folder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import bench, build, demo, evaluate, push

COMMANDS = {"build": build, "eval": evaluate, "demo": demo, "push": push, "bench": bench}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="retex-hf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__))
    args = parser.parse_args(argv)
    return COMMANDS[args.command].run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
