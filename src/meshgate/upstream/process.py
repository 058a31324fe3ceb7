"""Spawning and ending MCP server processes, so that none outlive the gateway.

Each server runs in its own process group (its children too, as `npx` servers have). Three
layers end them: a graceful `stop()` signals the whole group; on Linux the direct child gets
SIGTERM from the kernel if the gateway dies (PR_SET_PDEATHSIG); and a small reaper process,
which holds a pipe from the gateway, kills every recorded group when that pipe closes, which
covers a SIGKILL of the gateway and grandchildren that the parent-death signal misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping

from meshgate.config import find_command

log = logging.getLogger("meshgate.upstream.process")

_PR_SET_PDEATHSIG = 1


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


_prctl = _libc_prctl()


def _child_setup(parent_pid: int) -> Callable[[], None] | None:
    if _prctl is None:
        return None
    prctl = _prctl

    def setup() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the gateway died before prctl took effect
            os._exit(1)

    return setup


class Reaper:
    """A watchdog process that kills recorded process groups once the gateway is gone."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "meshgate.upstream.reaper"],
            stdin=subprocess.PIPE,
            start_new_session=True,  # not in the gateway's group: a ^C or killpg must miss it
            close_fds=True,
        )

    def _send(self, line: str) -> None:
        if self._proc is None or self._proc.stdin is None:
            return
        try:
            self._proc.stdin.write(line.encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            log.error("the reaper is gone; process groups will not be cleaned up after a crash")

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def unwatch(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def stop(self) -> None:
        """Tell the reaper all is well and let it exit."""
        if self._proc is None:
            return
        with contextlib.suppress(BrokenPipeError, ValueError):
            assert self._proc.stdin is not None
            self._proc.stdin.write(b"exit\n")
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


async def spawn(
    command: str,
    args: tuple[str, ...],
    env: Mapping[str, str],
    cwd: str | None,
    protocol_factory: Callable[[], asyncio.SubprocessProtocol],
) -> tuple[asyncio.SubprocessTransport, asyncio.SubprocessProtocol]:
    """Start a process in a new process group with stdin/stdout/stderr piped to the protocol.

    The command is looked up on the server's PATH, then next to the gateway's own Python
    (`config.find_command`); not found, FileNotFoundError says where it was looked for.
    """
    loop = asyncio.get_running_loop()
    full_env = {**os.environ, **env}
    executable = find_command(command, full_env.get("PATH"))
    if executable is None:
        raise FileNotFoundError(
            errno.ENOENT,
            f"not found on PATH nor in {os.path.dirname(sys.executable)}",
            command,
        )
    return await loop.subprocess_exec(
        protocol_factory,
        command,
        *args,
        executable=executable,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_child_setup(os.getpid()),
    )


def is_running(pid: int) -> bool:
    """Whether `pid` is a running process; a zombie (dead, not yet reaped) is not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:  # no procfs: fall back to a signal-0 probe, which counts zombies as alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def signal_group(pid: int, sig: signal.Signals) -> bool:
    """Signal the process group led by `pid`; False when it is already gone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.error("not allowed to signal process group %d", pid)
        return False
    return True


async def terminate_group(pid: int, exited: asyncio.Future[int | None], grace_s: float) -> None:
    """SIGTERM the group, wait for the leader up to `grace_s`, then SIGKILL the group."""
    if not exited.done():
        signal_group(pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await asyncio.shield(exited)
        except TimeoutError:
            log.warning("process %d ignored SIGTERM for %.1fs; killing its group", pid, grace_s)
    # Grandchildren may outlive the leader: the group gets a SIGKILL either way.
    signal_group(pid, signal.SIGKILL)
