package registry

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
)

// Gateways: a gateway reports the heartbeats of the devices registered
// behind it (Device.Gateway) in batches, with its own token. Gateways live
// in the devices bucket under "gw.<events.SubjectToken(id)>" (device keys
// never contain a '.'), so the registry's KV watch invalidates their cached
// entries like the devices'; look-ups go through the same bounded cache.

// ErrGatewayExists: RegisterGateway for an id that is registered.
var ErrGatewayExists = errors.New("registry: gateway already registered")

// gatewayKeyPrefix starts the KV key of a gateway.
const gatewayKeyPrefix = "gw."

func gatewayKey(id string) string { return gatewayKeyPrefix + events.SubjectToken(id) }

// Gateway is a gateway's registration as stored in the KV bucket (JSON).
type Gateway struct {
	ID string `json:"id"`
	// TokenHash is the lowercase hex SHA-256 of the gateway token (see
	// Device.TokenHash).
	TokenHash    string    `json:"token_hash"`
	RegisteredAt time.Time `json:"registered_at"`
}

// ValidateGatewayID checks a gateway id: the device-id rules
// (events.ValidateDeviceID), and not "." or ".." (path segments that HTTP
// routing would clean away). Errors wrap [ErrInvalidGateway].
func ValidateGatewayID(id string) error {
	if err := events.ValidateDeviceID(id); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidGateway, err)
	}
	if id == "." || id == ".." {
		return fmt.Errorf("%w: %q cannot be a path segment", ErrInvalidGateway, id)
	}
	return nil
}

// RegisterGateway registers a gateway and returns its token (256 random
// bits, unpadded base64url), shown once: only its SHA-256 is stored. No
// input event is published: a gateway has no state of its own in the state
// machine; its devices' heartbeats carry its id (events.Heartbeat.Via).
// Errors: [ErrInvalidGateway], [ErrGatewayExists], [ErrUnavailable].
func (r *Registry) RegisterGateway(ctx context.Context, id string) (string, error) {
	if err := ValidateGatewayID(id); err != nil {
		return "", err
	}
	if err := r.connected(); err != nil {
		return "", err
	}
	token, err := newToken()
	if err != nil {
		return "", err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	g := Gateway{ID: id, TokenHash: HashToken(token), RegisteredAt: r.cfg.Clock.Now().UTC()}
	v, err := json.Marshal(&g)
	if err != nil {
		return "", fmt.Errorf("registry: encode: %w", err)
	}
	key := gatewayKey(id)
	_, err = r.kv.Create(ctx, key, v)
	r.cache.invalidate(key, 0)
	switch {
	case errors.Is(err, jetstream.ErrKeyExists):
		return "", ErrGatewayExists
	case err != nil:
		return "", unavailable("create gateway", err)
	}
	return token, nil
}

// lookupGateway returns the cached hot-path view of a gateway (only
// TokenHash and Revision are set), reading KV on a miss.
func (r *Registry) lookupGateway(ctx context.Context, id string) (Entry, error) {
	key := gatewayKey(id)
	if e, found, ok := r.cache.get(key); ok {
		if !found {
			return Entry{}, ErrNotFound
		}
		return e, nil
	}
	if err := r.connected(); err != nil {
		return Entry{}, err
	}
	fill := r.cache.reserve(key)
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	kve, err := r.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		r.cache.fill(key, fill, Entry{}, false)
		return Entry{}, ErrNotFound
	}
	if err != nil {
		r.cache.abandon(key, fill)
		return Entry{}, unavailable("get gateway", err)
	}
	var g Gateway
	e := Entry{Revision: kve.Revision()}
	if err := json.Unmarshal(kve.Value(), &g); err != nil || len(g.TokenHash) != 2*sha256.Size {
		r.cache.abandon(key, fill)
		return Entry{}, fmt.Errorf("registry: corrupt gateway entry %q at revision %d", key, kve.Revision())
	}
	de, err := entryOf(&Device{ID: id, TokenHash: g.TokenHash, Revision: kve.Revision()})
	if err != nil {
		r.cache.abandon(key, fill)
		return Entry{}, err
	}
	e.TokenHash = de.TokenHash
	r.cache.fill(key, fill, e, true)
	return e, nil
}

// AuthenticateGateway checks a gateway token. Errors: [ErrInvalidGateway]
// for an id that breaks the rules, [ErrNotFound] for an unknown gateway and
// [ErrBadToken] for a wrong or missing token (callers answer both 401, so
// that unauthenticated callers cannot tell which gateways exist),
// [ErrUnavailable]. The token is hashed on every path and compared in
// constant time; a known gateway costs no KV round trip once cached.
func (r *Registry) AuthenticateGateway(ctx context.Context, id, token string) error {
	if err := ValidateGatewayID(id); err != nil {
		return err
	}
	h := sha256.Sum256([]byte(token))
	e, err := r.lookupGateway(ctx, id)
	if err != nil {
		return err
	}
	if token == "" || subtle.ConstantTimeCompare(h[:], e.TokenHash[:]) != 1 {
		return ErrBadToken
	}
	return nil
}
