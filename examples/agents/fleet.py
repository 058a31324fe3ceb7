"""Seven sample agents at once: each a real HTTP service that registers itself with meshgate.

    python examples/agents/fleet.py [--mesh http://127.0.0.1:8800]

planner -> researcher (two instances), writer -> researcher, critic -> writer, coder,
tester -> coder, summarizer -> writer and critic. Ctrl-C or SIGTERM stops them all; each
deregisters on its way out. See `agent.py` for what one agent serves.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

AGENT = Path(__file__).with_name("agent.py")
FLEET: list[tuple[str, list[str]]] = [
    ("planner", ["researcher"]),
    ("researcher", []),
    ("researcher", []),
    ("writer", ["researcher"]),
    ("critic", ["writer"]),
    ("coder", []),
    ("tester", ["coder"]),
    ("summarizer", ["writer", "critic"]),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--mesh", default=os.environ.get("MESHGATE_URL", "http://127.0.0.1:8800"))
    args = p.parse_args()
    procs: list[subprocess.Popen[str]] = []
    for name, deps in FLEET:
        cmd = [sys.executable, str(AGENT), name, "--mesh", args.mesh]
        for dep in deps:
            cmd += ["--depends-on", dep]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if "registered as" not in line:
            print(f"{name} did not start: {line}", file=sys.stderr)
            for q in procs:
                q.terminate()
            return 1
        print(line, flush=True)
    print(f"{len(procs)} agents up", flush=True)

    def stop(*_: object) -> None:
        for q in procs:
            if q.poll() is None:
                q.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        for q in procs:
            q.wait()
    except KeyboardInterrupt:
        stop()
        for q in procs:
            q.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
