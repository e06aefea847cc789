"""Flag parsing shared by the import and export commands of `python -m upgpt_jax.convert`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags


def parse(values: flags.FlagValues, argv: Sequence[str], usage: str) -> int | None:
    """Parses `argv` into `values`; returns None to go on, or the exit code to stop with: 0 after
    printing `usage` and the flags for --help, 2 after one error line (not a traceback) for bad
    flags."""
    if any(arg in ("-h", "--help") for arg in argv[1:]):
        print(usage + "\n" + values.get_help())
        return 0
    try:
        values(list(argv))
    except flags.Error as error:
        print(f"error: {error}\n(see --help)", file=sys.stderr)
        return 2
    return None
