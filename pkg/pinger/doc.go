// Package pinger is devstatus's ping service (role "pinger"): it takes the
// probe requests that partition workers publish for devices whose heartbeat
// is stale (stream events.ProbeStream, a JetStream work queue holding at most
// one pending request per device), probes each device's probe URL with an
// HTTP(S) GET, and publishes the outcome as a ping_result input event on the
// device's input subject, where the partition worker judges it (ignored
// while the heartbeat is fresh; a failure moves connected →
// temporarily_offline; a success is liveness).
//
// Work sharing: every pinger instance pulls from one durable consumer
// ([DefaultConsumer]) with explicit acks; JetStream hands each request to one
// instance, and the request is acknowledged only after its result has been
// published and acknowledged (PubAck), so a crashed instance's requests are
// redelivered after AckWait (longer than a probe and its publish), never
// while another instance still works on them. Each instance also skips a
// request for a device it is probing at that moment. Concurrency per
// instance is bounded by [Config.Concurrency]: an instance takes a request
// from its client buffer (at most Concurrency requests pulled ahead) only
// when a probe slot is free.
//
// Probing ([Prober]): GET with [Config.Timeout] for the whole exchange
// (connect, TLS, response headers), no keep-alive (every probe opens a fresh
// connection), no proxy, every dialled address checked by the probe policy
// (package probepolicy) after DNS resolution. Redirects are followed only to
// the same host name (at most [MaxRedirects]). The result is ok when the
// final response status is 2xx; a 3xx that is not followed (another host, or
// too many), a 4xx and a 5xx are failures of class "http_status". Other
// failure classes: "timeout", "refused", "dns", "tls", "other". A target the
// policy refuses is not probed and no result is published (the device then
// counts as having no usable probe URL).
//
// What it must not do: decide a device's status (results are evidence for
// the partition worker, which ignores those made while the heartbeat is
// fresh), write to Postgres, or probe a device the registry does not know,
// has decommissioned, or gave no probe URL.
package pinger
