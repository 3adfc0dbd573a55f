// Package bus connects devstatus to NATS JetStream: it starts the embedded
// server when no URL is given, connects, and creates (idempotently) the
// streams, KV buckets and object store that the other parts use, with the
// names of package events.
//
// It owns no devstatus logic: it must not decode events or hold device state.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
)

// ErrInvalidConfig wraps every configuration error of [Open].
var ErrInvalidConfig = errors.New("bus: invalid config")

// Config configures [Open].
type Config struct {
	// URL of an external NATS server (comma-separated for a cluster). Empty:
	// start an embedded JetStream server storing in DataDir.
	URL string
	// DataDir is where the embedded server keeps its file store
	// (DataDir/jetstream). Default "./data".
	DataDir string
	// ListenAddr is the host:port the embedded server also listens on for
	// other processes (devicesim, the nats CLI). Empty: in-process only.
	// "127.0.0.1:-1" picks a free port.
	ListenAddr string
	// ListenToken, when set, is required from every client of the embedded
	// server (nats://<token>@host:port): the input stream is trusted input,
	// so the listener must not be open to any local user. The in-process
	// connection uses it too. Empty: no authentication (tests).
	ListenToken string
	// SyncAlways makes the embedded server fsync before every PubAck
	// (--sync always). Default false: the server's periodic fsync.
	SyncAlways bool
	// Partitions is the input partition count used when the input stream is
	// first created. An existing stream keeps the count recorded in its
	// metadata; [Bus.Partitions] reports the count in force. Default 16.
	Partitions int
	// Replicas of every stream and bucket (1, or 3 on a cluster). Default 1.
	Replicas int
	// InputMaxAge bounds how long input events are kept (worker replay,
	// projection catch-up and rebuild need them). Default 7 days. A changed
	// value is applied to the existing stream at [Open] (a shorter one
	// deletes the older events at once).
	InputMaxAge time.Duration
	// TransitionMaxAge bounds how long transitions are kept; 0 keeps them
	// forever. The age limit removes a device's last transition too (its
	// current status in the stream), however quiet the device. Applied to
	// the existing stream at [Open] like InputMaxAge.
	TransitionMaxAge time.Duration
	// LeaseTTL is how long a partition lease lives without renewal. Default 10s.
	LeaseTTL time.Duration
	// Name is the client connection name. Default "devstatus".
	Name string
	// Logger receives connection events. Default slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.DataDir == "" {
		c.DataDir = "./data"
	}
	if c.Partitions == 0 {
		c.Partitions = 16
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.InputMaxAge == 0 {
		c.InputMaxAge = 7 * 24 * time.Hour
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 10 * time.Second
	}
	if c.Name == "" {
		c.Name = "devstatus"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.Partitions < 1 || c.Partitions > 1024 {
		errs = append(errs, fmt.Errorf("partitions must be in 1..1024, got %d", c.Partitions))
	}
	if c.Replicas != 1 && c.Replicas != 3 && c.Replicas != 5 {
		errs = append(errs, fmt.Errorf("replicas must be 1, 3 or 5, got %d", c.Replicas))
	}
	if c.InputMaxAge < 0 || c.TransitionMaxAge < 0 {
		errs = append(errs, fmt.Errorf("stream age limits must not be negative"))
	}
	if c.LeaseTTL < time.Second {
		errs = append(errs, fmt.Errorf("lease TTL must be at least 1s, got %s", c.LeaseTTL))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Bus is an open connection to JetStream with devstatus's streams in place.
type Bus struct {
	NC *nats.Conn
	JS jetstream.JetStream
	// Server is the embedded server, nil when connected to an external one.
	Server *server.Server
	// Devices is the device registry bucket.
	Devices jetstream.KeyValue
	// Leases is the partition lease bucket.
	Leases jetstream.KeyValue
	// Snapshots is the worker snapshot store.
	Snapshots jetstream.ObjectStore

	partitions int
	cfg        Config
}

// Partitions is the input partition count in force (recorded in the input
// stream's metadata at creation).
func (b *Bus) Partitions() int { return b.partitions }

// ClientURL is a URL other processes can connect to: the external URL, or the
// embedded server's listen address ("" when it listens in-process only).
func (b *Bus) ClientURL() string {
	if b.Server == nil {
		return b.cfg.URL
	}
	if b.cfg.ListenAddr == "" {
		return ""
	}
	u := b.Server.ClientURL()
	if b.cfg.ListenToken != "" {
		u = strings.Replace(u, "nats://", "nats://"+b.cfg.ListenToken+"@", 1)
	}
	return u
}

// Open starts or connects to JetStream and ensures the streams and buckets.
// It returns an error wrapping [ErrInvalidConfig] for a bad config, or the
// server's or client's error.
func Open(ctx context.Context, cfg Config) (*Bus, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	b := &Bus{cfg: cfg}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				cfg.Logger.Warn("nats disconnected", slog.Any("err", err))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			cfg.Logger.Info("nats reconnected", slog.String("url", nc.ConnectedUrlRedacted()))
		}),
	}
	url := cfg.URL
	if url == "" {
		s, err := StartEmbedded(EmbeddedConfig{StoreDir: filepath.Join(cfg.DataDir, "jetstream"), ListenAddr: cfg.ListenAddr,
			Token: cfg.ListenToken, SyncAlways: cfg.SyncAlways})
		if err != nil {
			return nil, err
		}
		b.Server = s
		opts = append(opts, nats.InProcessServer(s))
		if cfg.ListenToken != "" {
			opts = append(opts, nats.Token(cfg.ListenToken))
		}
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		b.shutdownServer()
		return nil, fmt.Errorf("bus: connect %q: %w", url, err)
	}
	b.NC = nc
	js, err := jetstream.New(nc)
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	b.JS = js
	if err := b.ensure(ctx); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// ensure creates the streams and buckets if missing; it is idempotent and
// keeps an existing input stream's partition count.
func (b *Bus) ensure(ctx context.Context) error {
	cfg := b.cfg
	partitions := cfg.Partitions
	if st, err := b.JS.Stream(ctx, events.InputStream); err == nil {
		info, err := st.Info(ctx)
		if err != nil {
			return fmt.Errorf("bus: input stream info: %w", err)
		}
		if v, ok := info.Config.Metadata[events.MetaPartitions]; ok {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return fmt.Errorf("bus: input stream metadata %s=%q is not a partition count", events.MetaPartitions, v)
			}
			if n != partitions {
				cfg.Logger.Warn("partition count is fixed at stream creation; ignoring the configured count",
					slog.Int("configured", partitions), slog.Int("in_force", n))
			}
			partitions = n
		}
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("bus: look up input stream: %w", err)
	}
	b.partitions = partitions

	in := jetstream.StreamConfig{
		Name:        events.InputStream,
		Description: "devstatus input events: heartbeats, ping results, ticks, admin events",
		Subjects:    []string{events.InputSubjects},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.InputMaxAge,
		Duplicates:  2 * time.Minute,
		Discard:     jetstream.DiscardOld,
		AllowDirect: true,
		Metadata:    map[string]string{events.MetaPartitions: strconv.Itoa(partitions)},
	}
	if err := b.ensureStream(ctx, in); err != nil {
		return err
	}
	tr := jetstream.StreamConfig{
		Name:        events.TransitionStream,
		Description: "devstatus status transitions; last per subject is the current status",
		Subjects:    []string{events.TransitionSubjects},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.TransitionMaxAge,
		Duplicates:  2 * time.Minute,
		AllowDirect: true,
		Metadata:    map[string]string{events.MetaPartitions: strconv.Itoa(partitions)},
	}
	if err := b.ensureStream(ctx, tr); err != nil {
		return err
	}
	probes := jetstream.StreamConfig{
		Name:              events.ProbeStream,
		Description:       "devstatus probe requests for the ping service (work queue, newest per device)",
		Subjects:          []string{events.ProbeSubjects},
		Retention:         jetstream.WorkQueuePolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          cfg.Replicas,
		MaxAge:            10 * time.Minute,
		MaxMsgsPerSubject: 1,
		Discard:           jetstream.DiscardOld,
		Duplicates:        2 * time.Minute,
	}
	if _, err := b.JS.CreateOrUpdateStream(ctx, probes); err != nil {
		return fmt.Errorf("bus: ensure stream %s: %w", probes.Name, err)
	}
	var err error
	b.Devices, err = b.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: events.DevicesBucket, Description: "devstatus device registry", History: 1,
		Storage: jetstream.FileStorage, Replicas: cfg.Replicas,
	})
	if err != nil {
		return fmt.Errorf("bus: ensure bucket %s: %w", events.DevicesBucket, err)
	}
	b.Leases, err = b.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: events.LeasesBucket, Description: "devstatus partition leases", History: 1,
		TTL: cfg.LeaseTTL, Storage: jetstream.FileStorage, Replicas: cfg.Replicas,
	})
	if err != nil {
		return fmt.Errorf("bus: ensure bucket %s: %w", events.LeasesBucket, err)
	}
	b.Snapshots, err = b.JS.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: events.SnapshotsBucket, Description: "devstatus partition worker snapshots",
		Storage: jetstream.FileStorage, Replicas: cfg.Replicas,
	})
	if err != nil {
		return fmt.Errorf("bus: ensure object store %s: %w", events.SnapshotsBucket, err)
	}
	return nil
}

// ensureStream creates the stream or updates its configuration, and logs a
// changed age limit (a shorter one makes the server delete older messages).
func (b *Bus) ensureStream(ctx context.Context, sc jetstream.StreamConfig) error {
	var old *jetstream.StreamInfo
	if st, err := b.JS.Stream(ctx, sc.Name); err == nil {
		old, _ = st.Info(ctx)
	}
	if _, err := b.JS.CreateOrUpdateStream(ctx, sc); err != nil {
		return fmt.Errorf("bus: ensure stream %s: %w", sc.Name, err)
	}
	if old != nil && old.Config.MaxAge != sc.MaxAge {
		b.cfg.Logger.Info("stream age limit changed", slog.String("stream", sc.Name),
			slog.Duration("from", old.Config.MaxAge), slog.Duration("to", sc.MaxAge))
	}
	return nil
}

// Close drains the connection and shuts the embedded server down.
func (b *Bus) Close() {
	if b.NC != nil {
		_ = b.NC.Drain()
		for i := 0; i < 100 && !b.NC.IsClosed(); i++ {
			time.Sleep(10 * time.Millisecond)
		}
		b.NC.Close()
	}
	b.shutdownServer()
}

func (b *Bus) shutdownServer() {
	if b.Server != nil {
		b.Server.Shutdown()
		b.Server.WaitForShutdown()
	}
}

// EmbeddedConfig configures [StartEmbedded].
type EmbeddedConfig struct {
	// StoreDir is the JetStream file store directory (created if missing).
	StoreDir string
	// ListenAddr "host:port" to accept TCP clients; empty for in-process only;
	// port -1 picks a free one.
	ListenAddr string
	// Token, when set, is required from every client.
	Token string
	// SyncAlways fsyncs before every PubAck.
	SyncAlways bool
	// ServerName defaults to "devstatus-embedded".
	ServerName string
}

// ErrStoreInUse is returned by [StartEmbedded] when another process (or a
// running embedded server of this one) already uses the store directory:
// two servers on one file store would corrupt it.
var ErrStoreInUse = errors.New("bus: the JetStream store directory is in use")

// storeLocks holds, per store directory, the locked lock file (held until
// the process exits) and the last server started on it.
var storeLocks = struct {
	sync.Mutex
	m map[string]*storeLock
}{m: map[string]*storeLock{}}

type storeLock struct {
	f *os.File
	s *server.Server
}

// lockStore takes an exclusive flock on StoreDir/devstatus.lock, or returns
// an error wrapping [ErrStoreInUse] naming the process that holds it.
func lockStore(dir string) (*storeLock, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("bus: store dir: %w", err)
	}
	storeLocks.Lock()
	defer storeLocks.Unlock()
	if l := storeLocks.m[abs]; l != nil {
		if l.s != nil && l.s.Running() {
			return nil, fmt.Errorf("%w: %s: an embedded server of this process runs on it", ErrStoreInUse, abs)
		}
		return l, nil
	}
	path := filepath.Join(abs, "devstatus.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("bus: lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		return nil, fmt.Errorf("%w: %s is locked by process %s; stop it first (with the embedded server, stop the whole service before devstatus rebuild)",
			ErrStoreInUse, abs, strings.TrimSpace(string(holder)))
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	l := &storeLock{f: f}
	storeLocks.m[abs] = l
	return l, nil
}

// StartEmbedded starts a single JetStream server and waits until it accepts
// connections (10 s at most). It refuses a store directory already in use
// ([ErrStoreInUse]) and a listen address already taken.
func StartEmbedded(cfg EmbeddedConfig) (*server.Server, error) {
	if err := os.MkdirAll(cfg.StoreDir, 0o750); err != nil {
		return nil, fmt.Errorf("bus: store dir: %w", err)
	}
	lock, err := lockStore(cfg.StoreDir)
	if err != nil {
		return nil, err
	}
	name := cfg.ServerName
	if name == "" {
		name = "devstatus-embedded"
	}
	opts := &server.Options{
		ServerName:    name,
		JetStream:     true,
		StoreDir:      cfg.StoreDir,
		NoSigs:        true,
		SyncAlways:    cfg.SyncAlways,
		DontListen:    cfg.ListenAddr == "",
		Authorization: cfg.Token,
		MaxPayload:    8 << 20,
	}
	if cfg.ListenAddr != "" {
		host, port, err := net.SplitHostPort(cfg.ListenAddr)
		if err != nil {
			return nil, fmt.Errorf("%w: nats listen address %q: %v", ErrInvalidConfig, cfg.ListenAddr, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("%w: nats listen port %q", ErrInvalidConfig, port)
		}
		opts.Host, opts.Port = host, p
	}
	if opts.Port > 0 {
		// nats-server only logs a failed listen and never becomes ready: say why.
		var lc net.ListenConfig // a local bind: nothing to cancel
		ln, err := lc.Listen(context.Background(), "tcp", net.JoinHostPort(opts.Host, strconv.Itoa(opts.Port)))
		if err != nil {
			return nil, fmt.Errorf("bus: cannot accept NATS clients on %s: %w (another devstatus or nats-server? change --nats-listen, or set it empty for in-process only)", cfg.ListenAddr, err)
		}
		ln.Close()
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("bus: embedded server: %w", err)
	}
	storeLocks.Lock()
	lock.s = s
	storeLocks.Unlock()
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, errors.New("bus: embedded server not ready within 10s")
	}
	return s, nil
}
