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
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping

from meshgate.config import find_command

log = logging.getLogger("meshgate.upstream.process")

_PR_SET_PDEATHSIG = 1

INHERITED_ENV: frozenset[str] = frozenset(
    {
        # What any program expects of a login: where to find commands, the user, the locale
        # (LC_* below), the time zone, the terminal, and where temporary files go.
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "TZ",
        "TMPDIR", "TEMP", "TMP",
        # Where the user's configuration and caches live; uv and npm keep theirs there.
        "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME",
        "XDG_RUNTIME_DIR",
        # Which certificates to trust, so that servers reach HTTPS behind a private CA.
        "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE",
        # node and npx: module lookup (npm's settings come as npm_config_*, below).
        "NODE_PATH",
        # Python and uvx: which interpreter, code and caches, none of them secret (uv's index
        # URLs and credentials are not here: a URL may hold a password).
        "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONUTF8", "PYTHONIOENCODING",
        "UV_CACHE_DIR", "UV_TOOL_DIR", "UV_TOOL_BIN_DIR", "UV_PYTHON_INSTALL_DIR",
        "UV_PYTHON", "UV_PYTHON_PREFERENCE", "UV_PYTHON_DOWNLOADS", "UV_OFFLINE", "UV_NO_CACHE",
        # Windows: what its C runtime, node and Python cannot start or find files without.
        "SYSTEMROOT", "SYSTEMDRIVE", "WINDIR", "COMSPEC", "PATHEXT", "APPDATA",
        "LOCALAPPDATA", "PROGRAMDATA", "PROGRAMFILES", "USERPROFILE", "HOMEDRIVE", "HOMEPATH",
        "USERNAME", "PROCESSOR_ARCHITECTURE", "NUMBER_OF_PROCESSORS",
    }
)  # fmt: skip
"""The variables of the gateway's environment that every MCP server process gets (those the
gateway has), besides its `.mcp.json` `env`: enough for `npx`, `uvx` and most servers to run,
and nothing that usually holds a secret (API keys, tokens, proxy URLs with passwords), which a
server could hand to its callers (server-everything's `get-env` tool does). Policy
`inherit_env` gives a server everything; `env_passthrough` adds chosen names."""

INHERITED_ENV_PREFIXES = ("LC_", "npm_config_", "NPM_CONFIG_")
"""Families of variables let through too: the locale categories, and npm's settings (offline,
cache, registry...) as npm reads them from the environment, less those that look like
credentials (`_CREDENTIAL`)."""

_CREDENTIAL = re.compile(r"auth|token|pass|secret|otp|user|email|key|cert", re.IGNORECASE)


def _inherited(name: str) -> bool:
    if name in INHERITED_ENV:
        return True
    return name.startswith(INHERITED_ENV_PREFIXES) and not _CREDENTIAL.search(name)


def child_env(
    configured: Mapping[str, str],
    *,
    inherit_env: bool = False,
    passthrough: Iterable[str] = (),
    environ: Mapping[str, str] = os.environ,
) -> dict[str, str]:
    """The environment of a server process: the allowed part of `environ` (all of it with
    `inherit_env`), then the `passthrough` names it has, then the server's `configured` env."""
    if inherit_env:
        base = dict(environ)
    else:
        base = {k: v for k, v in environ.items() if _inherited(k)}
        base.update((k, environ[k]) for k in passthrough if k in environ)
    return {**base, **configured}


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
    *,
    inherit_env: bool = False,
    env_passthrough: Iterable[str] = (),
) -> tuple[asyncio.SubprocessTransport, asyncio.SubprocessProtocol]:
    """Start a process in a new process group with stdin/stdout/stderr piped to the protocol.

    Its environment is `env` over the part of the gateway's that `child_env` lets through.
    The command is looked up on the server's PATH, then next to the gateway's own Python
    (`config.find_command`); not found, FileNotFoundError says where it was looked for.
    """
    loop = asyncio.get_running_loop()
    full_env = child_env(env, inherit_env=inherit_env, passthrough=env_passthrough)
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
