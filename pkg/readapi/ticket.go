package readapi

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/devstatus/devstatus/pkg/httpx"
)

// Patterns of the stream ticket and of the caller's identity, registered by
// [API.Routes].
const (
	PatternTicket = "POST /v1/stream/ticket"
	PatternWhoami = "GET /v1/whoami"
)

// DefaultTicketTTL is how long a stream ticket opens GET /v1/stream.
const DefaultTicketTTL = 60 * time.Second

// ticketPrefix starts every ticket: the format's version.
const ticketPrefix = "st1."

// TicketKey derives the stream tickets' HMAC key from a secret every
// instance of a deployment shares (the bootstrap admin token), so that a
// ticket issued by one instance opens the stream on any other. 32 bytes.
func TicketKey(secret string) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("devstatus stream ticket key v1"))
	return m.Sum(nil)
}

// TicketJSON is the answer of POST /v1/stream/ticket.
type TicketJSON struct {
	// Ticket opens GET /v1/stream as ?ticket=…; it opens nothing else.
	Ticket string `json:"ticket"`
	// ExpiresAt is when it stops opening new streams (RFC 3339 UTC); a
	// stream opened before goes on.
	ExpiresAt time.Time `json:"expires_at"`
}

// WhoamiJSON is the answer of GET /v1/whoami.
type WhoamiJSON struct {
	// Role is "admin" or "viewer".
	Role string `json:"role"`
	// Name is the token's name ("admin" for the bootstrap --admin-token).
	Name string `json:"name"`
}

// issueTicket returns a ticket valid until exp: "st1.<exp unix s>.<nonce>.<mac>",
// nonce 16 random bytes and mac HMAC-SHA256(key, "st1.<exp>.<nonce>"), both
// base64url without padding.
func (a *API) issueTicket(exp time.Time) string {
	var nonce [16]byte
	_, _ = rand.Read(nonce[:]) // never fails (crypto/rand)
	body := ticketPrefix + strconv.FormatInt(exp.Unix(), 10) + "." + base64.RawURLEncoding.EncodeToString(nonce[:])
	return body + "." + base64.RawURLEncoding.EncodeToString(a.ticketMAC(body))
}

func (a *API) ticketMAC(body string) []byte {
	m := hmac.New(sha256.New, a.cfg.TicketKey)
	m.Write([]byte(body))
	return m.Sum(nil)
}

// checkTicket reports whether t is a ticket this deployment signed that has
// not expired at now.
func (a *API) checkTicket(t string, now time.Time) bool {
	i := strings.LastIndexByte(t, '.')
	if !strings.HasPrefix(t, ticketPrefix) || i < len(ticketPrefix) {
		return false
	}
	body, sig := t[:i], t[i+1:]
	mac, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(mac, a.ticketMAC(body)) {
		return false
	}
	expStr, _, ok := strings.Cut(body[len(ticketPrefix):], ".")
	if !ok {
		return false
	}
	exp, err := strconv.ParseInt(expStr, 10, 64)
	return err == nil && now.Unix() < exp
}

// handleTicket serves POST /v1/stream/ticket (any valid token, no body) →
// 200 {"ticket", "expires_at"}: a stream-only ticket for the browser's
// EventSource, which cannot send an Authorization header. It opens GET
// /v1/stream?ticket=… on any instance until expires_at (Config.TicketTTL,
// 60 s by default), and no other route: it is not a token.
func (a *API) handleTicket(w http.ResponseWriter, r *http.Request) {
	exp := a.cfg.Clock.Now().Add(a.cfg.TicketTTL).Truncate(time.Second)
	noStore(w)
	httpx.WriteJSON(w, http.StatusOK, TicketJSON{Ticket: a.issueTicket(exp), ExpiresAt: exp.UTC()})
}

// handleWhoami serves GET /v1/whoami (any valid token) → 200 {"role",
// "name"}: what the caller's token may do, so that a client (the dashboard)
// can hide what it may not.
func (a *API) handleWhoami(w http.ResponseWriter, r *http.Request) {
	tok := httpx.BearerToken(r)
	var (
		name string
		role httpx.Role
		err  error
	)
	if id, ok := a.cfg.Auth.(Identifier); ok {
		name, role, err = id.Identify(r.Context(), tok)
	} else if role, err = a.cfg.Auth.Authorize(r.Context(), tok); role == httpx.RoleAdmin {
		name = "admin"
	}
	if err != nil { // (known a moment ago: RequireRole let it through)
		httpx.CheckRole(w, r, a.cfg.Auth, httpx.RoleViewer, tok)
		return
	}
	noStore(w)
	httpx.WriteJSON(w, http.StatusOK, WhoamiJSON{Role: string(role), Name: name})
}

// Identifier is an httpx.Authorizer that also tells a token's name
// (*tokens.Store implements it); GET /v1/whoami uses it when Config.Auth
// has it. Errors as Authorize's.
type Identifier interface {
	Identify(ctx context.Context, token string) (name string, role httpx.Role, err error)
}
