#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback and print its SQLAlchemy URL.
# Usage: eval "$(bash .ci/postgres.sh)"   (exports TWIN_TEST_POSTGRES_URL)
set -euo pipefail
port=${PGPORT_TEST:-55432}
if ! command -v initdb >/dev/null && [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq postgresql) >&2
fi
bindir=$(dirname "$(readlink -f "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -n1)")")
dir=$(mktemp -d /tmp/twin-pg.XXXXXX)
run=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$dir"
  run=(runuser -u postgres --)
fi
"${run[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
"${run[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
  start >&2
echo "export TWIN_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
echo "export TWIN_TEST_POSTGRES_DIR=$dir"
