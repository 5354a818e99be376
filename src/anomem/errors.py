"""User-facing errors: one class per kind of problem, and a runner that prints them without a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class AnomemError(Exception):
    """A problem the user can fix; the message names what is wrong and what is allowed."""


class ParamsError(AnomemError):
    pass


class DataError(AnomemError):
    pass


class DiskFullError(AnomemError):
    pass


class TrackingError(AnomemError):
    pass


class NumericalError(AnomemError, FloatingPointError):
    """A loss or a feature left the range of finite numbers (a FloatingPointError too, for callers that catch that)."""


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a command's main(); an AnomemError becomes a clear message and exit code 2."""
    try:
        code = main()
    except AnomemError as err:
        print(f"anomem: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("anomem: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
