"""A cluster of gateways in network namespaces behind HAProxy, to prove the mesh by breaking it.

Each gateway node and the shared Redis run in a network namespace of their own, joined by veth
pairs to a Linux bridge that the harness creates in the root namespace under a name unique to
the run (`mgbr<N>`, subnet `10.231.<N>.0/24`; taking the bridge name is what reserves the
subnet, so runs in parallel pick different ones). The bridge holds `10.231.<N>.1`, so the test
process and HAProxy, both in the root namespace, reach the nodes without anything leaving the
machine. HAProxy listens on 127.0.0.1 and balances round robin over the nodes.

    with Cluster(tmp_path, nodes=3) as c:
        httpx.post(c.url + "/api/v1/mcp/servers/fault/tools/echo", json=...)
        c.kill(c.nodes[0])                 # kill -9 of the gateway, by PID
        c.link_down(c.nodes[1]); ...; c.link_up(c.nodes[1])   # a partition
        c.restart_redis()

Nodes run `meshgate serve --insecure`: a gateway refuses to listen on an address other than
loopback without `[auth]`, and here nothing but this process and HAProxy can reach the
namespaces. `node_policy` (the `[auth]` block and anything else of meshgate.toml) and
`node_env` (credentials) are the hooks for a cluster with authentication; `node_servers`
gives some nodes servers the others reach only by forwarding; `sentinel=True` puts Redis
under Sentinel (meshgate.testing.cluster_sentinel).

Everything made is undone by `close()`, also after a failure half-way through start: processes
by the PIDs started (and any other process left in a namespace the run made), namespaces, the
bridge. Needs root and `ip netns`; `unavailable()` says why not.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from meshgate.testing.cluster_sentinel import REDIS_PORT, ClusterSentinel
from meshgate.testing.haproxy import (
    GATEWAY_PORT,
    RETRY_SAFE_PATHS,
    backend_states,
    haproxy_config,
)

_SRC = str(Path(__file__).resolve().parent.parent.parent)

# What a node's meshgate.toml holds unless the caller gives its own. Short leases so that the
# drills see a dead node's tasks taken over and its registry entries gone within seconds.
NODE_POLICY = """\
[mesh]
task_lease_s = 3
registry_lease_s = 3
log_level = "warning"
"""


class ClusterUnavailable(RuntimeError):
    """The machine cannot build a cluster (not root, no `ip`, no haproxy...)."""


def unavailable() -> str | None:
    """Why a cluster cannot be built here, or None if it can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces and bridges need root"
    for tool in ("ip", "haproxy", "redis-server"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs it)"
    probe = f"mgprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` is not allowed here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(("-n", netns) if netns else ()), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterUnavailable(f"{' '.join(cmd)}: {done.stderr.strip()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    """One gateway of the cluster: its namespace, address, files and (while up) process."""

    name: str
    netns: str
    veth: str  # the root namespace's end, on the bridge: down is a partition
    address: str
    workdir: Path
    proc: subprocess.Popen[str] | None = None
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{GATEWAY_PORT}"

    @property
    def write_log(self) -> Path:
        """Every `write` the node's fault server executed, one key a line."""
        return self.workdir / "writes.log"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


class Cluster:
    """Gateways, Redis and HAProxy in namespaces made for this run; see the module's text."""

    def __init__(
        self,
        workdir: Path,
        nodes: int = 3,
        *,
        node_policy: str = NODE_POLICY,
        node_env: Mapping[str, str] | None = None,
        node_args: Callable[[Node], Sequence[str]] | None = None,
        servers: Mapping[str, Mapping[str, object]] | None = None,
        node_servers: Callable[[Node], Mapping[str, Mapping[str, object]]] | None = None,
        ready_timeout: float = 90.0,
        server_close: bool = True,
        client_close: bool = True,
        retry_safe_paths: Sequence[str] = RETRY_SAFE_PATHS,
        sentinel: bool = False,
    ) -> None:
        """`servers`: extra `.mcp.json` entries next to `fault`, on every node;
        `node_servers`: more on some nodes only; `node_args`: more flags of `meshgate serve`
        per node; `server_close`, `client_close`, `retry_safe_paths`: see `haproxy_config`;
        `sentinel`: Redis as a primary, a replica and three sentinels (`ClusterSentinel`), the
        nodes on its `redis+sentinel://` URL."""
        reason = unavailable()
        if reason is not None:
            raise ClusterUnavailable(reason)
        self.workdir = workdir
        self.count = nodes
        self.node_policy = node_policy
        self.node_env = dict(node_env or {})
        self.node_args = node_args
        self.servers = dict(servers or {})
        self.node_servers = node_servers
        self.retry_safe_paths = list(retry_safe_paths)
        self.sentinel: ClusterSentinel | None = None
        self.use_sentinel = sentinel
        self.ready_timeout = ready_timeout
        self.server_close = server_close
        self.client_close = client_close
        self.net = -1
        self.bridge = ""
        self.nodes: list[Node] = []
        self.redis_netns = ""
        self.redis_address = ""
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.haproxy_proc: subprocess.Popen[bytes] | None = None
        self.haproxy_port = 0
        self._namespaces: list[str] = []
        self._veths: list[str] = []
        self._extra_hosts = 0
        self._pids: list[subprocess.Popen[str] | subprocess.Popen[bytes]] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        """HAProxy's address: where clients of the cluster go."""
        return f"http://127.0.0.1:{self.haproxy_port}"

    @property
    def namespaces(self) -> list[str]:
        return list(self._namespaces)

    @property
    def processes(self) -> list[subprocess.Popen[str] | subprocess.Popen[bytes]]:
        """Every process this run started, in order (dead ones too, until `close`)."""
        return list(self._pids)

    @property
    def redis_url(self) -> str:
        """What the nodes are given: the Sentinel set's URL, or the one Redis's."""
        if self.sentinel is not None:
            return self.sentinel.url
        return f"redis://{self.redis_address}:{REDIS_PORT}/0"

    def start(self) -> None:
        self._make_bridge()
        self.redis_netns = self._make_netns("redis", 2)[0]
        self.redis_address = self._address(2)
        self.start_redis()
        if self.use_sentinel:
            self.sentinel = ClusterSentinel(self).start()
        for i in range(self.count):
            netns, veth = self._make_netns(f"n{i + 1}", 10 + i)
            work = self.workdir / f"n{i + 1}"
            work.mkdir(parents=True, exist_ok=True)
            self.nodes.append(Node(f"n{i + 1}", netns, veth, self._address(10 + i), work))
        # Started together: on a small machine each start is seconds of CPU, spent in parallel.
        for node in self.nodes:
            self._spawn(node)
        for node in self.nodes:
            self._wait_ready(node)
        self._start_haproxy()
        self.wait_backends({n.name for n in self.nodes})

    def close(self) -> None:
        """Undo everything, in reverse, whatever state start left it in."""
        for proc in reversed(self._pids):
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self._pids.clear()
        for netns in self._namespaces:
            # Processes of a namespace this run made (a gateway's servers and reaper, should
            # they outlive it) were all started here: they go by PID before the namespace.
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        self._namespaces.clear()
        for veth in self._veths:  # its peer goes with it, whenever the namespace is freed
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        self._veths.clear()
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            self.bridge = ""

    # -- network -------------------------------------------------------------------------------

    def _address(self, host: int) -> str:
        return f"10.231.{self.net}.{host}"

    def _make_bridge(self) -> None:
        """Take a free `10.231.<N>.0/24`: the bridge's name is the lock on N."""
        used = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
        choices = list(range(256))
        random.shuffle(choices)
        for n in choices:
            if f"10.231.{n}." in used:
                continue
            made = subprocess.run(
                ["ip", "link", "add", f"mgbr{n}", "type", "bridge"], capture_output=True
            )
            if made.returncode == 0:
                self.net, self.bridge = n, f"mgbr{n}"
                _ip("addr", "add", f"{self._address(1)}/24", "dev", self.bridge)
                _ip("link", "set", self.bridge, "up")
                return
        raise ClusterUnavailable("no free 10.231.N.0/24 subnet for a bridge")

    def add_host(self, role: str) -> tuple[str, str]:
        """A namespace more on the bridge, for what a later scenario needs beside the nodes
        (Redis replicas and Sentinels, a node added during load): its name and address
        (from 10.231.<N>.100). Torn down with the rest."""
        self._extra_hosts += 1
        host = 99 + self._extra_hosts
        return self._make_netns(role, host)[0], self._address(host)

    def start_process(
        self, netns: str, argv: Sequence[str], **popen: Any
    ) -> subprocess.Popen[bytes]:
        """A process in one of this run's namespaces, killed by its PID at `close()`."""
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *argv], **popen)
        self._pids.append(proc)
        return proc

    def _make_netns(self, role: str, host: int) -> tuple[str, str]:
        netns = f"mg{self.net}-{role}-{os.getpid()}"
        veth = f"mg{self.net}h{host}"  # at most 15 characters: IFNAMSIZ
        _ip("netns", "add", netns)
        self._namespaces.append(netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", f"mg{self.net}p{host}")
        self._veths.append(veth)
        _ip("link", "set", f"mg{self.net}p{host}", "netns", netns)
        _ip("link", "set", f"mg{self.net}p{host}", "name", "eth0", netns=netns)
        _ip("addr", "add", f"{self._address(host)}/24", "dev", "eth0", netns=netns)
        _ip("link", "set", "eth0", "up", netns=netns)
        _ip("link", "set", "lo", "up", netns=netns)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        return netns, veth

    # -- Redis ---------------------------------------------------------------------------------

    def start_redis(self) -> None:
        """Redis as an operator runs a queue's: every write on disk before it is acknowledged
        (`appendfsync always`), so that a restart loses nothing a gateway was told is stored."""
        redis_dir = self.workdir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [
                *("ip", "netns", "exec", self.redis_netns, "redis-server"),
                *("--bind", self.redis_address, "--port", str(REDIS_PORT)),
                *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
                *("--dir", str(redis_dir), "--protected-mode", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._pids.append(proc)
        self.redis_proc = proc
        end = time.monotonic() + 10
        while time.monotonic() < end:
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex((self.redis_address, REDIS_PORT)) == 0:
                    return
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not listen on {self.redis_address}")

    def stop_redis(self) -> None:
        """Kill Redis by PID (SIGKILL: a crash, not a clean shutdown)."""
        if self.redis_proc is not None and self.redis_proc.poll() is None:
            self.redis_proc.kill()
            self.redis_proc.wait(10)

    def restart_redis(self, down_s: float = 0.0) -> None:
        """Redis crashes and comes back after `down_s` on the same address, with its AOF."""
        self.stop_redis()
        if down_s:
            time.sleep(down_s)  # the outage itself, not a wait for an event
        self.start_redis()

    # -- nodes ---------------------------------------------------------------------------------

    def _spawn(self, node: Node) -> None:
        fault = ["-m", "meshgate.testing.fault_server", "--write-log", str(node.write_log)]
        servers = {"fault": {"command": sys.executable, "args": fault}, **self.servers}
        if self.node_servers is not None:
            servers.update(self.node_servers(node))
        (node.workdir / "mcp.json").write_text(json.dumps({"mcpServers": servers}))
        (node.workdir / "meshgate.toml").write_text(self.node_policy)
        env = {**os.environ, **self.node_env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, env.get("PYTHONPATH")) if p)
        env["MESHGATE_DATA_DIR"] = str(node.workdir / "data")
        env.pop("MESHGATE_PORT", None)
        extra = list(self.node_args(node)) if self.node_args else []
        proc = subprocess.Popen(
            [
                *("ip", "netns", "exec", node.netns),  # exec()s the gateway: same PID
                *(sys.executable, "-m", "meshgate.cli", "serve"),
                *("--config", str(node.workdir / "mcp.json")),
                *("--policy", str(node.workdir / "meshgate.toml")),
                *("--host", node.address, "--port", str(GATEWAY_PORT)),
                *("--registry", self.redis_url, "--queue", self.redis_url),
                *("--node-id", node.name),
                # Not loopback and no [auth]: refused unless --insecure. The namespaces are this
                # run's own; only this process and HAProxy can reach them.
                "--insecure",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=node.workdir,
            env=env,
        )
        self._pids.append(proc)
        node.proc = proc
        log = node.log

        def pump() -> None:  # keeps reading so the gateway never blocks on a full pipe
            assert proc.stderr is not None
            for line in proc.stderr:
                log.append(line.rstrip())

        threading.Thread(target=pump, daemon=True).start()

    def _wait_ready(self, node: Node) -> None:
        end = time.monotonic() + self.ready_timeout
        while time.monotonic() < end:
            assert node.proc is not None
            if node.proc.poll() is not None:
                break
            try:
                if httpx.get(node.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.05)
        raise RuntimeError(f"node {node.name} not ready:\n" + "\n".join(node.log[-40:]))

    def start_node(self, node: Node, *, wait: bool = True) -> None:
        """Start a node again (after `kill`), with the same id, address and files."""
        if node.proc is not None and node.proc.poll() is None:
            raise RuntimeError(f"node {node.name} is running")
        self._spawn(node)
        if wait:
            self._wait_ready(node)

    def kill(self, node: Node) -> None:
        """kill -9 of the node's gateway, by its PID. Its servers go with it (its reaper)."""
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(10)

    def link_down(self, node: Node) -> None:
        """Cut the node off the bridge: no Redis, no HAProxy, no peers; packets are dropped,
        not refused, as in a real partition."""
        _ip("link", "set", node.veth, "down")

    def link_up(self, node: Node) -> None:
        _ip("link", "set", node.veth, "up")

    def heal(self) -> None:
        """Every link up, every dead node started again, Redis too; back when HAProxy has
        every node UP: the state the next scenario starts from."""
        for node in self.nodes:
            self.link_up(node)
        if self.redis_proc is None or self.redis_proc.poll() is not None:
            self.start_redis()
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                self.start_node(node)
        self.wait_backends({n.name for n in self.nodes})

    def write_counts(self) -> Counter[str]:
        """How many times each `write` key ran, over every node (a killed one's too)."""
        counts: Counter[str] = Counter()
        for node in self.nodes:
            for log in node.workdir.glob("writes*.log"):  # the fault server's and others'
                counts.update(log.read_text().split())
        return counts

    # -- HAProxy -------------------------------------------------------------------------------

    def _start_haproxy(self) -> None:
        self.haproxy_port = _free_port()
        cfg = self.workdir / "haproxy.cfg"
        sock = self.workdir / "haproxy.sock"
        cfg.write_text(
            haproxy_config(
                self.haproxy_port,
                self.nodes,
                sock,
                self.retry_safe_paths,
                server_close=self.server_close,
                client_close=self.client_close,
            )
        )
        check = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy config refused: {check.stderr.decode()}")
        # Its log (a line per request with its termination state) is the first place to look
        # when a scenario's numbers surprise.
        with open(self.workdir / "haproxy.log", "wb") as log:
            proc = subprocess.Popen(
                ["haproxy", "-db", "-f", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self._pids.append(proc)
        self.haproxy_proc = proc

    def backends(self) -> dict[str, str]:
        """Each node's state as HAProxy sees it: UP, DOWN, `UP 1/2` (going down)..."""
        return backend_states(self.workdir / "haproxy.sock")

    def wait_backends(self, up: set[str], timeout: float = 30.0) -> None:
        """Wait until exactly the nodes in `up` are UP in HAProxy."""
        end = time.monotonic() + timeout
        while True:
            try:
                state = self.backends()
            except OSError:  # its socket is not there yet: HAProxy is starting
                state = {}
            others = [s for n, s in state.items() if n not in up]
            if all(state.get(n) == "UP" for n in up) and all(
                s.startswith(("DOWN", "MAINT")) for s in others
            ):
                return
            if self.haproxy_proc is not None and self.haproxy_proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: see {self.workdir / 'haproxy.log'}")
            if time.monotonic() > end:
                raise TimeoutError(f"HAProxy backends {state}, expected {sorted(up)} UP")
            time.sleep(0.05)
