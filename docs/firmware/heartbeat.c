/*
 * Heartbeat loop for a device, in C with libcurl (the same loop fits an
 * ESP-IDF task with esp_http_client: replace http_post below).
 *
 *   cc -o heartbeat heartbeat.c -lcurl
 *   DEVSTATUS_URL=http://localhost:8080 DEVICE_ID=kiosk-7 DEVICE_TOKEN=... ./heartbeat
 *
 * Environment: DEVSTATUS_URL, DEVICE_ID (URL-safe), DEVICE_TOKEN (required);
 * HEARTBEATS (stop after this many accepted heartbeats; 0: run forever);
 * BACKOFF_BASE_S and BACKOFF_CAP_S (exponential backoff on errors; default 1
 * and 300).
 *
 * Contract: every heartbeat_interval_s (from the last 200 answer; 30 s until
 * the first) POST /v1/devices/{id}/heartbeat. On 429/503 wait Retry-After
 * (also in the body as retry_after_s) plus jitter and send again; on a
 * network error or another 5xx back off exponentially with full jitter. Any
 * other 4xx is final (wrong token, unknown or decommissioned device): exit 2.
 */
#define _POSIX_C_SOURCE 200809L
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct answer {
	long status;
	long retry_after; /* seconds from the Retry-After header, -1 if none */
	char body[4096];
	size_t len;
};

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
	struct answer *a = ud;
	size_t k = size * n;
	size_t room = sizeof a->body - 1 - a->len;
	memcpy(a->body + a->len, p, k < room ? k : room);
	a->len += k < room ? k : room;
	a->body[a->len] = 0;
	return k;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud) {
	struct answer *a = ud;
	size_t k = size * n;
	if (k > 12 && strncasecmp(p, "Retry-After:", 12) == 0)
		a->retry_after = strtol(p + 12, NULL, 10);
	return k;
}

/* json_int finds "key":<integer> in a flat answer; def when absent. */
static long json_int(const char *body, const char *key, long def) {
	char pat[64];
	snprintf(pat, sizeof pat, "\"%s\":", key);
	const char *s = strstr(body, pat);
	return s ? strtol(s + strlen(pat), NULL, 10) : def;
}

static void sleep_s(double s) {
	struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
	nanosleep(&ts, NULL);
}

static double uniform(double hi) { return hi * ((double)rand() / RAND_MAX); }

/* on_reconnect: the server asks the device to re-establish its session
 * (after an operator's request, or when it comes back from offline). */
static void on_reconnect(void) { fprintf(stderr, "heartbeat.c: server asked to reconnect\n"); }

/* http_post sends one heartbeat; a->status is 0 on a network error. */
static void http_post(CURL *c, const char *url, const char *auth, const char *body, struct answer *a) {
	struct curl_slist *h = NULL;
	h = curl_slist_append(h, auth);
	h = curl_slist_append(h, "Content-Type: application/json");
	memset(a, 0, sizeof *a);
	a->retry_after = -1;
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, a);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, a);
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &a->status);
	curl_slist_free_all(h);
}

static const char *env(const char *k, const char *def) {
	const char *v = getenv(k);
	if (!v && !def) {
		fprintf(stderr, "heartbeat.c: %s is required\n", k);
		exit(1);
	}
	return v ? v : def;
}

int main(void) {
	const char *base = env("DEVSTATUS_URL", NULL), *id = env("DEVICE_ID", NULL), *tok = env("DEVICE_TOKEN", NULL);
	long limit = atol(env("HEARTBEATS", "0"));
	double bbase = atof(env("BACKOFF_BASE_S", "1")), cap = atof(env("BACKOFF_CAP_S", "300"));
	char url[1024], auth[1024], body[256];
	snprintf(url, sizeof url, "%s/v1/devices/%s/heartbeat", base, id);
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", tok);
	srand((unsigned)time(NULL) ^ (unsigned)clock());
	curl_global_init(CURL_GLOBAL_DEFAULT);
	CURL *c = curl_easy_init();
	long interval = 30, sent = 0;
	int attempt = 0;
	time_t start = time(NULL);
	struct answer a;
	for (;;) {
		char now[32];
		time_t t = time(NULL);
		strftime(now, sizeof now, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
		snprintf(body, sizeof body, "{\"device_time\":\"%s\",\"metrics\":{\"uptime_s\":%ld}}", now, (long)(t - start));
		http_post(c, url, auth, body, &a);
		if (a.status == 200) {
			attempt = 0;
			sent++;
			long iv = json_int(a.body, "heartbeat_interval_s", interval);
			if (iv > 0)
				interval = iv;
			if (strstr(a.body, "\"should_reconnect\":true")) {
				on_reconnect();
				curl_easy_cleanup(c); /* a fresh connection too */
				c = curl_easy_init();
			}
			fprintf(stderr, "heartbeat.c: 200 (%ld sent), next in %lds\n", sent, interval);
			if (limit > 0 && sent >= limit)
				break;
			sleep_s((double)interval);
		} else if (a.status == 429 || a.status == 503) {
			long ra = a.retry_after >= 0 ? a.retry_after : json_int(a.body, "retry_after_s", (long)bbase);
			double wait = (double)ra + uniform(1.0);
			fprintf(stderr, "heartbeat.c: %ld, Retry-After %lds: retrying in %.1fs\n", a.status, ra, wait);
			sleep_s(wait);
		} else if (a.status >= 400 && a.status < 500) {
			fprintf(stderr, "heartbeat.c: %ld: %s; giving up\n", a.status, a.body);
			curl_easy_cleanup(c);
			return 2;
		} else {
			double ceil = bbase * (double)(1L << (attempt < 16 ? attempt : 16));
			double wait = uniform(ceil < cap ? ceil : cap);
			attempt++;
			fprintf(stderr, "heartbeat.c: %ld: retrying in %.1fs (attempt %d)\n", a.status, wait, attempt);
			sleep_s(wait);
		}
	}
	curl_easy_cleanup(c);
	curl_global_cleanup();
	return 0;
}
