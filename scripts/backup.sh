#!/bin/sh
# Back up a stopped devstatus: its data directory (the embedded JetStream
# store: device registry, input and transitions streams, worker snapshots,
# leases; and the nats, admin and ping tokens of a dev run) and its Postgres
# projections. See "Backup and restore" in docs/operations.md.
#
# Usage: DATABASE_URL=postgres://… scripts/backup.sh DATA_DIR BACKUP_DIR
#   PG_SCHEMA=name   dump only this schema (default: the whole database)
#
# Writes BACKUP_DIR/data.tar.gz and BACKUP_DIR/postgres.dump (pg_dump's
# custom format). Refuses while a devstatus process holds the store.
set -eu

die() { echo "backup: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: DATABASE_URL=… $0 DATA_DIR BACKUP_DIR"
data=$1 out=$2
[ -n "${DATABASE_URL:-}" ] || die "DATABASE_URL is not set"
[ -d "$data/jetstream" ] || die "$data/jetstream does not exist: not a devstatus data directory"
lock=$data/jetstream/devstatus.lock
if [ -e "$lock" ] && command -v flock >/dev/null; then
	flock -n "$lock" true || die "a devstatus process (pid $(cat "$lock" 2>/dev/null)) uses $data: stop it first"
fi
mkdir -p "$out"

# Postgres first: if the service was not stopped after all, the projections
# are then at most behind the streams (the projector catches up), never ahead.
pg_dump --format=custom --no-owner ${PG_SCHEMA:+--schema="$PG_SCHEMA"} \
	--file="$out/postgres.dump" "$DATABASE_URL"
# ./postgres is the private database of `make run`: dumped above, not copied.
tar -C "$data" --exclude=./postgres --exclude=./bench -czf "$out/data.tar.gz" .
echo "backup: wrote $out/data.tar.gz and $out/postgres.dump"
