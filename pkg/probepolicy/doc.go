// Package probepolicy decides which probe targets the ping service may
// contact, so that a device (or whoever holds its token) cannot make
// devstatus probe arbitrary hosts: the service's own loopback, a cloud
// metadata endpoint on a link-local address, the internal network.
//
// The policy is applied twice:
//
//   - when a probe URL is set (POST /v1/devices, PATCH /v1/devices/{id},
//     or "probe_url" in a heartbeat): [Policy.CheckURL] refuses a scheme other
//     than http/https, credentials in the URL, and a literal IP address (or
//     the name "localhost") in a forbidden range, with a *[ForbiddenError] or
//     an [ErrInvalidURL] the bridge answers as 400;
//   - when the ping service connects: [Policy.Control] is a net.Dialer
//     Control function that checks the address actually dialled, after DNS
//     resolution, so a host name that resolves (or re-resolves: DNS
//     rebinding) to a forbidden address is refused before any packet is sent.
//
// Forbidden by default: loopback (127.0.0.0/8, ::1), link-local
// (169.254.0.0/16, fe80::/10), unspecified (0.0.0.0/8, ::), multicast,
// broadcast and reserved (240.0.0.0/4) addresses, and private ranges
// (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, fc00::/7,
// fec0::/10). [Policy.AllowPrivate] allows the private ranges;
// [Policy.AllowCIDRs] allows listed ranges whatever their category (the
// fleet's VPN range, or 127.0.0.1/32 in tests). Ports are not restricted.
//
// It is a leaf package: it does no I/O of its own (no DNS lookups) and holds
// no state; the zero [Policy] is the secure default.
package probepolicy
