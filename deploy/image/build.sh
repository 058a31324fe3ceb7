#!/usr/bin/env bash
# Builds the meshgate image (`make image`). With BASE unset, the base image is made here from
# Debian's packages (mmdebstrap + docker import) so no image registry is needed; BASE names
# another one (python:3.11-slim-bookworm, the Dockerfile's default, where a registry is
# reachable). pip, npm and apt reach their own registries during the build (host network).
set -euo pipefail
cd "$(dirname "$0")/../.."

# What the image is built from, as one digest: the image carries it as the label
# meshgate.source, so a test (or anyone) can tell whether an image is this tree's.
source_id() {
  find Dockerfile .dockerignore pyproject.toml README.md src deploy/image -type f \
    ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' ! -name bundle.pem \
    -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}
if [ "${1:-}" = "--source-id" ]; then
  source_id
  exit 0
fi

IMAGE=${IMAGE:-meshgate:latest}
LOCAL_BASE=meshgate-base:bookworm
BASE=${BASE:-}
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# What the Dockerfile would otherwise install with apt on a python:*-slim base.
PACKAGES=python3,python3-venv,nodejs,npm,git,tini,ca-certificates

tmp=$(mktemp -d)
copied_ca=
cleanup() {
  rm -rf "$tmp"
  if [ -n "$copied_ca" ]; then rm -f deploy/image/ca/bundle.pem; fi
}
trap cleanup EXIT

if ! timeout 20 docker info >/dev/null 2>&1; then
  echo "error: no Docker engine answers (docker info); start dockerd first" >&2
  exit 1
fi

if [ -z "$BASE" ]; then
  BASE=$LOCAL_BASE
  if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    command -v mmdebstrap >/dev/null || {
      echo "error: mmdebstrap is needed to make the base image (apt-get install mmdebstrap)," \
        "or set BASE to an image a registry serves" >&2
      exit 1
    }
    echo "making $BASE: Debian $SUITE with $PACKAGES"
    # Documentation, manuals and translations are left out, as Debian's own slim images do.
    mmdebstrap --variant=minbase --include="$PACKAGES" \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      "$SUITE" "$tmp/rootfs.tar" "deb $MIRROR $SUITE main" \
      "deb $MIRROR $SUITE-updates main" "deb $MIRROR-security $SUITE-security main"
    docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["/bin/bash"]' \
      "$tmp/rootfs.tar" "$BASE"
  fi
fi

# pip in the build trusts what pip here trusts (a TLS-inspecting proxy's CA, say): PIP_CERT,
# else this machine's own bundle.
CA_BUNDLE=${CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-}}}
if [ -z "$CA_BUNDLE" ] && [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
fi
if [ -n "$CA_BUNDLE" ]; then
  cp "$CA_BUNDLE" deploy/image/ca/bundle.pem
  copied_ca=1
fi

start=$(date +%s)
docker build --network host --build-arg BASE="$BASE" --label "meshgate.source=$(source_id)" \
  -t "$IMAGE" .
echo "built $IMAGE on $BASE in $(( $(date +%s) - start )) s;" \
  "$(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
