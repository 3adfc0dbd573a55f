#!/usr/bin/env bash
# cluster.sh — run the 3-node NATS JetStream cluster of deploy/nats/n{1,2,3}.conf on this machine.
#
# Usage: deploy/nats/cluster.sh start|stop|status
#
# Clients on 127.0.0.1:4222-4224, routes on 6222-6224, monitoring on 8222-8224; JetStream stores
# in ./data/nats/n{1,2,3}, logs and pid files beside them. The server binary is `nats-server` from
# PATH, else ./bin/nats-server built from the nats-server module version in go.mod (offline: it is
# already in the module cache for the embedded server), or $NATS_SERVER.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root" # store_dir in the configs is relative to the repository root
GO=${GO:-go}
dir=data/nats
nodes=(1 2 3)

die() {
	echo "nats-cluster: error: $*" >&2
	exit 1
}
note() { echo "nats-cluster: $*" >&2; }

server_bin() {
	if [[ -n ${NATS_SERVER:-} ]]; then echo "$NATS_SERVER"; return; fi
	if command -v nats-server >/dev/null; then command -v nats-server; return; fi
	if [[ ! -x bin/nats-server || go.mod -nt bin/nats-server ]]; then
		note "building bin/nats-server (version from go.mod)"
		mkdir -p bin
		"$GO" build -o bin/nats-server github.com/nats-io/nats-server/v2 >&2
	fi
	echo "$root/bin/nats-server"
}

pid_of() { # live pid of node $1, or fail
	local f="$dir/n$1.pid" pid
	[[ -f $f ]] || return 1
	pid=$(cat "$f")
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
	grep -q nats-server "/proc/$pid/cmdline" 2>/dev/null || return 1
	echo "$pid"
}

healthy() { # node $1 answers /healthz with JetStream ready
	curl -fsS -m 2 "http://127.0.0.1:$((8221 + $1))/healthz" >/dev/null 2>&1
}

start() {
	local bin i
	bin=$(server_bin)
	mkdir -p "$dir"
	for i in "${nodes[@]}"; do
		if pid_of "$i" >/dev/null; then
			note "n$i already running (pid $(pid_of "$i"))"
			continue
		fi
		rm -f "$dir/n$i.pid"
		note "starting n$i (client 127.0.0.1:$((4221 + i)), log $dir/n$i.log)"
		nohup "$bin" -c "deploy/nats/n$i.conf" -P "$dir/n$i.pid" -l "$dir/n$i.log" >/dev/null 2>&1 &
	done
	local deadline=$((SECONDS + 60)) ok
	while :; do
		ok=0
		for i in "${nodes[@]}"; do
			if healthy "$i"; then ok=$((ok + 1)); fi
		done
		[[ $ok == "${#nodes[@]}" ]] && break
		if ((SECONDS >= deadline)); then
			for i in "${nodes[@]}"; do
				echo "---- $dir/n$i.log" >&2
				tail -n 15 "$dir/n$i.log" >&2 || true
			done
			die "cluster not healthy after 60s ($ok of ${#nodes[@]} nodes)"
		fi
		sleep 0.5
	done
	note "cluster healthy; clients: --nats-url nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224 --replicas 3"
}

stop() {
	local i pid
	for i in "${nodes[@]}"; do
		if pid=$(pid_of "$i"); then
			note "stopping n$i (pid $pid)"
			kill -TERM "$pid"
			for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
			if kill -0 "$pid" 2>/dev/null; then note "n$i still up, SIGKILL"; kill -KILL "$pid"; fi
		else
			note "n$i not running"
		fi
		rm -f "$dir/n$i.pid"
	done
}

status() {
	local i pid rc=0 leader
	for i in "${nodes[@]}"; do
		if pid=$(pid_of "$i"); then
			if healthy "$i"; then echo "n$i: running (pid $pid), healthy"; else echo "n$i: running (pid $pid), NOT healthy"; rc=1; fi
		else
			echo "n$i: stopped"
			rc=3
		fi
	done
	if command -v jq >/dev/null; then
		for i in "${nodes[@]}"; do
			leader=$(curl -fsS -m 2 "http://127.0.0.1:$((8221 + i))/jsz" 2>/dev/null | jq -r '.meta_cluster.leader // empty') || true
			if [[ -n $leader ]]; then echo "JetStream meta leader: $leader"; break; fi
		done
	fi
	return "$rc"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*) die "usage: $0 start|stop|status" ;;
esac
