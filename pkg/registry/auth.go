package registry

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
)

// Token index: besides the device entries (keys = events.SubjectToken(id),
// which never contain a '.'), the devices bucket holds one key per device
// token, "tok.<hex SHA-256 of the token>", whose value is the device id. It
// only serves to tell a token of another device (ErrForeignToken) from a
// wrong token (ErrBadToken) when a token does not match the device it is
// presented for; the device entry stays the only authority (an index hit
// counts only if that device's entry holds the same hash and is not
// decommissioned), so a stale or missing index key can only turn an
// ErrForeignToken into an ErrBadToken, never let a token in.
const tokenIndexPrefix = "tok."

func tokenIndexKey(hash string) string { return tokenIndexPrefix + hash }

// putTokenIndex records that the token with this hash is id's. Best effort:
// a failure only costs the ErrForeignToken distinction for that token (logged).
func (r *Registry) putTokenIndex(ctx context.Context, id, hash string) {
	ctx, cancel := r.opCtx(context.WithoutCancel(ctx))
	defer cancel()
	if _, err := r.kv.Put(ctx, tokenIndexKey(hash), []byte(id)); err != nil {
		r.log.Warn("registry: token index not written (a foreign use of this token is reported as a wrong token)",
			slog.String("device", id), slog.Any("err", err))
	}
}

// deleteTokenIndex removes a retired token's index key. Best effort: a key
// left behind points at a device whose entry no longer holds that hash, and
// is ignored.
func (r *Registry) deleteTokenIndex(ctx context.Context, hash string) {
	ctx, cancel := r.opCtx(context.WithoutCancel(ctx))
	defer cancel()
	if err := r.kv.Purge(ctx, tokenIndexKey(hash)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		r.log.Warn("registry: retired token index key not removed", slog.Any("err", err))
	}
}

// tokenOwner returns the id of the registered, not decommissioned device
// whose current token has hash h ("" when none).
func (r *Registry) tokenOwner(ctx context.Context, h [sha256.Size]byte) (string, error) {
	if err := r.connected(); err != nil {
		return "", err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	e, err := r.kv.Get(ctx, tokenIndexKey(hex.EncodeToString(h[:])))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return "", nil
	}
	if err != nil {
		return "", unavailable("token index", err)
	}
	owner := string(e.Value())
	if validateID(owner) != nil {
		return "", nil
	}
	oe, err := r.Lookup(ctx, owner)
	if errors.Is(err, ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if oe.Decommissioned || subtle.ConstantTimeCompare(h[:], oe.TokenHash[:]) != 1 {
		return "", nil
	}
	return owner, nil
}

// Authenticate checks a device token against the registry (through the
// cache). Results:
//   - the device's own token: its entry, nil;
//   - its own token, device decommissioned: the entry, [ErrDecommissioned];
//   - the valid token of another device, whether id exists or not:
//     [ErrForeignToken] (the same for an existing and an unknown id, so the
//     caller learns nothing about which ids exist);
//   - no token or any other token: [ErrNotFound] for an unknown id,
//     [ErrBadToken] for a known one (callers should treat both alike, so
//     that unauthenticated callers cannot tell which ids exist);
//   - *[InvalidIDError], [ErrUnavailable].
//
// The token is hashed on every path and compared in constant time. The
// matching path costs no KV round trip once the entry is cached; a
// mismatching token costs one KV read of the token index (never cached, so
// that random tokens cannot flood the cache).
func (r *Registry) Authenticate(ctx context.Context, id, token string) (Entry, error) {
	h := sha256.Sum256([]byte(token))
	e, err := r.Lookup(ctx, id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Entry{}, err
	}
	if err == nil && token != "" && subtle.ConstantTimeCompare(h[:], e.TokenHash[:]) == 1 {
		if e.Decommissioned {
			return e, ErrDecommissioned
		}
		return e, nil
	}
	if token != "" {
		owner, oerr := r.tokenOwner(ctx, h)
		if oerr != nil {
			return Entry{}, oerr
		}
		if owner != "" && owner != id {
			return Entry{}, ErrForeignToken
		}
	}
	if err != nil {
		return Entry{}, err // ErrNotFound
	}
	return Entry{}, ErrBadToken
}

// Rekey gives the device a new token (256 random bits, shown once: only its
// SHA-256 is stored) and returns it. The old token stops working at once on
// this instance (its cached entry is dropped with the write) and, on other
// bridge instances, as soon as their KV watch delivers the change
// (milliseconds); no other device's cached entry is touched. Errors:
// *[InvalidIDError], [ErrNotFound], [ErrDecommissioned], [ErrUnavailable].
//
// No input event is published: a token is not part of the device's state
// that the workers and projections follow (the events package has no type
// for it); the KV entry's history is the record.
func (r *Registry) Rekey(ctx context.Context, id string) (string, error) {
	token, err := newToken()
	if err != nil {
		return "", err
	}
	hash := HashToken(token)
	var old string
	_, err = r.mutate(ctx, id, func(d *Device) (*events.Input, bool, error) {
		if d.Decommissioned {
			return nil, false, ErrDecommissioned
		}
		old, d.TokenHash = d.TokenHash, hash
		return nil, true, nil
	})
	if err != nil {
		return "", err
	}
	r.putTokenIndex(ctx, id, hash)
	r.deleteTokenIndex(ctx, old)
	return token, nil
}

// Gateways: a gateway reports the heartbeats of the devices registered
// behind it (Device.Gateway) in batches, with its own token. Gateways live
// in the devices bucket under "gw.<events.SubjectToken(id)>" (device keys
// never contain a '.'), so the registry's KV watch invalidates their cached
// entries like the devices'; look-ups go through the same bounded cache.

// ErrGatewayExists is returned by RegisterGateway for an id that is registered.
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
	ctx, cancel, token, err := r.newTokenOp(ctx)
	if err != nil {
		return "", err
	}
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
// [ErrBadToken] for a wrong or missing token (callers should treat both
// alike, so that unauthenticated callers cannot tell which gateways exist),
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
