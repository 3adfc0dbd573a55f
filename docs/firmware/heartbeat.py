#!/usr/bin/env python3
"""Heartbeat loop for a device, with the Python standard library only.

    DEVSTATUS_URL=http://localhost:8080 DEVICE_ID=kiosk-7 DEVICE_TOKEN=... python3 heartbeat.py

Environment: DEVSTATUS_URL, DEVICE_ID, DEVICE_TOKEN (required); HEARTBEATS
(stop after this many accepted heartbeats; default 0: run forever);
BACKOFF_BASE_S and BACKOFF_CAP_S (exponential backoff on errors; default 1
and 300).

Contract: every heartbeat_interval_s (from the last 200 answer; 30 s until
the first) POST /v1/devices/{id}/heartbeat. On 429/503 wait Retry-After (also
in the body as retry_after_s) plus jitter and send again; on a network error
or another 5xx back off exponentially with full jitter. Any other 4xx is
final (a wrong token, an unknown or decommissioned device, a refused body):
exit 2.
"""

import json
import os
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def log(msg):
    print("heartbeat.py: " + msg, file=sys.stderr, flush=True)


def on_reconnect():
    """The server asks the device to re-establish its session (after an
    operator's request, or when it comes back from offline): re-open
    whatever long-lived connection the firmware keeps."""
    log("server asked to reconnect")


def send(url, token, body):
    """POST one heartbeat; returns (status, headers, parsed JSON body or {})."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": "Bearer " + token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, e.headers, e.read()
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        data = {}
    return status, headers, data if isinstance(data, dict) else {}


def retry_after(headers, data, default):
    """Seconds to wait from the Retry-After header, else retry_after_s."""
    for v in (headers.get("Retry-After"), data.get("retry_after_s")):
        try:
            if v is not None and int(v) >= 0:
                return int(v)
        except (TypeError, ValueError):
            pass
    return default


def main():
    base_url = os.environ["DEVSTATUS_URL"].rstrip("/")
    device = os.environ["DEVICE_ID"]
    token = os.environ["DEVICE_TOKEN"]
    limit = int(os.environ.get("HEARTBEATS", "0"))
    base = float(os.environ.get("BACKOFF_BASE_S", "1"))
    cap = float(os.environ.get("BACKOFF_CAP_S", "300"))
    url = base_url + "/v1/devices/" + urllib.parse.quote(device, safe="") + "/heartbeat"
    interval, attempt, sent, start = 30, 0, 0, time.monotonic()
    while True:
        body = {"device_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "metrics": {"uptime_s": int(time.monotonic() - start)}}
        try:
            status, headers, data = send(url, token, body)
        except (urllib.error.URLError, OSError) as e:
            status, headers, data = 0, {}, {"error": str(e)}
        if status == 200:
            attempt, sent = 0, sent + 1
            if isinstance(data.get("heartbeat_interval_s"), int) and data["heartbeat_interval_s"] > 0:
                interval = data["heartbeat_interval_s"]
            if data.get("should_reconnect") is True:
                on_reconnect()
            log("200 (%d sent), next in %ds" % (sent, interval))
            if limit and sent >= limit:
                return 0
            time.sleep(interval)
        elif status in (429, 503):
            wait = retry_after(headers, data, base) + random.uniform(0, 1)
            log("%d, Retry-After %s: retrying in %.1fs" % (status, headers.get("Retry-After"), wait))
            time.sleep(wait)
        elif 400 <= status < 500:
            log("%d: %s; giving up" % (status, data))
            return 2
        else:
            # Network error (0) or another 5xx: exponential backoff with
            # full jitter, capped.
            wait = random.uniform(0, min(cap, base * 2 ** min(attempt, 16)))
            attempt += 1
            log("%d %s: retrying in %.1fs (attempt %d)" % (status, data.get("error", ""), wait, attempt))
            time.sleep(wait)


if __name__ == "__main__":
    sys.exit(main())
