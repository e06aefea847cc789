"""One line for every bad input at the command line, never a traceback or a usage dump.

absl prints the whole module usage (50+ lines) before an `app.UsageError`'s message, and an
override of a config field that does not exist (`--config.train.nonexistent=1`) fails inside
ml_collections with three chained tracebacks. The CLIs parse their flags with `parse_flags` and
wrap `main` in `one_line_errors`, so each of these ends in one line, `error: ...`, and exit code 2.
Light on purpose (absl, ml_collections, stdlib): the CLIs import it before JAX.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags


class BadInput(ValueError):
    """An input the user can fix (a setting, a file, a request): reported as its message alone."""


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` on stderr (one line) and exit with `code`."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def one_line_errors(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """`main`, with `app.UsageError` and `BadInput` reported by `fail` instead of absl's usage dump."""
    @functools.wraps(main)
    def wrapped(argv: list[str]) -> Any:
        try:
            return main(argv)
        except (app.UsageError, BadInput) as error:
            fail(f"{error} (--help lists the flags)" if isinstance(error, app.UsageError) else str(error))

    return wrapped


def parse_flags(argv: Sequence[str]) -> list[str]:
    """`app.run`'s flags_parser: absl's parsing, with bad flags and unknown config fields in one line."""
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as error:
        fail(str(error))
    except (AttributeError, KeyError) as error:  # ml_collections: an override naming no config field
        fail(unknown_override(argv) or f"a --config override names no config field ({error})")


def unknown_override(argv: Sequence[str], flag: str = "config") -> str | None:
    """The message for the first `--config.a.b=...` in `argv` that names no field of the config file
    `--config` names, with the fields that do exist there (closest first); None if all exist."""
    config = _load_config(argv, flag)
    if config is None:
        return None
    for argument in argv:
        if not argument.startswith(f"--{flag}."):
            continue
        override = argument[2:].split("=", 1)[0]
        node = config
        for depth, name in enumerate(override.split(".")[1:], start=1):
            fields = list(node.keys()) if hasattr(node, "keys") else []
            if name not in fields:
                parent = ".".join(override.split(".")[:depth])
                close = difflib.get_close_matches(name, fields, n=3, cutoff=0.5)
                hint = f"did you mean {' or '.join(close)}? " if close else ""
                return (f"--{override}: {parent} has no field {name!r}; {hint}"
                        f"its fields: {', '.join(sorted(fields)) or 'none'}")
            node = node[name]
    return None


def _load_config(argv: Sequence[str], flag: str) -> Any:
    """The config that `--flag=path[:argument]` in `argv` names (ml_collections' convention), or None."""
    value = None
    for index, argument in enumerate(argv):
        if argument.startswith(f"--{flag}="):
            value = argument.split("=", 1)[1]
        elif argument == f"--{flag}" and index + 1 < len(argv):
            value = argv[index + 1]
    if not value:
        return None
    path, _, config_argument = value.partition(":")
    spec = importlib.util.spec_from_file_location("_config_for_error", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(config_argument) if config_argument else module.get_config()
