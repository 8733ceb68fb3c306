"""Puts this checkout's operator code first on the benchmark's own import path.

The virtualenv's editable install points at one checkout (the one `make venv` ran in); a
benchmark run from another git worktree must import that worktree's `appidentity` (the plain
client baseline asks the operator's own `build_plan`), as the operator process it starts does
(`procs.operator_env`). Imported for this side effect before anything imports `appidentity`.
"""

from __future__ import annotations

import sys
from pathlib import Path

OPERATOR_SRC = str(Path(__file__).resolve().parent.parent / "operator")
if OPERATOR_SRC not in sys.path:
    sys.path.insert(0, OPERATOR_SRC)
