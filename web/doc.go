// Package web is the operator dashboard of devstatus: static HTML, CSS and
// JavaScript embedded in the binary (no build step, nothing fetched from the
// internet at run time) and served at GET / and GET /assets/.
//
// The page is a client of the read API and the bridge's admin endpoints
// only: it pages through GET /v1/devices (never the whole fleet in the
// DOM), follows GET /v1/stream (server-sent events) for live updates, and
// draws a device's status timeline as SVG from its transition history. It
// registers, re-keys and decommissions devices, imports files and shows
// each device's audit trail and availability bars. It asks for an API
// token in a sign-in form and keeps it in sessionStorage (gone when the tab
// closes); it sends it as a bearer header, asks GET /v1/whoami for its role
// (a viewer sees no change control), and opens the EventSource, which cannot
// send headers, with a short-lived stream ticket (POST /v1/stream/ticket):
// no cookie, no token in a URL.
//
// It must not hold any logic the API does not expose: it only renders.
package web
