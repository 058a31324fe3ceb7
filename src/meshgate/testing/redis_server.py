"""A real redis-server for tests: started on a free port in a temp dir, stopped by PID."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


class RedisServer:
    def __init__(
        self,
        workdir: Path,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        args: Sequence[str] = (),
    ) -> None:
        """`tls_cert`, `tls_key`: serve TLS only (`rediss://`), clients not asked for a
        certificate; `args`: more redis-server options (`--replicaof HOST PORT`)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: `make test` installs it")
        self.binary = binary
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None
        self.tls = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
        self.args = list(args)

    @property
    def url(self) -> str:
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if self.tls is None:
            ports = ["--port", str(self.port)]
        else:
            cert, key = self.tls
            ports = [
                *("--port", "0", "--tls-port", str(self.port)),
                *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
                *("--tls-auth-clients", "no"),
            ]
        self.proc = subprocess.Popen(
            [
                self.binary,
                *ports,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + 10
        while time.monotonic() < end:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
