#!/usr/bin/env bash
# Heartbeat loop for a device, with bash and curl only.
#
#   DEVSTATUS_URL=http://localhost:8080 DEVICE_ID=kiosk-7 DEVICE_TOKEN=... ./heartbeat.sh
#
# Environment:
#   DEVSTATUS_URL  base URL of the service (required)
#   DEVICE_ID      the device id (required; URL-safe here: letters, digits, - _ .)
#   DEVICE_TOKEN   the token from POST /v1/devices (required)
#   HEARTBEATS     stop after this many accepted heartbeats (default 0: run forever)
#   BACKOFF_BASE_S, BACKOFF_CAP_S  exponential backoff on errors (default 1 and 300)
#
# Contract: every heartbeat_interval_s (from the last 200 answer; 30 s
# until the first) POST /v1/devices/{id}/heartbeat. On 429/503 wait
# Retry-After (also in the body as retry_after_s) plus jitter and send again;
# on a network error or another 5xx back off exponentially with full jitter.
# Any other 4xx is final (a wrong token, an unknown or decommissioned device,
# a body the server refuses): retrying cannot help; exit 2.
set -u
: "${DEVSTATUS_URL:?}" "${DEVICE_ID:?}" "${DEVICE_TOKEN:?}"
HEARTBEATS=${HEARTBEATS:-0}
BASE=${BACKOFF_BASE_S:-1}
CAP=${BACKOFF_CAP_S:-300}
interval=30
attempt=0
sent=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

log() { echo "heartbeat.sh: $*" >&2; }

# jitter_ms N: a random number of milliseconds in [0, N*1000).
jitter_ms() { echo $(( (RANDOM * 32768 + RANDOM) % ($1 * 1000 > 0 ? $1 * 1000 : 1) )); }
sleep_ms() { sleep "$(($1 / 1000)).$(printf '%03d' $(($1 % 1000)))"; }

# on_reconnect: the server asks the device to re-establish its session
# (after an operator's request, or when it comes back from offline):
# re-open whatever long-lived connection the firmware keeps.
on_reconnect() { log "server asked to reconnect"; }

while :; do
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  body="{\"device_time\":\"$now\",\"metrics\":{\"uptime_s\":$SECONDS}}"
  code=$(curl -sS -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' --max-time 10 \
    -H "Authorization: Bearer $DEVICE_TOKEN" -H 'Content-Type: application/json' \
    --data "$body" "$DEVSTATUS_URL/v1/devices/$DEVICE_ID/heartbeat") || code=000
  case $code in
  200)
    attempt=0
    sent=$((sent + 1))
    iv=$(sed -n 's/.*"heartbeat_interval_s":\([0-9][0-9]*\).*/\1/p' "$tmp/body")
    [ -n "$iv" ] && [ "$iv" -gt 0 ] && interval=$iv
    grep -q '"should_reconnect":true' "$tmp/body" && on_reconnect
    log "200 ($sent sent), next in ${interval}s"
    if [ "$HEARTBEATS" -gt 0 ] && [ "$sent" -ge "$HEARTBEATS" ]; then
      exit 0
    fi
    sleep "$interval"
    ;;
  429 | 503)
    ra=$(tr -d '\r' <"$tmp/headers" | sed -n 's/^[Rr]etry-[Aa]fter: *\([0-9][0-9]*\).*/\1/p' | head -n 1)
    [ -z "$ra" ] && ra=$(sed -n 's/.*"retry_after_s":\([0-9][0-9]*\).*/\1/p' "$tmp/body")
    [ -z "$ra" ] && ra=$BASE
    wait_ms=$((ra * 1000 + $(jitter_ms 1)))
    log "$code, Retry-After ${ra}s: retrying in ${wait_ms}ms"
    sleep_ms "$wait_ms"
    ;;
  4??)
    log "$code: $(cat "$tmp/body"); giving up"
    exit 2
    ;;
  *)
    # Network error (000), another 5xx or an unexpected answer: exponential
    # backoff with full jitter, capped.
    ceil=$((BASE << (attempt < 16 ? attempt : 16)))
    [ "$ceil" -gt "$CAP" ] && ceil=$CAP
    attempt=$((attempt + 1))
    wait_ms=$(jitter_ms "$ceil")
    log "$code: retrying in ${wait_ms}ms (attempt $attempt)"
    sleep_ms "$wait_ms"
    ;;
  esac
done
