"""CLI subcommands: each module defines `register(subparsers)` that adds its parser and
sets `func` to a callable taking the parsed args and returning an exit code."""
