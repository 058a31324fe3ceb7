#!/usr/bin/env bash
# A throw-away PostgreSQL cluster (Debian's packages) for the fleet's `postgres` MCP server.
#   postgres.sh start DIR PORT   initdb a cluster in DIR (once), start it on 127.0.0.1:PORT
#   postgres.sh stop DIR         stop it (fast shutdown)
# The cluster trusts local connections of user `fleet`: it listens on loopback only, and its
# socket lives in DIR. PostgreSQL refuses to run as root, so as root the cluster belongs to an
# unprivileged user (`postgres` when Debian's package made it, else `nobody`); DIR's parents
# must then let that user through (a directory under /tmp does).
set -euo pipefail

usage() { echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)

# Debian keeps the server programs out of PATH, in /usr/lib/postgresql/VERSION/bin.
bindir=""
if ! command -v pg_ctl >/dev/null; then
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$bindir" ] || { echo "$0: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
  bindir=$bindir/
fi

as_owner=()
if [ "$(id -u)" = 0 ]; then
  owner=postgres
  id -u "$owner" >/dev/null 2>&1 || owner=nobody
  as_owner=(runuser -u "$owner" --)
fi

data=$dir/data
case "$action" in
  start)
    [ $# -eq 3 ] || usage
    port=$3
    if [ ${#as_owner[@]} -gt 0 ]; then
      chown "$owner" "$dir"
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
      "${as_owner[@]}" "${bindir}initdb" --pgdata="$data" --username=fleet --auth=trust \
        --encoding=UTF8 --no-instructions >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    "${as_owner[@]}" "${bindir}pg_ctl" --pgdata="$data" --log="$dir/postgres.log" --wait \
      --options="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories='$dir'" \
      start >/dev/null \
      || { tail -n 20 "$dir/postgres.log" >&2; exit 1; }
    echo "postgresql://fleet@127.0.0.1:$port/postgres"
    ;;
  stop)
    # Stopping a cluster that is not running is not an error.
    if "${as_owner[@]}" "${bindir}pg_ctl" --pgdata="$data" status >/dev/null 2>&1; then
      "${as_owner[@]}" "${bindir}pg_ctl" --pgdata="$data" --mode=fast --wait stop >/dev/null
    fi
    ;;
  *) usage ;;
esac
