"""Encryption at rest and the audit log behind a real gateway: secret metadata never shown,
sealed in the registry file, register and deregister audited and counted; malformed keys
refused at start; `meshgate encryption-key` and `meshgate reencrypt` on real files."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshgate.crypto import MASK, SEALED, Cipher
from meshgate.registry.store import RegistrationStore
from tests.gateway import REPO, fault_server, run_gateway
from tests.integration.test_observability import scrape, series

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"
SECRET = "metadata-plaintext-e81c"


def meshgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshgate.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", **(env or {})},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def audit_lines(log: list[str], event: str) -> list[dict[str, Any]]:
    out = []
    for line in log:
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "meshgate.audit" and entry.get("event") == event:
                out.append(entry)
    return out


def test_secret_metadata_is_hidden_sealed_and_registrations_are_audited(tmp_path: Path) -> None:
    key = meshgate("encryption-key").stdout.strip()
    data = tmp_path / "data"
    env = {"MESHGATE_ENCRYPTION_KEYS": key, "MESHGATE_DATA_DIR": str(data)}
    port = free_port()
    body = {
        "name": "api",
        "id": "api-1",
        "url": f"http://agent:pw-in-url@127.0.0.1:{port}",
        "metadata": {"secret_token": SECRET, "region": "eu"},
    }
    with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
        r = gw.http.post(f"{API}/register", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["metadata"] == {"secret_token": MASK, "region": "eu"}
        listed = gw.get(f"{API}/services/api").json()
        assert SECRET not in json.dumps(listed) and MASK in json.dumps(listed)
        # A refused registration is audited too.
        refused = {**body, "id": "api-2", "url": "http://169.254.169.254/"}
        assert gw.http.post(f"{API}/register", json=refused).status_code == 422
        assert gw.http.delete(f"{API}/services/api/instances/nope").status_code == 404

        raw = b"".join(p.read_bytes() for p in data.glob("registry.sqlite3*"))
        assert SECRET.encode() not in raw and SEALED.encode() in raw

        assert gw.http.delete(f"{API}/services/api/instances/api-1").status_code == 204
        samples = scrape(gw)
        for outcome, n in (("ok", 1), ("refused", 1)):
            assert (
                series(samples, "meshgate_audit_events_total", event="register", outcome=outcome)
                == n
            )
        assert series(samples, "meshgate_audit_events_total", event="deregister", outcome="ok") == 1
        assert (
            series(samples, "meshgate_audit_events_total", event="deregister", outcome="not_found")
            == 1
        )
    [ok, no] = audit_lines(gw.log, "register")
    assert ok["outcome"] == "ok" and ok["principal"] == "local"
    assert ok["service"] == "api" and ok["instance"] == "api-1" and ok["created"] is True
    assert ok["url"] == f"http://agent:***@127.0.0.1:{port}"
    assert no["outcome"] == "refused" and "169.254.169.254" in no["url"] and no["reason"]
    assert [(e["outcome"], e["instance"]) for e in audit_lines(gw.log, "deregister")] == [
        ("not_found", "nope"),
        ("ok", "api-1"),
    ]
    assert not any("pw-in-url" in line or SECRET in line for line in gw.log)


def test_a_malformed_key_stops_the_gateway_with_a_clear_error(tmp_path: Path) -> None:
    r = meshgate("serve", "--port", "0", env={"MESHGATE_ENCRYPTION_KEYS": "short,also-bad"})
    assert r.returncode == 2
    assert "environment MESHGATE_ENCRYPTION_KEYS" in r.stderr
    assert "key 1 is not an encryption key" in r.stderr
    assert "short" not in r.stderr.replace("MESHGATE", "")  # the key is never echoed

    key_file = tmp_path / "keys"
    key_file.write_text("# the first seals\nnot-a-key\n")
    r = meshgate(
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "d"),
        env={"MESHGATE_ENCRYPTION_KEY_FILE": str(key_file)},
    )
    assert r.returncode == 2
    assert f"key 1 of {key_file} is not an encryption key" in r.stderr
    r = meshgate(
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "d"),
        env={"MESHGATE_ENCRYPTION_KEY_FILE": str(tmp_path / "missing")},
    )
    assert r.returncode == 2
    assert "encryption key file" in r.stderr and "cannot be read" in r.stderr


def test_reencrypt_rewrites_the_stores_with_the_first_key(tmp_path: Path) -> None:
    old, new = (meshgate("encryption-key").stdout.strip() for _ in range(2))
    assert old != new and len(old) == 44
    data = tmp_path / "data"
    data.mkdir()
    store = RegistrationStore(data / "registry.sqlite3", cipher=Cipher([old]))
    store.put("api-1", "api", {"name": "api", "metadata": {"secret_token": SECRET}})
    store.close()

    key_file = tmp_path / "keys"
    key_file.write_text(f"{new}\n{old}\n")
    args = ("reencrypt", "--data-dir", str(data))
    r = meshgate(*args, env={"MESHGATE_ENCRYPTION_KEY_FILE": str(key_file)})
    assert r.returncode == 0, r.stderr
    assert "registrations: 1 rewritten, 0 not decryptable" in r.stdout

    only_new = RegistrationStore(data / "registry.sqlite3", cipher=Cipher([new]))
    assert only_new.get("api-1") == {"name": "api", "metadata": {"secret_token": SECRET}}
    only_new.close()

    r = meshgate(*args)
    assert r.returncode == 2 and "no encryption key is configured" in r.stderr
    r = meshgate(*args, env={"MESHGATE_ENCRYPTION_KEYS": old})  # the new key is missing
    assert r.returncode == 1
    assert "registrations: 0 rewritten, 1 not decryptable" in r.stdout
