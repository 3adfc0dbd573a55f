#!/usr/bin/env bash
# bench-e2e.sh — the end-to-end load run of `make bench` (short) and `make bench-full`.
#
# Builds devstatus and devicesim, starts a private Postgres (deploy/pg-local.sh, its own data
# directory and port), a fresh devstatus with embedded JetStream (roles bridge, ticker, projector,
# api) and, as a second process on the same machine, the partition worker (--roles worker over
# NATS/TCP, so that its memory and restart can be measured alone), then runs `devicesim load`
# (see `devicesim load -h`): baseline-vs-service rounds, sustain, steady with detection latency,
# gateway phases. Results: $BENCH_OUT/<time>-<mode>/{report.json,report.txt,plot.svg,*.log},
# and $BENCH_OUT/latest pointing at them.
#
# Environment:
#   BENCH_MODE   short (default, < 5 min) | full (1 000 000 gateway devices at 33 000/s for 20 min,
#                the gateways brought online over the first 8 min, the last 10 min judged; worker
#                restart with 1 000 000 devices' state; ~45 min)
#   BENCH_SYNC   default (default) | always (--sync always: fsync before every PubAck)
#   BENCH_OUT    results directory (default ./data/bench)
#   BENCH_DIR    scratch directory for Postgres and JetStream data (default /tmp/devstatus-bench)
#   BENCH_PORT   first of the ports used (default 19180: HTTP; +1 worker HTTP; +2 NATS; +3 Postgres;
#                +4/+5 pprof when BENCH_PPROF=1)
#   BENCH_PPROF  1: build with -tags pprof and save 30 s CPU and allocation profiles of the service
#                and the worker during the rounds (pprof endpoints on loopback)
#   BENCH_ARGS   extra flags for devicesim load (override the mode's defaults)
#   BENCH_OFFLINE_AFTER  the service's --offline-after, also told to devicesim (default 40s: devices
#                at 30 s); raise it with a slower fleet (e.g. 1 000 000 devices at 12 000/s: 120s);
#                --probe-after follows at 7/8 of it
#   BENCH_PG_CONF  postgresql.conf lines of the private cluster (default: shared_buffers 2GB,
#                max_wal_size 8GB, checkpoint_timeout 15min)
#   BENCH_GOGC   GOGC of the service process (default: Go's 100; docs/performance.md compares 400);
#                BENCH_WORKER_GOGC that of the worker process; BENCH_GOMEMLIMIT the service's GOMEMLIMIT
#   BENCH_DEVSTATUS  another devstatus binary to measure (e.g. an older commit) with this load generator
#   BENCH_LABEL  label of the run in the report
# Everything this script starts is stopped when it exits (by pid).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

mode=${BENCH_MODE:-short}
sync=${BENCH_SYNC:-default}
port=${BENCH_PORT:-19180}
http_port=$port worker_port=$((port + 1)) nats_port=$((port + 2)) pg_port=$((port + 3))
pprof_svc=$((port + 4)) pprof_wrk=$((port + 5))
scratch=${BENCH_DIR:-/tmp/devstatus-bench}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
outroot=${BENCH_OUT:-$root/data/bench}
out=$outroot/$stamp-$mode-sync-$sync
mkdir -p "$out" "$scratch"
admin=bench-admin-$RANDOM$RANDOM
gogc=() wgogc=()
[[ -n ${BENCH_GOGC:-} ]] && gogc=(GOGC="$BENCH_GOGC")
[[ -n ${BENCH_GOMEMLIMIT:-} ]] && gogc+=(GOMEMLIMIT="$BENCH_GOMEMLIMIT")
[[ -n ${BENCH_WORKER_GOGC:-} ]] && wgogc=(GOGC="$BENCH_WORKER_GOGC")

note() { echo "bench: $*" >&2; }

pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$p" 2>/dev/null || true
	done
}
trap cleanup EXIT

tags=()
[[ ${BENCH_PPROF:-0} == 1 ]] && tags=(-tags pprof)
note "building into $scratch/bin"
go build "${tags[@]}" -o "$scratch/bin/" ./cmd/devstatus ./cmd/devicesim
bin=$scratch/bin
# BENCH_DEVSTATUS: measure another devstatus binary (e.g. an older commit) with this load generator.
devstatus=${BENCH_DEVSTATUS:-$bin/devstatus}

# Postgres: a private cluster, a fresh database per run, restarted with the settings a fleet of a
# million devices needs (the devices table and its indexes, ~1 GB, stay in shared buffers; fewer
# checkpoints): BENCH_PG_CONF overrides them.
pgconf=${BENCH_PG_CONF-$'shared_buffers = 2GB\nmax_wal_size = 8GB\ncheckpoint_timeout = 15min'}
deploy/pg-local.sh --data "$scratch/pg" --port "$pg_port" stop
pgurl=$(DEVSTATUS_PG_CONF=$pgconf deploy/pg-local.sh --data "$scratch/pg" --port "$pg_port" --db devstatus_bench start | tail -n1)
pgurl=${pgurl#DATABASE_URL=}
psql -q "${pgurl/devstatus_bench/postgres}" -c "DROP DATABASE IF EXISTS devstatus_bench WITH (FORCE)" -c "CREATE DATABASE devstatus_bench"
pgpid=$(head -n1 "$scratch/pg/postmaster.pid")

rm -rf "$scratch/data"
offline_after=${BENCH_OFFLINE_AFTER:-40s}
# Probes start at 7/8 of offline-after (the defaults: 35 s of 40 s), so that a fleet heartbeating
# within its interval is never probed, whatever the interval.
oa_s=${offline_after%s}
[[ $oa_s =~ ^[0-9]+$ ]] || { echo "bench: BENCH_OFFLINE_AFTER must be whole seconds, e.g. 120s" >&2; exit 2; }
probe_after=$((oa_s * 7 / 8))s
common=(--offline-after "$offline_after" --probe-after "$probe_after" --disconnect-after 300s --tick 1s --log-level warn --sync "$sync")
case $mode in
short)
	# Rate limit scaled to the short run's fleet (same limiter code path, shorter interval).
	rate=(--rate-min-interval 1s --rate-per-minute 60)
	load=(--devices 30000 --gateway-devices 100000 --rounds 3 --round-duration 10s --sustain-duration 15s
		--steady-duration 55s --gateway-max-duration 15s --gateway-rate 33000 --gateway-duration 20s --gateway-ramp 5s)
	;;
full)
	# 1 000 000 devices behind 1 000 gateways at 30 s, plus 60 000 single devices; the rate limit
	# scaled as in the short run for the single phases (gateway devices send every 30 s anyway).
	rate=(--rate-min-interval 1s --rate-per-minute 60)
	load=(--devices 60000 --gateway-devices 1000000 --rounds 3 --round-duration 20s --sustain-duration 60s
		--steady-duration 90s --gateway-max-duration 30s --gateway-rate 33334 --gateway-duration 20m --gateway-ramp 8m)
	;;
*) echo "bench: BENCH_MODE must be short or full" >&2; exit 2 ;;
esac
if [[ $sync == always ]]; then
	# Durability mode: what gateway batches win back; single heartbeats are measured by the rounds.
	# 100 000 gateway devices every 10 s (10 000/s), brought online over 30 s.
	load=(--devices 20000 --gateway-devices 100000 --rounds 2 --round-duration 10s --sustain-duration 0
		--steady-duration 0 --gateway-max-duration 30s --gateway-rate 10000 --gateway-duration 90s --gateway-ramp 30s)
	[[ $mode == full ]] && load=(--devices 20000 --gateway-devices 300000 --rounds 3 --round-duration 15s
		--sustain-duration 0 --steady-duration 0 --gateway-max-duration 60s --gateway-rate 10000 --gateway-duration 5m
		--gateway-ramp 2m)
	rate=(--rate-min-interval 1s --rate-per-minute 60)
fi

note "starting devstatus (bridge, ticker, projector, api; embedded JetStream in $scratch/data, sync $sync)"
env "${gogc[@]}" DEVSTATUS_PPROF_ADDR=127.0.0.1:$pprof_svc DATABASE_URL=$pgurl "$devstatus" serve --roles bridge,ticker,projector,api \
	--http-addr "127.0.0.1:$http_port" --nats-listen "127.0.0.1:$nats_port" --data-dir "$scratch/data" \
	--admin-token "$admin" --ping-token "$admin-ping" "${common[@]}" "${rate[@]}" >"$out/service.log" 2>&1 &
svc=$!
pids+=("$svc")
for _ in $(seq 150); do
	curl -fsS "127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && break
	kill -0 "$svc" 2>/dev/null || { tail -20 "$out/service.log"; exit 1; }
	sleep 0.2
done

# The embedded NATS listener takes clients with its token (kept in --data-dir/nats-token).
for _ in $(seq 50); do [[ -s $scratch/data/nats-token ]] && break; sleep 0.1; done
natsurl="nats://127.0.0.1:$nats_port"
[[ -s $scratch/data/nats-token ]] && natsurl="nats://$(cat "$scratch/data/nats-token")@127.0.0.1:$nats_port"
start_worker() {
	env "${wgogc[@]}" DEVSTATUS_PPROF_ADDR=127.0.0.1:$pprof_wrk "$devstatus" serve --roles worker --nats-url "$natsurl" \
		--http-addr "127.0.0.1:$worker_port" --admin-token "$admin" --ping-token "$admin-ping" "${common[@]}" >>"$out/worker.log" 2>&1 &
	wrk=$!
	pids+=("$wrk")
}
note "starting the worker (second process, over NATS/TCP)"
start_worker
for _ in $(seq 150); do
	curl -fsS "127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && curl -fsS "127.0.0.1:$worker_port/healthz" >/dev/null 2>&1 && break
	kill -0 "$wrk" 2>/dev/null || { echo "bench: the worker did not start:" >&2; tail -5 "$out/worker.log" >&2; exit 1; }
	sleep 0.2
done

if [[ ${BENCH_PPROF:-0} == 1 ]]; then
	# Profiles during the first rounds: after registration, 30 s of CPU, then the allocations.
	(
		sleep "${BENCH_PPROF_DELAY:-25}"
		curl -fsS -o "$out/service.cpu.pprof" "127.0.0.1:$pprof_svc/debug/pprof/profile?seconds=30" &
		curl -fsS -o "$out/worker.cpu.pprof" "127.0.0.1:$pprof_wrk/debug/pprof/profile?seconds=30" &
		wait
		curl -fsS -o "$out/service.allocs.pprof" "127.0.0.1:$pprof_svc/debug/pprof/allocs"
		curl -fsS -o "$out/worker.allocs.pprof" "127.0.0.1:$pprof_wrk/debug/pprof/allocs"
		curl -fsS -o "$out/service.mutex.pprof" "127.0.0.1:$pprof_svc/debug/pprof/mutex"
	) &
	pids+=("$!")
fi

note "devicesim load ${load[*]} ${BENCH_ARGS:-}"
# shellcheck disable=SC2086
"$bin/devicesim" load --url "http://127.0.0.1:$http_port" --admin-token "$admin" --log-level info --offline-after "$offline_after" \
	--metrics "service=http://127.0.0.1:$http_port/metrics" --metrics "worker=http://127.0.0.1:$worker_port/metrics" \
	--cpu-pid "postgres=$pgpid" --label "${BENCH_LABEL:-$mode, sync $sync}" --extra "mode=\"$mode\"" --extra "sync=\"$sync\"" \
	--extra "gogc=\"${BENCH_GOGC:-100}\"" --extra "worker_gogc=\"${BENCH_WORKER_GOGC:-100}\"" \
	--extra "gomemlimit=\"${BENCH_GOMEMLIMIT:-}\"" --extra "offline_after=\"$offline_after\"" \
	--out "$out/report.json" --plot "$out/plot.svg" "${load[@]}" ${BENCH_ARGS:-} | tee "$out/report.txt"

if [[ $mode == full && $sync == default ]]; then
	# Target 6: restart the worker with the fleet's state and time it until it processes again.
	# Heartbeats keep flowing meanwhile (a gateway open loop in the background).
	note "worker restart: gateway load in the background, then SIGTERM + start, then SIGKILL + start"
	"$bin/devicesim" load --url "http://127.0.0.1:$http_port" --admin-token "$admin" --log-level warn --devices 0 \
		--gateway-devices 100000 --rounds -1 --sustain-duration 0 --steady-duration 0 --gateway-rate 10000 \
		--gateway-duration 150s --prefix "rs-$RANDOM-" >"$out/restart-load.txt" 2>&1 &
	bg=$!
	pids+=("$bg")
	sleep 60 # registration of the background fleet, then load
	for how in TERM KILL; do
		kill "-$how" "$wrk"
		while kill -0 "$wrk" 2>/dev/null; do sleep 0.05; done
		t0=$(date +%s.%N)
		start_worker
		"$bin/devicesim" wait-worker --metrics "http://127.0.0.1:$worker_port/metrics" --since "$t0" --partitions 16 \
			--timeout 3m >"$out/restart-$how.json" || true
		note "restart after SIG$how: $(tr -d '\n ' <"$out/restart-$how.json")"
		sleep 20
	done
	wait "$bg" || true
fi

ln -sfn "$(basename "$out")" "$outroot/latest"
note "results in $out"
