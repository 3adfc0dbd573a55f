#!/usr/bin/env bash
# pg-local.sh — a private, throw-away Postgres cluster for `make run` and `make test`.
#
# Usage: deploy/pg-local.sh [--test] [--data DIR] [--port N] [--db NAME] start|stop|url|status
#
#   start   initdb if needed, start the cluster (idempotent), create the database, wait until it
#           accepts connections. stdout gets exactly one line, `DATABASE_URL=<url>`, so callers can
#           `eval` it or capture it; everything else goes to stderr.
#   stop    stop the cluster (fast shutdown); a no-op when it is not running.
#   url     print the URL (bare, without `DATABASE_URL=`), whether or not the cluster runs.
#   status  print running/stopped, data dir, port and URL; exit 0 when running, 3 when not.
#
# Profiles (the two can run side by side):
#   default  data $DEVSTATUS_PGDATA      (./data/postgres), port $DEVSTATUS_PGPORT      (5433), db devstatus
#   --test   data $DEVSTATUS_TEST_PGDATA (./.pgdata/test),  port $DEVSTATUS_TEST_PGPORT (5434), db devstatus_test
# Relative paths are relative to the repository root. --data/--port/--db override either profile.
# Other knobs: DEVSTATUS_PG_TIMEOUT (seconds to wait for readiness, default 60),
# DEVSTATUS_PG_OSUSER (the OS user that runs Postgres when we are root, default postgres),
# PG_BINDIR (directory with initdb/pg_ctl/postgres; default: found on PATH or /usr/lib/postgresql/*/bin),
# DEVSTATUS_PG_CONF (extra postgresql.conf lines, e.g. $'shared_buffers = 2GB\nmax_wal_size = 8GB';
# applied at start: restart the cluster to change them).
#
# It never touches the system cluster (/var/lib/postgresql/*/main, port 5432): it uses its own data
# directory, listens on 127.0.0.1:<port> only, and puts its unix socket in the data directory.
# The URL it prints: postgres://postgres@127.0.0.1:<port>/<db>?sslmode=disable
set -euo pipefail

die() {
	echo "pg-local: error: $*" >&2
	exit 1
}
note() { echo "pg-local: $*" >&2; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

profile=run
data_opt="" port_opt="" db_opt=""
while [[ $# -gt 0 ]]; do
	case "$1" in
	--test) profile="test" ;;
	--data) data_opt=${2:?--data needs a value}; shift ;;
	--data=*) data_opt=${1#--data=} ;;
	--port) port_opt=${2:?--port needs a value}; shift ;;
	--port=*) port_opt=${1#--port=} ;;
	--db) db_opt=${2:?--db needs a value}; shift ;;
	--db=*) db_opt=${1#--db=} ;;
	-h | --help) sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
	-*) die "unknown option $1 (try --help)" ;;
	*) break ;;
	esac
	shift
done
cmd=${1:-}
[[ -n $cmd ]] || die "missing command: start|stop|url|status (try --help)"

if [[ $profile == test ]]; then
	pgdata=${data_opt:-${DEVSTATUS_TEST_PGDATA:-.pgdata/test}}
	port=${port_opt:-${DEVSTATUS_TEST_PGPORT:-5434}}
	dbname=${db_opt:-devstatus_test}
else
	pgdata=${data_opt:-${DEVSTATUS_PGDATA:-data/postgres}}
	port=${port_opt:-${DEVSTATUS_PGPORT:-5433}}
	dbname=${db_opt:-devstatus}
fi
[[ $pgdata == /* ]] || pgdata="$repo_root/$pgdata"
pgdata=${pgdata%/}
if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then die "invalid port '$port'"; fi
[[ $dbname =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "invalid database name '$dbname'"
timeout=${DEVSTATUS_PG_TIMEOUT:-60}
superuser=postgres # the cluster's superuser role (initdb -U), whoever the OS user is
url="postgres://${superuser}@127.0.0.1:${port}/${dbname}?sslmode=disable"

# --- binaries -------------------------------------------------------------------------------
find_bindir() {
	local c cands=()
	[[ -n ${PG_BINDIR:-} ]] && cands+=("$PG_BINDIR")
	if c=$(command -v pg_ctl 2>/dev/null); then cands+=("$(dirname "$(readlink -f "$c")")"); fi
	# newest installed major version first
	while IFS= read -r c; do cands+=("$c"); done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5nr)
	for c in "${cands[@]}"; do
		if [[ -x $c/initdb && -x $c/pg_ctl && -x $c/postgres ]]; then
			echo "$c"
			return 0
		fi
	done
	return 1
}
bindir=$(find_bindir) || die "Postgres server binaries (initdb, pg_ctl, postgres) not found; install them (Debian: apt-get install postgresql) or set PG_BINDIR"
tool() { # the bindir's own client tools, else whatever is on PATH (Debian's pg_wrapper)
	if [[ -x $bindir/$1 ]]; then echo "$bindir/$1"; else command -v "$1" || die "$1 not found"; fi
}
pg_isready_bin=$(tool pg_isready)
psql_bin=$(tool psql)

# --- who runs the server --------------------------------------------------------------------
# Postgres refuses to run as root. As root we run initdb/pg_ctl as an unprivileged OS user
# (the `postgres` system user that Debian's package creates, created here when missing).
if [[ $(id -u) -eq 0 ]]; then
	osuser=${DEVSTATUS_PG_OSUSER:-postgres}
else
	osuser=$(id -un)
fi
# as_pg runs a command as the server's OS user, from / (our cwd may be unreadable to it), without
# the lock descriptor 9 (a postmaster that inherited it would hold the lock for its lifetime).
as_pg() {
	if [[ $(id -u) -eq 0 ]]; then
		(cd / && LC_ALL=C runuser -u "$osuser" -- "$@") 9>&-
	else
		(cd / && LC_ALL=C "$@") 9>&-
	fi
}
ensure_osuser() {
	[[ $(id -u) -eq 0 ]] || return 0
	id -u "$osuser" >/dev/null 2>&1 && return 0
	command -v runuser >/dev/null || die "runuser (util-linux) is needed to run Postgres as '$osuser'"
	note "creating system user '$osuser' to run Postgres (it refuses to run as root)"
	useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$osuser" ||
		die "could not create system user '$osuser'"
}
# Every ancestor of the data directory must be traversable (x) by the server's user.
ensure_traversable() {
	[[ $(id -u) -eq 0 ]] || return 0
	local d=$1 chain=()
	while [[ $d != / && -n $d ]]; do
		chain=("$d" "${chain[@]}")
		d=$(dirname "$d")
	done
	for d in "${chain[@]}"; do # from / down
		if ! runuser -u "$osuser" -- test -x "$d" 2>/dev/null; then
			note "chmod o+x $d (so that '$osuser' can reach the data directory)"
			chmod o+x "$d" || die "cannot make $d traversable for '$osuser'; set DEVSTATUS_PGDATA elsewhere"
		fi
	done
}

# --- state ----------------------------------------------------------------------------------
logfile="$pgdata/server.log"
pidfile="$pgdata/postmaster.pid"
# Unix sockets are limited to ~107 bytes of path; with a deep checkout we go TCP-only.
sockdir="$pgdata"
if ((${#pgdata} + ${#port} + 12 > 100)); then sockdir=""; fi

# postmaster_pid prints the pid of the live postmaster of THIS data dir, or fails. A pid file
# whose process is gone, or was reused by another process (after a reboot or a kill -9), is stale.
postmaster_pid() {
	[[ -f $pidfile ]] || return 1
	local pid real
	pid=$(head -n1 "$pidfile" 2>/dev/null) || return 1
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ -d /proc/$pid ]] || return 1
	real=$(readlink -f "$pgdata")
	# the postmaster (and each backend) chdir()s into its data directory
	[[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$real" ]] || return 1
	echo "$pid"
}
# leftover backends of a killed postmaster still hold its shared memory: wait for them
orphans() {
	local real p out=""
	real=$(readlink -f "$pgdata")
	for p in /proc/[0-9]*; do
		[[ $(readlink "$p/cwd" 2>/dev/null) == "$real" ]] && out+="${p#/proc/} "
	done
	echo "$out"
}
clean_stale() {
	[[ -f $pidfile ]] || return 0
	note "removing stale $pidfile (the server is not running: crash or kill -9?)"
	local o i
	for ((i = 0; i < 20; i++)); do
		o=$(orphans)
		[[ -z $o ]] && break
		sleep 0.5
	done
	o=$(orphans)
	if [[ -n $o ]]; then
		note "killing leftover processes of the dead cluster: $o"
		# shellcheck disable=SC2086 # word splitting of the pid list is intended
		kill -9 $o 2>/dev/null || true
		sleep 0.5
	fi
	rm -f "$pidfile"
	[[ -n $sockdir ]] && rm -f "$sockdir/.s.PGSQL.$port" "$sockdir/.s.PGSQL.$port.lock"
	return 0
}
ready() { "$pg_isready_bin" -q -h 127.0.0.1 -p "$port" -U "$superuser" -d postgres -t 2 >/dev/null 2>&1; }
log_tail() {
	if [[ -r $logfile ]]; then
		echo "---- last lines of $logfile ----" >&2
		tail -n 30 "$logfile" >&2
		echo "----" >&2
	fi
}
sq() { printf "'%s'" "${1//\'/\'\'}"; } # a postgresql.conf string literal

init_cluster() {
	ensure_osuser
	mkdir -p "$pgdata"
	ensure_traversable "$(dirname "$pgdata")"
	if [[ $(id -u) -eq 0 ]]; then chown "$osuser:" "$pgdata"; fi
	chmod 0700 "$pgdata"
	note "initdb $pgdata (superuser '$superuser', OS user '$osuser')"
	# Trust authentication: acceptable ONLY because this is a local dev/test cluster that listens
	# on 127.0.0.1 and on a socket inside its own 0700 data directory (pg_hba.conf below). Never
	# use this script's cluster for anything reachable from another machine.
	if ! as_pg "$bindir/initdb" -D "$pgdata" -U "$superuser" --auth=trust --encoding=UTF8 --no-locale >"$pgdata.initdb.log" 2>&1; then
		cat "$pgdata.initdb.log" >&2
		die "initdb failed (see above)"
	fi
	rm -f "$pgdata.initdb.log"
	local hba
	hba=$(
		cat <<-'EOF'
			# devstatus local dev/test cluster (deploy/pg-local.sh): trust, loopback and own socket only.
			# TYPE  DATABASE  USER  ADDRESS        METHOD
			local   all       all                  trust
			host    all       all   127.0.0.1/32   trust
		EOF
	)
	as_pg tee "$pgdata/pg_hba.conf" >/dev/null <<<"$hba"
	as_pg tee -a "$pgdata/postgresql.conf" >/dev/null <<<$'\n# settings of deploy/pg-local.sh, rewritten at every start\ninclude_if_exists = \'devstatus.conf\''
}

write_conf() {
	local conf
	conf="# written by deploy/pg-local.sh at every start; edit the script, not this file
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = $(sq "$sockdir")
logging_collector = off
"
	if [[ $profile == test ]]; then
		# Test data is disposable: trade crash safety for speed, allow many parallel test pools.
		conf+="fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
"
	fi
	[[ -n ${DEVSTATUS_PG_CONF:-} ]] && conf+="# DEVSTATUS_PG_CONF
$DEVSTATUS_PG_CONF
"
	as_pg tee "$pgdata/devstatus.conf" >/dev/null <<<"$conf"
}

ensure_db() {
	local have
	have=$("$psql_bin" -X -q -h 127.0.0.1 -p "$port" -U "$superuser" -d postgres -tAc \
		"SELECT 1 FROM pg_database WHERE datname = '$dbname'" 2>&1) || die "cannot query the cluster on port $port: $have"
	if [[ $have != 1 ]]; then
		note "creating database $dbname"
		"$psql_bin" -X -q -h 127.0.0.1 -p "$port" -U "$superuser" -d postgres -c "CREATE DATABASE \"$dbname\"" >&2 ||
			die "could not create database $dbname"
	fi
}

wait_ready() {
	local deadline=$((SECONDS + timeout))
	until ready; do
		if ((SECONDS >= deadline)); then
			log_tail
			die "Postgres on 127.0.0.1:$port not ready after ${timeout}s"
		fi
		if ! postmaster_pid >/dev/null; then
			log_tail
			die "Postgres ($pgdata) exited during startup"
		fi
		sleep 0.3
	done
}

do_start() {
	if postmaster_pid >/dev/null; then
		wait_ready
		ensure_db
		note "already running: $pgdata on 127.0.0.1:$port"
		echo "DATABASE_URL=$url"
		return 0
	fi
	clean_stale
	if ready; then
		die "something else already answers on 127.0.0.1:$port; set $([[ $profile == test ]] && echo DEVSTATUS_TEST_PGPORT || echo DEVSTATUS_PGPORT) (or --port) to a free port"
	fi
	if [[ -f $pgdata/PG_VERSION ]]; then
		local have want
		have=$(cat "$pgdata/PG_VERSION")
		want=$("$bindir/postgres" -V | sed -E 's/.* ([0-9]+)(\.[0-9]+)*.*/\1/')
		[[ $have == "$want" ]] || die "$pgdata was created by Postgres $have but $bindir is Postgres $want; remove the directory (its data is local dev data) or set PG_BINDIR"
		ensure_osuser
		ensure_traversable "$(dirname "$pgdata")"
		if [[ $(id -u) -eq 0 ]]; then
			[[ $(stat -c %U "$pgdata") == "$osuser" ]] || { note "chown -R $osuser $pgdata"; chown -R "$osuser:" "$pgdata"; }
		else
			[[ -O $pgdata ]] || die "$pgdata belongs to $(stat -c %U "$pgdata"), not to you ($(id -un)); run as root or choose another --data"
		fi
	elif [[ -d $pgdata && -n $(ls -A "$pgdata" 2>/dev/null) ]]; then
		die "$pgdata exists, is not empty and is not a Postgres data directory; remove it or choose another --data"
	else
		init_cluster
	fi
	write_conf
	note "starting Postgres: $pgdata on 127.0.0.1:$port (log: $logfile)"
	if ! as_pg "$bindir/pg_ctl" -D "$pgdata" -l "$logfile" -w -t "$timeout" start >&2; then
		log_tail
		die "pg_ctl start failed for $pgdata on port $port"
	fi
	wait_ready
	ensure_db
	echo "DATABASE_URL=$url"
}

do_stop() {
	local pid
	if ! pid=$(postmaster_pid); then
		clean_stale
		note "not running: $pgdata"
		return 0
	fi
	note "stopping Postgres $pgdata (pid $pid)"
	if ! as_pg "$bindir/pg_ctl" -D "$pgdata" -m fast -w -t "$timeout" stop >&2; then
		log_tail
		die "pg_ctl stop failed for $pgdata"
	fi
}

do_status() {
	local pid
	if pid=$(postmaster_pid); then
		if ready; then
			echo "running (pid $pid), accepting connections"
		else
			echo "running (pid $pid), not accepting connections yet"
		fi
		echo "data: $pgdata"
		echo "port: $port"
		echo "DATABASE_URL=$url"
		return 0
	fi
	if [[ -f $pidfile ]]; then echo "stopped (stale postmaster.pid; start will clean it)"; else echo "stopped"; fi
	echo "data: $pgdata"
	echo "port: $port"
	return 3
}

# One start/stop at a time per data directory (two `make test` at once, say).
with_lock() {
	local lock
	lock="$(dirname "$pgdata")/.$(basename "$pgdata").lock"
	mkdir -p "$(dirname "$pgdata")"
	if command -v flock >/dev/null; then
		exec 9>"$lock"
		flock -w "$timeout" 9 || die "timed out waiting for $lock"
	fi
	"$@"
}

case "$cmd" in
start) with_lock do_start ;;
stop) with_lock do_stop ;;
url) echo "$url" ;;
status) do_status ;;
*) die "unknown command '$cmd': start|stop|url|status" ;;
esac
