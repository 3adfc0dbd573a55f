#!/usr/bin/env bash
# with-pg.sh — run a command with DATABASE_URL pointing at a Postgres.
#
# Usage: deploy/with-pg.sh [--test] COMMAND [ARGS...]
#
# When DATABASE_URL is already set it is used as is. Otherwise the private local cluster of
# deploy/pg-local.sh is started (with --test: the test cluster, port 5434, database
# devstatus_test) and its URL exported. The cluster is left running for the next command;
# `make pg-stop` stops it. The command replaces this shell (exec): signals reach it directly.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

pgargs=()
if [[ ${1:-} == --test ]]; then
	pgargs+=(--test)
	shift
fi
[[ $# -gt 0 ]] || { echo "usage: $0 [--test] COMMAND [ARGS...]" >&2; exit 2; }

if [[ -z ${DATABASE_URL:-} ]]; then
	out=$("$here/pg-local.sh" "${pgargs[@]}" start)
	DATABASE_URL=$(tail -n1 <<<"$out")
	DATABASE_URL=${DATABASE_URL#DATABASE_URL=}
	[[ -n $DATABASE_URL ]] || { echo "with-pg: pg-local.sh printed no URL" >&2; exit 1; }
	echo "with-pg: DATABASE_URL=$DATABASE_URL (local cluster; stop it with: make pg-stop)" >&2
else
	echo "with-pg: using the DATABASE_URL from the environment" >&2
fi
export DATABASE_URL
exec "$@"
