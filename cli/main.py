"""The ``llm2nifti`` command: the group of :mod:`llm2nifti.cli.group` with every command on it.

Each command module attaches its commands to the group when imported; the group itself imports
none of them, so no module of the command line imports another back.
"""

from __future__ import annotations

import sys

from . import (compare_cmd, convert, decompose_cmd, diff_cmd, encode_cmd,  # noqa: F401
               evaluate_cmd, localize_cmd, report_cmd)
from .group import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
