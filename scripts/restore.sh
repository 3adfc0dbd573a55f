#!/bin/sh
# Restore a backup made by scripts/backup.sh into an empty (or absent) data
# directory and into Postgres, with devstatus stopped. See "Backup and
# restore" in docs/operations.md.
#
# Usage: DATABASE_URL=postgres://… scripts/restore.sh BACKUP_DIR DATA_DIR
#
# The Postgres objects of the dump (the schema too, when it was dumped with
# PG_SCHEMA) are dropped first if they exist, then restored in one
# transaction. Start devstatus with the same flags afterwards.
set -eu

die() { echo "restore: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: DATABASE_URL=… $0 BACKUP_DIR DATA_DIR"
in=$1 data=$2
[ -n "${DATABASE_URL:-}" ] || die "DATABASE_URL is not set"
[ -f "$in/data.tar.gz" ] && [ -f "$in/postgres.dump" ] || die "$in holds no data.tar.gz and postgres.dump"
if [ -d "$data" ] && [ -n "$(ls -A "$data" | grep -v '^postgres$' || true)" ]; then
	die "$data is not empty: move it aside first (mv $data $data.old)"
fi
mkdir -p "$data"
tar -C "$data" -xzf "$in/data.tar.gz"
pg_restore --clean --if-exists --no-owner --single-transaction --exit-on-error \
	--dbname="$DATABASE_URL" "$in/postgres.dump"
echo "restore: $data and Postgres restored; start devstatus"
