package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/clock"
)

// Sentinel errors. Callers branch on them with errors.Is.
var (
	// ErrInvalidConfig wraps every configuration error of [New].
	ErrInvalidConfig = errors.New("registry: invalid config")
	// ErrExists: Register for an id that is registered and not decommissioned.
	ErrExists = errors.New("registry: device already registered")
	// ErrNotFound: no device with that id was ever registered (or its
	// registration was rolled back).
	ErrNotFound = errors.New("registry: device not found")
	// ErrDecommissioned: the device was decommissioned; it can no longer
	// heartbeat or be changed, only re-registered.
	ErrDecommissioned = errors.New("registry: device is decommissioned")
	// ErrBadToken: the presented device token does not match.
	ErrBadToken = errors.New("registry: wrong device token")
	// ErrForeignToken: the presented token is the valid token of another
	// (registered, not decommissioned) device.
	ErrForeignToken = errors.New("registry: token of another device")
	// ErrUnavailable wraps every failure of the bus (disconnected, no
	// responders, timeouts, too much CAS contention): the caller should
	// retry later.
	ErrUnavailable = errors.New("registry: bus unavailable")
	// ErrInvalidGroup: the group is not printable UTF-8 of at most
	// [MaxGroupLen] bytes.
	ErrInvalidGroup = errors.New("registry: invalid group")
	// ErrInvalidGateway: the gateway id breaks the device-id rules.
	ErrInvalidGateway = errors.New("registry: invalid gateway id")
)

// MaxGroupLen is the longest group name in bytes.
const MaxGroupLen = 64

// TokenBytes is the number of random bytes in a device token (256 bits).
const TokenBytes = 32

// Actor is written into the Actor field of the administrative events the
// registry publishes.
const Actor = "admin"

// casAttempts bounds the compare-and-swap retries of one change.
const casAttempts = 16

// InvalidIDError reports a device id refused by [events.ValidateDeviceID].
// It unwraps to the *events.DeviceIDError (and so to its ErrDeviceID…
// sentinel).
type InvalidIDError struct {
	ID  string
	Err error
}

func (e *InvalidIDError) Error() string { return "registry: invalid device id: " + e.Err.Error() }
func (e *InvalidIDError) Unwrap() error { return e.Err }

// Device is a device's registration as stored in the KV bucket (JSON), plus
// the KV revision it was read at.
type Device struct {
	ID      string `json:"id"`
	Group   string `json:"group,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	// TokenHash is the lowercase hex SHA-256 of the device token. Tokens are
	// 256-bit random values, so a fast hash is the right choice: guessing a
	// preimage is as hard as guessing the token, and a slow password hash
	// (bcrypt, argon2) would cost tens of milliseconds of CPU per heartbeat,
	// which the ingest rate (tens of thousands per second) cannot pay.
	TokenHash            string `json:"token_hash"`
	RemoteControlEnabled bool   `json:"remote_control_enabled"`
	// RemoteControlEventID is the id of the last remote_control_changed
	// event; repeating an unchanged setting re-publishes it (deduplicated).
	RemoteControlEventID string `json:"remote_control_event_id,omitempty"`
	// PendingReconnect is set by an operator's reconnect request
	// (RequestReconnect) and cleared by the heartbeat that delivers it (the
	// bridge decides which, by compare-and-swap: see Swap).
	PendingReconnect bool `json:"pending_reconnect"`
	// ReconnectRequestID is the event id of the pending (or last) reconnect request.
	ReconnectRequestID string `json:"reconnect_request_id,omitempty"`
	// ComebackSeq is the transitions-stream sequence of the last offline
	// transition (to temporarily_offline or disconnected) whose comeback was
	// signalled to the device (should_reconnect), by whichever bridge
	// instance won the compare-and-swap that raised it.
	ComebackSeq uint64 `json:"comeback_seq,omitempty"`
	// Unlogged lists reconnect deliveries already told to the device whose
	// reconnect_delivered event could not be published; the bridge that
	// next settles one of the device's heartbeats publishes them again (same
	// event id) and removes them.
	Unlogged     []Delivery `json:"unlogged,omitempty"`
	RegisteredAt time.Time  `json:"registered_at"`
	// RegisteredEventID is the id of the device_registered event.
	RegisteredEventID string     `json:"registered_event_id,omitempty"`
	Decommissioned    bool       `json:"decommissioned"`
	DecommissionedAt  *time.Time `json:"decommissioned_at,omitempty"`
	// DecommissionEventID is the id of the device_decommissioned event; a
	// repeated decommission re-publishes it (deduplicated).
	DecommissionEventID string `json:"decommission_event_id,omitempty"`
	// ProbeURL is where the ping service probes the device ("" = not
	// probed): set at registration, by PATCH or in a heartbeat, checked by
	// the bridge against its probe policy.
	ProbeURL string `json:"probe_url,omitempty"`

	// Revision is the KV revision the device was read at (not stored).
	Revision uint64 `json:"-"`
}

// Config configures [New].
type Config struct {
	// Bus is the open bus; its Devices bucket, JetStream context and
	// partition count are used. Required.
	Bus *bus.Bus
	// Clock stamps the administrative events. Default clock.NewMonotonic().
	Clock clock.Clock
	// Logger. Default slog.Default().
	Logger *slog.Logger
	// CacheSize bounds the hot-path cache, in devices (one entry is ~150
	// bytes). Default 1 000 000; negative is invalid.
	CacheSize int
	// OpTimeout bounds one KV operation or publish when the caller's context
	// has no deadline. Default 5s.
	OpTimeout time.Duration
	// WatchCheckInterval: a watch that has changes pending but delivers none
	// for two of these intervals is judged stalled and re-created. Default 5s.
	WatchCheckInterval time.Duration
}

func (c *Config) setDefaults() {
	if c.Clock == nil {
		c.Clock = clock.NewMonotonic()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.CacheSize == 0 {
		c.CacheSize = 1_000_000
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = 5 * time.Second
	}
	if c.WatchCheckInterval == 0 {
		c.WatchCheckInterval = 5 * time.Second
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.Bus == nil || c.Bus.JS == nil || c.Bus.Devices == nil {
		errs = append(errs, errors.New("missing Bus (with JS and Devices)"))
	}
	if c.CacheSize < 0 {
		errs = append(errs, fmt.Errorf("CacheSize must be >= 0, got %d", c.CacheSize))
	}
	if c.OpTimeout < 0 {
		errs = append(errs, fmt.Errorf("OpTimeout must be > 0, got %s", c.OpTimeout))
	}
	if c.WatchCheckInterval < 0 {
		errs = append(errs, fmt.Errorf("WatchCheckInterval must be > 0, got %s", c.WatchCheckInterval))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Registry reads and changes device registrations. Safe for concurrent use.
type Registry struct {
	cfg     Config
	kv      jetstream.KeyValue
	js      jetstream.JetStream
	nc      *nats.Conn
	parts   int
	log     *slog.Logger
	cache   *cache
	running atomic.Bool
	watchOK atomic.Bool
	watch   *bus.Follower // the devices bucket's changes (Run)
}

// New returns a registry over cfg.Bus. Errors wrap [ErrInvalidConfig].
func New(cfg Config) (*Registry, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &Registry{
		cfg:   cfg,
		kv:    cfg.Bus.Devices,
		js:    cfg.Bus.JS,
		nc:    cfg.Bus.NC,
		parts: cfg.Bus.Partitions(),
		log:   cfg.Logger,
		cache: newCache(cfg.CacheSize),
	}
	w, err := r.newWatch()
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	r.watch = w
	return r, nil
}

// HashToken returns the stored form of a device token: lowercase hex SHA-256.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// ValidateGroup checks a group name: valid UTF-8, printable characters (the
// ASCII space included), at most [MaxGroupLen] bytes; empty means no group.
// Errors wrap [ErrInvalidGroup].
func ValidateGroup(g string) error {
	if len(g) > MaxGroupLen {
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidGroup, MaxGroupLen)
	}
	if !utf8.ValidString(g) {
		return fmt.Errorf("%w: not valid UTF-8", ErrInvalidGroup)
	}
	for i, r := range g {
		if r != ' ' && !unicode.IsPrint(r) {
			return fmt.Errorf("%w: non-printable character at byte %d", ErrInvalidGroup, i)
		}
	}
	return nil
}

func validateID(id string) error {
	if err := events.ValidateDeviceID(id); err != nil {
		return &InvalidIDError{ID: id, Err: err}
	}
	return nil
}

func newToken() (string, error) {
	var b [TokenBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("registry: token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func newEventID(prefix string) string { return prefix + "-" + nuid.Next() }

// newTokenOp begins an operation that stores a new token: it checks that the
// bucket is reachable, draws the token (256 random bits, unpadded base64url)
// and returns ctx with the default deadline applied (cancel releases it).
// Errors: [ErrUnavailable], or the random source's.
func (r *Registry) newTokenOp(ctx context.Context) (context.Context, context.CancelFunc, string, error) {
	if err := r.connected(); err != nil {
		return ctx, nil, "", err
	}
	token, err := newToken()
	if err != nil {
		return ctx, nil, "", err
	}
	ctx, cancel := r.opCtx(ctx)
	return ctx, cancel, token, nil
}

// opCtx applies the default deadline when ctx has none.
func (r *Registry) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, r.cfg.OpTimeout)
}

// unavailable classifies a bus error: context cancellation by the caller is
// returned as is; every other failure wraps ErrUnavailable (nats.ErrTimeout,
// nats.ErrNoResponders, jetstream.ErrNoStreamResponse, a closed or
// reconnecting connection, deadline exceeded …).
func unavailable(op string, err error) error {
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("registry: %s: %w", op, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}

// errDisconnected is wrapped in ErrUnavailable when NATS is not connected:
// the registry then fails at once instead of waiting for its deadline.
var errDisconnected = errors.New("NATS is not connected")

func (r *Registry) connected() error {
	if r.nc != nil && !r.nc.IsConnected() {
		return fmt.Errorf("%w: %w", ErrUnavailable, errDisconnected)
	}
	return nil
}

// get reads a device straight from KV (no cache).
func (r *Registry) get(ctx context.Context, key string) (Device, error) {
	if err := r.connected(); err != nil {
		return Device{}, err
	}
	e, err := r.kv.Get(ctx, key)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			return Device{}, ErrNotFound
		}
		return Device{}, unavailable("get", err)
	}
	var d Device
	if err := json.Unmarshal(e.Value(), &d); err != nil {
		return Device{}, fmt.Errorf("registry: corrupt entry %q at revision %d: %w", key, e.Revision(), err)
	}
	d.Revision = e.Revision()
	return d, nil
}

// Get returns the device's registration read from KV (not the cache).
// Errors: *[InvalidIDError], [ErrNotFound], [ErrUnavailable]. A decommissioned
// device is returned with Decommissioned set and no error.
func (r *Registry) Get(ctx context.Context, id string) (Device, error) {
	if err := validateID(id); err != nil {
		return Device{}, err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	return r.get(ctx, events.SubjectToken(id))
}

// publish sends an input event for its device and waits for the PubAck.
func (r *Registry) publish(ctx context.Context, in *events.Input) error {
	if err := r.connected(); err != nil {
		return err
	}
	if _, err := (bus.InputPublisher{JS: r.js, Partitions: r.parts}).Publish(ctx, in, ""); err != nil {
		return unavailable("publish "+string(in.Type), err)
	}
	return nil
}

func (r *Registry) event(t events.Type, id, eventID string) *events.Input {
	return &events.Input{Type: t, ID: eventID, Device: id, At: r.cfg.Clock.Now().UTC(), Actor: Actor}
}

// update writes d with a revision check and brings this process's cached
// entry up to it at once: a cached device takes the written value (it stays
// cached), a read in flight is held to this revision; a failed write drops
// the entry. Other instances learn the change from the watcher.
func (r *Registry) update(ctx context.Context, key string, d *Device) error {
	v, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("registry: encode: %w", err)
	}
	rev, err := r.kv.Update(ctx, key, v, d.Revision)
	if err != nil {
		r.cache.invalidate(key, 0)
		return err
	}
	d.Revision = rev
	if ent, err := entryOf(d); err == nil {
		r.cache.update(key, rev, ent)
	} else {
		r.cache.invalidate(key, 0)
	}
	return nil
}

// Register adds a device and returns its token (256 random bits, unpadded
// base64url), shown once: only its SHA-256 is stored. It publishes a
// device_registered event and returns after its PubAck.
//
// A decommissioned device may be registered again under the same id: it gets
// a new token, remote control off, no pending reconnect, a new RegisteredAt,
// and a new device_registered event (its history of transitions stays).
//
// If the event cannot be published the KV write is rolled back (the entry is
// deleted, or the decommissioned entry restored) and the error wraps
// [ErrUnavailable]. Should the rollback itself fail (the bus died in between)
// the entry stays without its event: nobody holds its token, and an operator
// can decommission and register it again; this is logged.
//
// Errors: *[InvalidIDError], [ErrInvalidGroup], [ErrInvalidGateway],
// [ErrExists], [ErrUnavailable].
func (r *Registry) Register(ctx context.Context, id, group, gateway string, opts ...RegisterOption) (string, error) {
	if err := validateID(id); err != nil {
		return "", err
	}
	if err := ValidateGroup(group); err != nil {
		return "", err
	}
	if gateway != "" {
		if err := events.ValidateDeviceID(gateway); err != nil {
			return "", fmt.Errorf("%w: %w", ErrInvalidGateway, err)
		}
	}
	ctx, cancel, token, err := r.newTokenOp(ctx)
	if err != nil {
		return "", err
	}
	defer cancel()
	key := events.SubjectToken(id)
	now := r.cfg.Clock.Now().UTC()
	d := Device{ID: id, Group: group, Gateway: gateway, TokenHash: HashToken(token),
		RegisteredAt: now, RegisteredEventID: newEventID("reg")}
	for _, o := range opts {
		o(&d)
	}
	v, err := json.Marshal(&d)
	if err != nil {
		return "", fmt.Errorf("registry: encode: %w", err)
	}
	var (
		rev      uint64
		previous *Device // the decommissioned entry a re-registration replaced
	)
	rev, err = r.kv.Create(ctx, key, v)
	switch {
	case err == nil:
	case errors.Is(err, jetstream.ErrKeyExists):
		old, gerr := r.get(ctx, key)
		if gerr != nil {
			if errors.Is(gerr, ErrNotFound) { // deleted in between: let the caller retry
				return "", fmt.Errorf("%w: concurrent change of %q", ErrUnavailable, id)
			}
			return "", gerr
		}
		if !old.Decommissioned {
			return "", ErrExists
		}
		rev, err = r.kv.Update(ctx, key, v, old.Revision)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return "", ErrExists // someone else re-registered it first
		}
		if err != nil {
			return "", unavailable("re-register", err)
		}
		previous = &old
	default:
		return "", unavailable("create", err)
	}
	r.cache.invalidate(key, 0)

	in := r.event(events.TypeDeviceRegistered, id, d.RegisteredEventID)
	in.At = now
	in.Registered = &events.Registered{Group: group, Gateway: gateway}
	if perr := r.publish(ctx, in); perr != nil {
		r.rollbackRegister(key, id, rev, previous)
		return "", perr
	}
	r.putTokenIndex(ctx, id, d.TokenHash)
	if previous != nil {
		r.deleteTokenIndex(ctx, previous.TokenHash)
	}
	return token, nil
}

// rollbackRegister undoes the KV write of a Register whose event failed.
func (r *Registry) rollbackRegister(key, id string, rev uint64, previous *Device) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.OpTimeout)
	defer cancel()
	var err error
	if previous == nil {
		err = r.kv.Delete(ctx, key, jetstream.LastRevision(rev))
	} else {
		p := *previous
		p.Revision = rev
		err = r.update(ctx, key, &p)
	}
	r.cache.invalidate(key, 0)
	if err != nil {
		r.log.Error("registry: rollback of a registration whose event failed did not succeed; decommission and register the device again",
			slog.String("device", id), slog.Any("err", err))
	}
}

// mutate runs a read-modify-CAS-write loop on one device. change edits d and
// returns the event to publish (nil: nothing to write or publish) and whether
// the KV entry must be written; it may return an error to stop.
func (r *Registry) mutate(ctx context.Context, id string, change func(d *Device) (ev *events.Input, write bool, err error)) (Device, error) {
	if err := validateID(id); err != nil {
		return Device{}, err
	}
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	key := events.SubjectToken(id)
	for attempt := 0; attempt < casAttempts; attempt++ {
		d, err := r.get(ctx, key)
		if err != nil {
			return Device{}, err
		}
		ev, write, err := change(&d)
		if err != nil {
			return d, err
		}
		if write {
			err := r.update(ctx, key, &d)
			if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
				continue
			}
			if err != nil {
				return Device{}, unavailable("update", err)
			}
		}
		if ev != nil {
			if err := r.publish(ctx, ev); err != nil {
				return d, err
			}
		}
		return d, nil
	}
	return Device{}, fmt.Errorf("%w: %d concurrent changes of %q in a row", ErrUnavailable, casAttempts, id)
}

// Swap changes a device's record by compare-and-swap, publishing nothing:
// it reads the entry from KV, calls change on it and, when change returns
// write, writes the changed record guarded by the revision it read. When
// another writer came first it reads again and calls change again (change
// must therefore decide from d alone; it may run up to 16 times), so a
// change that several bridge instances race for is won by exactly one. The
// writer's own cache takes the written record at once; other instances'
// caches learn it from their watch. It returns the record as written, or as
// read when change wrote nothing.
//
// Errors: *[InvalidIDError], [ErrNotFound], [ErrUnavailable] (bus failures
// and too much contention), or change's own error, returned with the record
// as read.
func (r *Registry) Swap(ctx context.Context, id string, change func(d *Device) (write bool, err error)) (Device, error) {
	return r.mutate(ctx, id, func(d *Device) (*events.Input, bool, error) {
		write, err := change(d)
		return nil, write, err
	})
}

// Decommission marks the device decommissioned (its token stops working, its
// pending reconnect is dropped) and publishes device_decommissioned.
// Decommissioning a decommissioned device re-publishes the same event id
// (JetStream deduplicates it within its window), so a retry after a failed
// publish completes the job. Errors: *[InvalidIDError], [ErrNotFound],
// [ErrUnavailable].
func (r *Registry) Decommission(ctx context.Context, id string) error {
	_, err := r.mutate(ctx, id, func(d *Device) (*events.Input, bool, error) {
		write := false
		if !d.Decommissioned {
			now := r.cfg.Clock.Now().UTC()
			d.Decommissioned, d.DecommissionedAt = true, &now
			d.DecommissionEventID = newEventID("dec")
			d.PendingReconnect = false
			write = true
		}
		if d.DecommissionEventID == "" {
			d.DecommissionEventID = newEventID("dec")
			write = true
		}
		ev := r.event(events.TypeDeviceDecommissioned, id, d.DecommissionEventID)
		if d.DecommissionedAt != nil {
			ev.At = *d.DecommissionedAt
		}
		return ev, write, nil
	})
	return err
}

// SetRemoteControl sets the device's remote-control flag and publishes
// remote_control_changed. Setting the value it already has writes nothing and
// re-publishes the last event id (deduplicated), so a retry is harmless.
// Errors: *[InvalidIDError], [ErrNotFound], [ErrDecommissioned],
// [ErrUnavailable].
func (r *Registry) SetRemoteControl(ctx context.Context, id string, enabled bool) (Device, error) {
	return r.mutate(ctx, id, func(d *Device) (*events.Input, bool, error) {
		if d.Decommissioned {
			return nil, false, ErrDecommissioned
		}
		write := false
		if d.RemoteControlEnabled != enabled || d.RemoteControlEventID == "" {
			d.RemoteControlEnabled = enabled
			d.RemoteControlEventID = newEventID("rc")
			write = true
		}
		ev := r.event(events.TypeRemoteControlChanged, id, d.RemoteControlEventID)
		ev.RemoteControl = &events.RemoteControl{Enabled: enabled}
		return ev, write, nil
	})
}

// RequestReconnect records an operator's reconnect request (PendingReconnect,
// CAS) and publishes reconnect_requested; the device's next heartbeat is told
// should_reconnect=true once. A request while one is pending re-publishes the
// pending request's event id (deduplicated) and returns its id. Errors:
// *[InvalidIDError], [ErrNotFound], [ErrDecommissioned], [ErrUnavailable].
func (r *Registry) RequestReconnect(ctx context.Context, id string) (requestID string, err error) {
	d, err := r.mutate(ctx, id, func(d *Device) (*events.Input, bool, error) {
		if d.Decommissioned {
			return nil, false, ErrDecommissioned
		}
		write := false
		if !d.PendingReconnect {
			d.PendingReconnect = true
			d.ReconnectRequestID = newEventID("rr")
			write = true
		}
		return r.event(events.TypeReconnectRequested, id, d.ReconnectRequestID), write, nil
	})
	if err != nil {
		return "", err
	}
	return d.ReconnectRequestID, nil
}

// Entry is the cached hot-path view of a device.
type Entry struct {
	Group                string
	TokenHash            [sha256.Size]byte
	RemoteControlEnabled bool
	PendingReconnect     bool
	Decommissioned       bool
	// ProbeURL is Device.ProbeURL.
	ProbeURL string
	// ComebackSeq is Device.ComebackSeq.
	ComebackSeq uint64
	// Unlogged: Device.Unlogged is not empty.
	Unlogged bool
	// Revision is the KV revision the entry was read at.
	Revision uint64
	// Gateway is Device.Gateway: the gateway whose batches may carry this
	// device's heartbeats ("" = none).
	Gateway string
}

func entryOf(d *Device) (Entry, error) {
	e := Entry{Group: d.Group, RemoteControlEnabled: d.RemoteControlEnabled,
		PendingReconnect: d.PendingReconnect, Decommissioned: d.Decommissioned, ProbeURL: d.ProbeURL,
		ComebackSeq: d.ComebackSeq, Unlogged: len(d.Unlogged) > 0, Revision: d.Revision, Gateway: d.Gateway}
	h, err := hex.DecodeString(d.TokenHash)
	if err != nil || len(h) != sha256.Size {
		return Entry{}, fmt.Errorf("registry: device %q has a malformed token hash", d.ID)
	}
	copy(e.TokenHash[:], h)
	return e, nil
}

// Lookup returns the hot-path view of a device, from the cache when it holds
// the key, else from KV (filling the cache, negative answers included).
// Errors: *[InvalidIDError], [ErrNotFound], [ErrUnavailable]. A
// decommissioned device is returned with no error.
func (r *Registry) Lookup(ctx context.Context, id string) (Entry, error) {
	if err := validateID(id); err != nil {
		return Entry{}, err
	}
	key := events.SubjectToken(id)
	if e, found, ok := r.cache.get(key); ok {
		if !found {
			return Entry{}, ErrNotFound
		}
		return e, nil
	}
	fill := r.cache.reserve(key)
	ctx, cancel := r.opCtx(ctx)
	defer cancel()
	d, err := r.get(ctx, key)
	switch {
	case errors.Is(err, ErrNotFound):
		r.cache.fill(key, fill, Entry{}, false)
		return Entry{}, ErrNotFound
	case err != nil:
		r.cache.abandon(key, fill)
		return Entry{}, err
	}
	e, err := entryOf(&d)
	if err != nil {
		r.cache.abandon(key, fill)
		return Entry{}, err
	}
	r.cache.fill(key, fill, e, true)
	return e, nil
}

// Prefetch reads into the cache the entries of the ids it does not hold, up
// to parallel reads at a time, so that a batch of devices not looked up
// recently (a gateway's first batch, devices evicted from a full cache) costs
// about one KV round trip per parallel read rather than one per device when
// the caller then looks them up in order. It returns when the reads are
// done. It does nothing while the cache is off (no watch: nothing could be
// kept); invalid ids and failed reads are skipped (the caller's own Lookup
// answers them).
func (r *Registry) Prefetch(ctx context.Context, ids []string, parallel int) {
	var miss []string
	for _, id := range ids {
		if validateID(id) == nil && !r.cache.has(events.SubjectToken(id)) {
			miss = append(miss, id)
		}
	}
	if len(miss) < 2 || parallel < 2 {
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(parallel, len(miss)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(miss) || ctx.Err() != nil {
					return
				}
				_, _ = r.Lookup(ctx, miss[i])
			}
		})
	}
	wg.Wait()
}

// CacheStats counts cache activity since New.
type CacheStats struct {
	// Hits and Misses count Lookup calls answered from the cache or from KV.
	Hits, Misses uint64
	// Invalidations counts cached keys dropped because their KV entry changed.
	Invalidations uint64
	// Refreshes counts cached entries replaced by the new value the watch
	// delivered (a change that left the device registered).
	Refreshes uint64
	// Flushes counts whole-cache resets after a lost NATS connection.
	Flushes uint64
	// Entries is the number of keys cached now.
	Entries int
	// WatchedRevision is the last KV revision (bucket stream sequence) whose
	// change the watch has applied to the cache: a change written at
	// revision n has reached this instance's cache once WatchedRevision >= n.
	WatchedRevision uint64
	// WatchStalls counts watches dropped because they stalled while connected.
	WatchStalls uint64
}

// CacheStats returns the cache counters (for metrics).
func (r *Registry) CacheStats() CacheStats {
	st := r.cache.stats()
	st.WatchStalls = r.watch.Stalls()
	return st
}

// WatchCollectors returns the Prometheus collectors of the devices-bucket
// watch ([bus.Follower.Collectors], follower="registry-watch").
func (r *Registry) WatchCollectors() []prometheus.Collector { return r.watch.Collectors() }

// Delivery is one should_reconnect told to a device whose
// reconnect_delivered event is still to be published (Device.Unlogged).
type Delivery struct {
	// EventID is the reconnect_delivered event's id (and Nats-Msg-Id).
	EventID string `json:"event_id"`
	// At is when it was told: the event's time.
	At time.Time `json:"at"`
}

// MaxProbeURLLen bounds a stored probe URL, in bytes (the probe policy's
// limit, probepolicy.MaxURLLen).
const MaxProbeURLLen = 2048

// ErrInvalidProbeURL is returned for a probe URL longer than
// [MaxProbeURLLen]. The registry does not apply the probe policy: callers
// (the bridge) check URLs with probepolicy.Policy.CheckURL and store the
// normalised form.
var ErrInvalidProbeURL = errors.New("registry: invalid probe URL")

// RegisterOption sets an optional field of a device at [Registry.Register].
type RegisterOption func(*Device)

// WithProbeURL registers the device with a probe URL (already checked
// against the probe policy by the caller; "" means none).
func WithProbeURL(u string) RegisterOption {
	return func(d *Device) { d.ProbeURL = u }
}

// SetProbeURL sets (or, with "", clears) the device's probe URL. Setting the
// URL it already has writes nothing. The change is a revision-checked KV
// write; no input event is published (probe URLs are read by the ping
// service from the registry, not by the state machine). Errors:
// *[InvalidIDError], [ErrInvalidProbeURL], [ErrNotFound],
// [ErrDecommissioned], [ErrUnavailable].
func (r *Registry) SetProbeURL(ctx context.Context, id, probeURL string) (Device, error) {
	if len(probeURL) > MaxProbeURLLen {
		return Device{}, fmt.Errorf("%w: longer than %d bytes", ErrInvalidProbeURL, MaxProbeURLLen)
	}
	return r.Swap(ctx, id, func(d *Device) (bool, error) {
		if d.Decommissioned {
			return false, ErrDecommissioned
		}
		if d.ProbeURL == probeURL {
			return false, nil
		}
		d.ProbeURL = probeURL
		return true, nil
	})
}
