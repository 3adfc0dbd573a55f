#!/usr/bin/env bash
# run-local.sh — `make run`: the whole service on this machine.
#
# Usage: deploy/run-local.sh [serve flags...]     (e.g. deploy/run-local.sh --http-addr :9090)
#
# - Builds ./bin/devstatus (a built binary gets signals itself; `go run` would sit in between).
# - When DATABASE_URL is unset, starts the private Postgres of deploy/pg-local.sh (127.0.0.1:5433,
#   data in ./data/postgres) and exports its URL. If this script started that cluster, it stops
#   it again when the service exits; a cluster that was already running is left running.
# - Applies the schema (`devstatus migrate`; set DEVSTATUS_RUN_MIGRATE=0 to skip), then runs
#   `devstatus serve` with the embedded JetStream server in ./data (no --nats-url).
# - Ctrl-C (SIGINT) or SIGTERM stops the service gracefully, once.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
GO=${GO:-go}

note() { echo "run-local: $*" >&2; }

note "building ./bin/devstatus"
mkdir -p bin
"$GO" build -o bin/devstatus ./cmd/devstatus

started_pg=0
if [[ -z ${DATABASE_URL:-} ]]; then
	if ! deploy/pg-local.sh status >/dev/null 2>&1; then started_pg=1; fi
	out=$(deploy/pg-local.sh start)
	DATABASE_URL=${out##*DATABASE_URL=}
	export DATABASE_URL
	note "DATABASE_URL=$DATABASE_URL"
	if [[ $started_pg == 0 ]]; then
		note "the local Postgres was already running and stays running (stop it with: make pg-stop)"
	fi
fi

if [[ ${DEVSTATUS_RUN_MIGRATE:-1} != 0 ]]; then
	note "devstatus migrate"
	bin/devstatus migrate
fi

if [[ $started_pg == 0 ]]; then
	note "exec devstatus serve $*"
	exec bin/devstatus serve "$@"
fi

# We own the Postgres: run the service as a child in its own session, so that a terminal Ctrl-C
# reaches it once, through us (not twice: once from the terminal and once forwarded), then stop
# the cluster when it is gone.
note "devstatus serve $* (Ctrl-C stops it, then the local Postgres)"
setsid bin/devstatus serve "$@" &
child=$!
# shellcheck disable=SC2317 # called from the traps below
forward() { kill "-$1" "$child" 2>/dev/null || true; }
trap 'forward INT' INT
trap 'forward TERM' TERM
trap 'forward HUP' HUP
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
