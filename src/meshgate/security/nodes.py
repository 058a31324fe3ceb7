"""Node credentials: how one gateway of a cluster proves to another that a request comes from
a node, and on whose behalf.

A forwarding node signs each request with the cluster's shared secret: an HMAC-SHA256 over its
node id, the time, the request's path and the principal it asserts (the original caller, as
JSON in base64url). The receiving node checks the signature and the time (a short window
against replay) and runs the request as that caller, marked `via="node"`: policy applies as
the caller; rate limits were spent at the node the caller reached first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping

from meshgate.errors import Unauthenticated
from meshgate.security.principal import Principal

NODE_HEADER = "x-meshgate-node"
TIME_HEADER = "x-meshgate-node-time"
PRINCIPAL_HEADER = "x-meshgate-principal"
SIGNATURE_HEADER = "x-meshgate-node-signature"
NODE_HEADERS = (NODE_HEADER, TIME_HEADER, PRINCIPAL_HEADER, SIGNATURE_HEADER)
WINDOW_S = 30.0  # a signature is accepted this long either side of the receiver's clock


def _encode(principal: Principal) -> str:
    raw = json.dumps(principal.to_json(), separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(value: str) -> Principal:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise Unauthenticated(f"{PRINCIPAL_HEADER} is not a principal") from None
    principal = Principal.from_json(data)
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise Unauthenticated(f"{PRINCIPAL_HEADER} is not a principal")
    return principal


class NodeCredentials:
    """Signs this node's requests to its peers and checks theirs, with the cluster secret."""

    def __init__(
        self,
        secret: str,
        node: str,
        *,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = hashlib.sha256(b"meshgate node v1\0" + secret.encode()).digest()
        self.node = node
        self.window_s = window_s
        self.clock = clock

    def _mac(self, node: str, at: str, path: str, principal: str) -> str:
        message = "\n".join(("v1", node, at, path, principal)).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, principal: Principal, path: str) -> dict[str, str]:
        """The headers of a request to `path` on a peer, made for `principal`."""
        at = f"{self.clock():.3f}"
        asserted = _encode(principal)
        return {
            NODE_HEADER: self.node,
            TIME_HEADER: at,
            PRINCIPAL_HEADER: asserted,
            SIGNATURE_HEADER: self._mac(self.node, at, path, asserted),
        }

    def verify(self, headers: Mapping[str, str], path: str) -> Principal:
        """The caller a peer's signed request runs as; Unauthenticated (401) when a header is
        missing, the signature is wrong, or it is too old or too new."""
        missing = [h for h in NODE_HEADERS if not headers.get(h)]
        if missing:
            raise Unauthenticated(f"a node request needs {', '.join(missing)}")
        node, at = headers[NODE_HEADER], headers[TIME_HEADER]
        asserted, signature = headers[PRINCIPAL_HEADER], headers[SIGNATURE_HEADER]
        expected = self._mac(node, at, path, asserted)
        if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
            raise Unauthenticated("the node signature is not valid (another cluster_secret?)")
        try:
            skew = abs(self.clock() - float(at))
        except ValueError:
            raise Unauthenticated(f"{TIME_HEADER} is not a time") from None
        if not skew <= self.window_s:
            raise Unauthenticated(
                f"the node signature is {skew:.0f} s from this node's clock (at most "
                f"{self.window_s:g} s): replayed, or the clocks disagree"
            )
        caller = _decode(asserted)
        return Principal(
            caller.name,
            caller.roles,
            via="node",
            service=caller.service,
            claims={"node": node, "caller_via": caller.via},
        )
