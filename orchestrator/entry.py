"""The `plandiff` command's entry point: a live `generate` says something at once.

Building the parser imports pydantic, structlog and the settings (about half a second on two
cores) before the model even starts loading; a newcomer at a terminal would see nothing. So the
first line is written here, before any of that is imported, when the command will draw the live
view (generate, not --json, --live or a terminal). cli.run_generate's `loading …` line follows.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["generate"] and "--json" not in args and "--no-live" not in args and (
            "--live" in args or sys.stdout.isatty()):
        print("plandiff: starting …", flush=True)
    from .cli import main as cli_main

    return cli_main(args)
