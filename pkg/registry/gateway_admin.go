package registry

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
)

// Gateway administration: list, re-key and remove (GET /v1/gateways,
// POST /v1/gateways/{id}/token, DELETE /v1/gateways/{id}). Every change
// goes through the devices bucket, so the registry's KV watch drops the
// gateway's cached entry on every instance.

// ListGateways returns every registered gateway (token hashes blanked),
// ordered by id. It reads the whole "gw." key range: meant for an operator's
// listing of tens to thousands of gateways, not for a hot path. Errors:
// [ErrUnavailable].
func (r *Registry) ListGateways(ctx context.Context) ([]Gateway, error) {
	if err := r.connected(); err != nil {
		return nil, err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	lister, err := r.kv.ListKeysFiltered(ctx, gatewayKeyPrefix+">")
	if err != nil {
		return nil, unavailable("list gateways", err)
	}
	defer func() { _ = lister.Stop() }()
	out := []Gateway{}
	for key := range lister.Keys() {
		e, err := r.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue
		}
		if err != nil {
			return nil, unavailable("get gateway", err)
		}
		var g Gateway
		if err := json.Unmarshal(e.Value(), &g); err != nil {
			return nil, fmt.Errorf("registry: corrupt gateway entry %q at revision %d", key, e.Revision())
		}
		g.TokenHash = ""
		out = append(out, g)
	}
	if err := ctx.Err(); err != nil {
		return nil, unavailable("list gateways", err)
	}
	slices.SortFunc(out, func(a, b Gateway) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// RekeyGateway gives a gateway a new token (shown once, only its SHA-256
// stored) with a compare-and-swap on its entry; the old token is refused
// from then on (on other instances once their KV watch delivers the change:
// milliseconds). Errors: [ErrInvalidGateway], [ErrNotFound],
// [ErrUnavailable].
func (r *Registry) RekeyGateway(ctx context.Context, id string) (string, error) {
	if err := ValidateGatewayID(id); err != nil {
		return "", err
	}
	ctx, cancel, token, err := r.newTokenOp(ctx)
	if err != nil {
		return "", err
	}
	defer cancel()
	key := gatewayKey(id)
	for range 8 { // retried only when another writer changed the entry in between
		e, err := r.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			return "", ErrNotFound
		}
		if err != nil {
			return "", unavailable("get gateway", err)
		}
		var g Gateway
		if err := json.Unmarshal(e.Value(), &g); err != nil {
			return "", fmt.Errorf("registry: corrupt gateway entry %q at revision %d", key, e.Revision())
		}
		g.TokenHash = HashToken(token)
		v, err := json.Marshal(&g)
		if err != nil {
			return "", fmt.Errorf("registry: encode: %w", err)
		}
		_, err = r.kv.Update(ctx, key, v, e.Revision())
		r.cache.invalidate(key, 0)
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			continue
		}
		if err != nil {
			return "", unavailable("update gateway", err)
		}
		return token, nil
	}
	return "", unavailable("update gateway", errors.New("too many concurrent changes"))
}

// DeleteGateway removes a gateway: its token is refused from then on, and
// batches naming it are answered 401. The devices registered behind it stay
// registered (their own heartbeat endpoint still works; registering a
// gateway with the same id again lets them report through it). Errors:
// [ErrInvalidGateway], [ErrNotFound], [ErrUnavailable].
func (r *Registry) DeleteGateway(ctx context.Context, id string) error {
	if err := ValidateGatewayID(id); err != nil {
		return err
	}
	if err := r.connected(); err != nil {
		return err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	key := gatewayKey(id)
	e, err := r.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return ErrNotFound
	}
	if err != nil {
		return unavailable("get gateway", err)
	}
	err = r.kv.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
	r.cache.invalidate(key, 0)
	if err != nil {
		return unavailable("delete gateway", err)
	}
	return nil
}
