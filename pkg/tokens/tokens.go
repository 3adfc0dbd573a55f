package tokens

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/httpx"
)

// Bucket is the JetStream KV bucket of API tokens.
const Bucket = "devstatus_tokens"

// MaxNameBytes bounds a token's name.
const MaxNameBytes = 128

// Errors of [Store]'s methods.
var (
	// ErrInvalidConfig wraps configuration errors of [New].
	ErrInvalidConfig = errors.New("tokens: invalid config")
	// ErrInvalid: a name or role that breaks the rules (answered 400).
	ErrInvalid = errors.New("tokens: invalid token request")
	// ErrNotFound: no token has this id (404).
	ErrNotFound = errors.New("tokens: no such token")
	// ErrUnavailable: the bucket could not be read or written (503).
	ErrUnavailable = errors.New("tokens: token store unavailable")
)

// Token is a token's record as stored (JSON) and listed; the secret itself
// is never stored, only its SHA-256 (the bucket key).
type Token struct {
	// ID names the token in GET and DELETE /v1/tokens ("tok_" + 16 hex).
	ID string `json:"id"`
	// Name is the operator's label (1 to MaxNameBytes bytes of printable UTF-8).
	Name string `json:"name"`
	// Role is viewer or admin.
	Role httpx.Role `json:"role"`
	// CreatedAt is when it was created (UTC).
	CreatedAt time.Time `json:"created_at"`
}

// Config configures a [Store].
type Config struct {
	// JetStream to keep the bucket in. Required.
	JetStream jetstream.JetStream
	// Replicas of the bucket (the cluster's stream replica count). Default 1.
	Replicas int
	// AdminToken is the bootstrap admin token (--admin-token): always
	// admin, never stored, never listed. Empty: none.
	AdminToken string
	// Timeout bounds each bucket operation when the caller's context has no
	// deadline. Default 5s.
	Timeout time.Duration
	// Clock stamps CreatedAt. Default clock.NewMonotonic().
	Clock clock.Clock
	// Logger. Default slog.Default().
	Logger *slog.Logger
}

// Store creates, lists, deletes and checks API tokens. It is safe for
// concurrent use and keeps no state of its own besides the bucket handle.
type Store struct {
	cfg Config
	kv  jetstream.KeyValue
}

// New creates the bucket if it is missing and returns a Store. Errors wrap
// [ErrInvalidConfig], or are JetStream's.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.JetStream == nil {
		return nil, fmt.Errorf("%w: JetStream is required", ErrInvalidConfig)
	}
	if cfg.Replicas < 1 {
		cfg.Replicas = 1
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.NewMonotonic()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	kv, err := cfg.JetStream.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: Bucket, Description: "devstatus API tokens (key: SHA-256 of the token)", History: 1,
		Storage: jetstream.FileStorage, Replicas: cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("tokens: ensure bucket %s: %w", Bucket, err)
	}
	return &Store{cfg: cfg, kv: kv}, nil
}

func (s *Store) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.cfg.Timeout)
}

// hashKey is the bucket key of a secret: lowercase hex SHA-256.
func hashKey(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// ValidateName checks a token name: 1 to MaxNameBytes bytes of UTF-8
// without control characters. Errors wrap [ErrInvalid].
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: name is required", ErrInvalid)
	case len(name) > MaxNameBytes:
		return fmt.Errorf("%w: name is longer than %d bytes", ErrInvalid, MaxNameBytes)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: name is not valid UTF-8", ErrInvalid)
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: name contains a control character", ErrInvalid)
		}
	}
	return nil
}

// Create makes a token with name and role and returns its record and its
// secret ("dst_" + 256 random bits, unpadded base64url), which exists only
// in this answer. Errors: [ErrInvalid], [ErrUnavailable].
func (s *Store) Create(ctx context.Context, name string, role httpx.Role) (Token, string, error) {
	if err := ValidateName(name); err != nil {
		return Token{}, "", err
	}
	if role != httpx.RoleViewer && role != httpx.RoleAdmin {
		return Token{}, "", fmt.Errorf("%w: role must be %q or %q", ErrInvalid, httpx.RoleViewer, httpx.RoleAdmin)
	}
	var raw [32]byte
	var idb [8]byte
	_, _ = rand.Read(raw[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	_, _ = rand.Read(idb[:])
	secret := "dst_" + base64.RawURLEncoding.EncodeToString(raw[:])
	t := Token{ID: "tok_" + hex.EncodeToString(idb[:]), Name: name, Role: role, CreatedAt: s.cfg.Clock.Now().UTC().Truncate(time.Second)}
	v, err := json.Marshal(&t)
	if err != nil {
		return Token{}, "", fmt.Errorf("tokens: encode: %w", err)
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	if _, err := s.kv.Create(ctx, hashKey(secret), v); err != nil {
		return Token{}, "", fmt.Errorf("%w: create: %w", ErrUnavailable, err)
	}
	s.cfg.Logger.Info("api token created", slog.String("id", t.ID), slog.String("name", t.Name), slog.String("role", string(t.Role)))
	return t, secret, nil
}

// entries reads every stored token with its bucket key.
func (s *Store) entries(ctx context.Context) (map[string]Token, error) {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: list: %w", ErrUnavailable, err)
	}
	defer func() { _ = lister.Stop() }()
	out := map[string]Token{}
	for key := range lister.Keys() {
		e, err := s.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue // deleted since it was listed
		}
		if err != nil {
			return nil, fmt.Errorf("%w: get: %w", ErrUnavailable, err)
		}
		var t Token
		if err := json.Unmarshal(e.Value(), &t); err != nil {
			s.cfg.Logger.Error("tokens: corrupt entry skipped", slog.String("key", key), slog.Any("err", err))
			continue
		}
		out[key] = t
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: list: %w", ErrUnavailable, err)
	}
	return out, nil
}

// List returns every token (no secrets), oldest first, then by id. The
// bootstrap admin token is not among them. Errors: [ErrUnavailable].
func (s *Store) List(ctx context.Context) ([]Token, error) {
	m, err := s.entries(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Token, 0, len(m))
	for _, t := range m {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b Token) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// Delete removes the token with this id: it is refused by every instance
// from the moment Delete returns. Errors: [ErrNotFound], [ErrUnavailable].
func (s *Store) Delete(ctx context.Context, id string) error {
	m, err := s.entries(ctx)
	if err != nil {
		return err
	}
	for key, t := range m {
		if t.ID != id {
			continue
		}
		ctx, cancel := s.opCtx(ctx)
		defer cancel()
		if err := s.kv.Purge(ctx, key); err != nil {
			return fmt.Errorf("%w: delete: %w", ErrUnavailable, err)
		}
		s.cfg.Logger.Info("api token deleted", slog.String("id", t.ID), slog.String("name", t.Name))
		return nil
	}
	return ErrNotFound
}

// Authorize implements httpx.Authorizer: the bootstrap admin token is
// admin; any other token is looked up in the bucket by its hash on every
// call. Errors: httpx.ErrUnknownToken for an empty, unknown or deleted
// token; [ErrUnavailable] when the bucket cannot be read.
func (s *Store) Authorize(ctx context.Context, token string) (httpx.Role, error) {
	_, role, err := s.Identify(ctx, token)
	return role, err
}

// Identify is [Store.Authorize] that also returns the token's name ("admin"
// for the bootstrap admin token), for GET /v1/whoami.
func (s *Store) Identify(ctx context.Context, token string) (name string, role httpx.Role, err error) {
	if token == "" {
		return "", "", httpx.ErrUnknownToken
	}
	if s.cfg.AdminToken != "" && httpx.TokenEqual(token, s.cfg.AdminToken) {
		return "admin", httpx.RoleAdmin, nil
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	e, err := s.kv.Get(ctx, hashKey(token))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return "", "", httpx.ErrUnknownToken
	}
	if err != nil {
		return "", "", fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	var t Token
	if err := json.Unmarshal(e.Value(), &t); err != nil || (t.Role != httpx.RoleViewer && t.Role != httpx.RoleAdmin) {
		return "", "", httpx.ErrUnknownToken
	}
	return t.Name, t.Role, nil
}
