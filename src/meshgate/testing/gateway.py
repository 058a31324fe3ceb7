"""Start a real `meshgate serve` process on a port the OS chooses, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

_LISTENING = re.compile(r"meshgate listening on (https?://[^\s\"]+)")
_SRC = str(Path(__file__).resolve().parent.parent.parent)


class GatewayProcess:
    """A running gateway: its process, its URL and every line it logged so far."""

    def __init__(self, proc: subprocess.Popen[str], url: str, log: list[str]) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_gateway(
    workdir: Path,
    servers: Mapping[str, Mapping[str, Any]],
    policy: str = "",
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    ready_timeout: float = 90.0,
    src: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> GatewayProcess:
    """Write the config into `workdir`, start the gateway there and wait until it answers.
    `src`: the source tree to run (another checkout's `src`, for a benchmark's baseline).
    `tls`: the client context to ask an HTTPS gateway whether it is ready with."""
    config = workdir / "mcp.json"
    config.write_text(json.dumps({"mcpServers": servers}))
    toml = workdir / "meshgate.toml"
    toml.write_text(policy)
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (src or _SRC, full_env.get("PYTHONPATH")) if p
    )
    full_env.pop("MESHGATE_PORT", None)
    if "MESHGATE_DATA_DIR" not in (env or {}):  # durable state stays in the workdir
        full_env["MESHGATE_DATA_DIR"] = str(workdir / "data")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshgate.cli",
            "serve",
            "--config",
            str(config),
            "--policy",
            str(toml),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=workdir,
        env=full_env,
    )
    log: list[str] = []
    found = threading.Event()
    urls: list[str] = []

    def pump() -> None:  # keeps reading so the gateway never blocks on a full stderr pipe
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line.rstrip())
            m = _LISTENING.search(line)
            if m and not urls:
                urls.append(m.group(1))
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        if not found.wait(30) or not urls:
            raise RuntimeError("gateway did not start:\n" + "\n".join(log[-40:]))
        gw = GatewayProcess(proc, urls[0], log)
        end = time.monotonic() + ready_timeout
        while True:
            try:
                # /readyz: public even when the gateway asks every other path for a credential
                ready = httpx.get(gw.url + "/readyz", timeout=5, verify=tls or True)
                if ready.status_code == 200:
                    return gw
            except httpx.TransportError:
                pass  # the socket accepts once every server has started or given up
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("gateway not ready:\n" + "\n".join(log[-40:]))
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


KEYS_CREATE = (sys.executable, "-m", "meshgate.cli", "keys", "create")


def create_key(data: Path, name: str, *flags: str) -> str:
    """A new API key made the way an operator makes one, `meshgate keys create NAME FLAGS`,
    on the key store of data dir `data` (or the Redis a `--registry` flag names)."""
    out = subprocess.run(
        [*KEYS_CREATE, name, *flags, "--json", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key: str = json.loads(out.stdout)["key"]
    return key
