#!/usr/bin/env bash
# run-local.sh — `make run`: the whole service on this machine.
#
# Usage: deploy/run-local.sh [serve flags...]     (e.g. deploy/run-local.sh --http-addr :9090)
#
# - Builds ./bin/devstatus (a built binary gets signals itself; `go run` would sit in between).
#   DEVSTATUS_BIN=path runs that binary instead, without building.
# - When DATABASE_URL is unset, starts the private Postgres of deploy/pg-local.sh (127.0.0.1:5433,
#   data in ./data/postgres) and exports its URL. If this script started that cluster, it stops
#   it again when the service exits; a cluster that was already running is left running.
# - Runs `devstatus serve` (which applies the schema at start: --migrate defaults to true) with the
#   embedded JetStream server in ./data (no --nats-url; it also listens on 127.0.0.1:4222, see
#   --nats-listen, so stop `make nats-up`'s cluster first or pass --nats-listen '').
# - Ctrl-C (SIGINT) or SIGTERM stops the service gracefully, once.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
GO=${GO:-go}

note() { echo "run-local: $*" >&2; }

bin=${DEVSTATUS_BIN:-}
if [[ -z $bin ]]; then
	note "building ./bin/devstatus"
	mkdir -p bin
	"$GO" build -o bin/devstatus ./cmd/devstatus
	bin=bin/devstatus
fi

started_pg=0
# a Postgres given any way the binary reads one (env, DEVSTATUS_ env, flag) is used as is
given_db=0
[[ -n ${DATABASE_URL:-} || -n ${DEVSTATUS_DATABASE_URL:-} ]] && given_db=1
for a in "$@"; do [[ $a == --database-url* || $a == -database-url* ]] && given_db=1; done
if [[ $given_db == 0 ]]; then
	if ! deploy/pg-local.sh status >/dev/null 2>&1; then started_pg=1; fi
	out=$(deploy/pg-local.sh start)
	DATABASE_URL=${out##*DATABASE_URL=}
	export DATABASE_URL
	note "DATABASE_URL=$DATABASE_URL"
	if [[ $started_pg == 0 ]]; then
		note "the local Postgres was already running and stays running (stop it with: make pg-stop)"
	fi
fi

if [[ $started_pg == 0 ]]; then
	note "exec devstatus serve $*"
	exec "$bin" serve "$@"
fi

# We own the Postgres: run the service as a child in its own session, so that a terminal Ctrl-C
# reaches it once, through us (not twice: once from the terminal and once forwarded), then stop
# the cluster when it is gone.
note "devstatus serve $* (Ctrl-C stops it, then the local Postgres)"
setsid "$bin" serve "$@" &
child=$!
# shellcheck disable=SC2317 # called from the traps below
forward() { kill "-$1" "$child" 2>/dev/null || true; }
trap 'forward INT' INT
trap 'forward TERM' TERM
trap 'forward HUP' HUP
# When the output goes through a pipe (make run | tee log), Ctrl-C also kills the reader: a write
# to the broken pipe must not kill this script before it stops Postgres (devstatus ignores
# SIGPIPE itself and keeps shutting down).
trap '' PIPE
rc=0
while :; do
	wait "$child" && rc=0 || rc=$?
	# wait returns >128 when a trapped signal interrupted it; the child may still be running
	kill -0 "$child" 2>/dev/null || break
done
trap - INT TERM HUP
note "devstatus exited ($rc); stopping the local Postgres it used"
deploy/pg-local.sh stop || true
exit "$rc"
