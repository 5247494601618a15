"""The ``galdecon`` command line: one module per sub-command."""

from galdecon.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
