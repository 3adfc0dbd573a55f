// Package rawhttp is the load generator's HTTP/1.1 client: one keep-alive
// connection per [Conn], one request at a time, written with one write from a
// reused buffer and read without a header map.
//
// It is for the load generator only (package load drives the baseline and the
// service through it, so its cost is the same on both sides of their ratio).
// What it must not do: TLS, redirects, cookies, pipelining, or anything of an
// HTTP client that the generator does not need; anything else should use
// net/http.
package rawhttp
