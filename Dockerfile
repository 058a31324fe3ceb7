# meshgate's container image: the gateway (installed from this repository's source as a
# wheel), two MCP servers from PyPI (mcp-server-time, mcp-server-git) and Node.js for npm ones.
#
#   docker build -t meshgate .                     # on python:3.11-slim-bookworm
#   make image                                     # on a Debian base made locally (no registry)
#
# BASE may be any Debian bookworm image with Python >= 3.11: python:*-slim keeps Python in
# /usr/local/bin, Debian's python3 is in /usr/bin; every step here calls `python3` from PATH, so
# either works. docs/operations.md ("Containers") has volumes, environment and compose.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# The MCP servers installed with the gateway (the versions the test suite runs against).
ARG MCP_SERVERS="mcp-server-time==2026.10.19 mcp-server-git==2026.10.19"
# Extra certificates pip trusts here (a TLS-inspecting proxy before PyPI; deploy/image/ca).
COPY deploy/image/ca/ /tmp/ca/
# Two virtual environments: the MCP servers' dependencies never decide the gateway's. The
# servers' comes first, so a change to meshgate's source does not install them again; it
# keeps pip, for images built FROM this one that add servers (`/opt/mcp/bin/pip install`).
RUN if [ -s /tmp/ca/bundle.pem ]; then export PIP_CERT=/tmp/ca/bundle.pem; fi \
    && python3 -m venv /opt/mcp \
    && /opt/mcp/bin/pip install ${MCP_SERVERS} \
    && /opt/mcp/bin/pip uninstall --yes --quiet setuptools \
    && /opt/mcp/bin/mcp-server-time --help >/dev/null
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The gateway's environment loses pip and setuptools (30 MB) once meshgate is in it.
RUN if [ -s /tmp/ca/bundle.pem ]; then export PIP_CERT=/tmp/ca/bundle.pem; fi \
    && python3 -m venv /opt/meshgate \
    && /opt/meshgate/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/meshgate/bin/pip install /wheels/meshgate-*.whl \
    && /opt/meshgate/bin/pip uninstall --yes --quiet pip setuptools \
    && /opt/meshgate/bin/meshgate --help >/dev/null

FROM ${BASE}
# Node.js and npm run npm MCP servers (`npx -y @modelcontextprotocol/server-...`), git is
# mcp-server-git's, tini reaps what MCP servers leave behind. The local Debian base has them
# already; python:*-slim gets them from Debian.
RUN if ! command -v node >/dev/null || ! command -v npm >/dev/null \
        || ! command -v git >/dev/null || ! command -v tini >/dev/null; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         nodejs npm git tini ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 meshgate \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/meshgate \
         --shell /usr/sbin/nologin meshgate \
    && mkdir -p /etc/meshgate /var/lib/meshgate \
    && chown meshgate:meshgate /var/lib/meshgate
COPY --from=build /opt/mcp /opt/mcp
COPY --from=build /opt/meshgate /opt/meshgate
COPY deploy/image/mcp.json deploy/image/meshgate.toml /etc/meshgate/
COPY deploy/image/healthcheck.py /opt/meshgate/healthcheck.py

# The gateway's settings (docs/configuration.md); every one may be overridden with -e.
ENV PATH=/opt/meshgate/bin:/opt/mcp/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/home/meshgate \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    MESHGATE_CONFIG=/etc/meshgate/mcp.json \
    MESHGATE_POLICY=/etc/meshgate/meshgate.toml \
    MESHGATE_DATA_DIR=/var/lib/meshgate \
    MESHGATE_HOST=0.0.0.0 \
    MESHGATE_PORT=8800

USER 10001:10001
WORKDIR /var/lib/meshgate
VOLUME ["/etc/meshgate", "/var/lib/meshgate"]
EXPOSE 8800
# /livez answers while the process does; /readyz is for load balancers (503 while starting
# and draining), which would make `docker stop`'s drain look like a failure.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/meshgate/bin/python", "/opt/meshgate/healthcheck.py"]
ENTRYPOINT ["/usr/bin/tini", "--", "meshgate"]
CMD ["serve"]
