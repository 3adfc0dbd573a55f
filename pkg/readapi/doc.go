// Package readapi serves the read side of devstatus over HTTP: one device,
// the filtered and paginated device list, a device's transition history and
// the fleet summary, as JSON in the shapes of design.md ("Names that scripts
// and dashboards rely on"). Every route needs the admin bearer token.
//
// It reads through [Reader] (implemented by *projections.Store) and must not
// write anything, publish to the bus or decide statuses. It registers only
// GET patterns, so it shares a ServeMux with the bridge's POST, PATCH and
// DELETE patterns on the same paths; the server wraps that mux with
// httpx.DeviceIDs so that every device id (with "/", "." or "..", spaces,
// non-ASCII) routes.
package readapi
