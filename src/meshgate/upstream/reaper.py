"""The reaper: kills the gateway's MCP process groups when the gateway dies.

Reads `+PGID` / `-PGID` lines on stdin. On `exit` it leaves quietly; on end of input without
`exit` (the gateway died, even by SIGKILL) it sends SIGTERM, then SIGKILL, to every group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time


def _signal_all(groups: set[int], sig: signal.Signals) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "exit":
            return 0
        if len(cmd) > 1 and cmd[0] in "+-" and cmd[1:].isdigit():
            (groups.add if cmd[0] == "+" else groups.discard)(int(cmd[1:]))
    if groups:
        _signal_all(groups, signal.SIGTERM)
        time.sleep(1.0)
        _signal_all(groups, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
