"""The image's HEALTHCHECK: exit 0 when the gateway in this container answers GET /livez.

It asks 127.0.0.1 (or ::1 when MESHGATE_HOST is an IPv6 address) on MESHGATE_PORT, over
http, or https when MESHGATE_TLS_CERT is set (the certificate is not checked: it names the
gateway's public name, not the loopback address the check uses).
"""

import os
import ssl
import sys
import urllib.request

host = "[::1]" if ":" in os.environ.get("MESHGATE_HOST", "") else "127.0.0.1"
port = os.environ.get("MESHGATE_PORT", "8800")
context = None
scheme = "http"
if os.environ.get("MESHGATE_TLS_CERT"):
    scheme = "https"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
try:
    with urllib.request.urlopen(f"{scheme}://{host}:{port}/livez", timeout=4, context=context) as r:
        sys.exit(0 if r.status == 200 else 1)
except OSError as e:
    print(f"GET /livez: {e}", file=sys.stderr)
    sys.exit(1)
