package bus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
)

func TestOpenIdempotentAndPartitionsFixed(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := Open(ctx, Config{DataDir: dir, Partitions: 8})
	if err != nil {
		t.Fatal(err)
	}
	if b.Partitions() != 8 {
		t.Fatalf("partitions = %d", b.Partitions())
	}
	b.Close()
	// Reopen with another count: the recorded count wins.
	b, err = Open(ctx, Config{DataDir: dir, Partitions: 32})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Partitions() != 8 {
		t.Fatalf("partitions after reopen = %d, want the recorded 8", b.Partitions())
	}
}

func TestInvalidConfig(t *testing.T) {
	_, err := Open(context.Background(), Config{DataDir: t.TempDir(), Partitions: -3, Replicas: 2})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("err = %v", err)
	}
}

// TestPartitionMatchesServerTransform checks that events.Partition agrees with
// nats-server's partition() subject mapping, so either may be used.
func TestPartitionMatchesServerTransform(t *testing.T) {
	ctx := context.Background()
	b, err := Open(ctx, Config{DataDir: t.TempDir(), Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = b.JS.CreateStream(ctx, jetstream.StreamConfig{
		Name: "XFORM", Subjects: []string{"x.*"}, Storage: jetstream.MemoryStorage,
		SubjectTransform: &jetstream.SubjectTransformConfig{Source: "x.*", Destination: "y.{{partition(16,1)}}.{{wildcard(1)}}"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"A", "A.x", "*", "G1/site1/c1/node1", "Gerät", "a b"}
	for _, id := range ids {
		ack, err := b.JS.Publish(ctx, "x."+events.SubjectToken(id), []byte("1"))
		if err != nil {
			t.Fatal(err)
		}
		st, _ := b.JS.Stream(ctx, "XFORM")
		m, err := st.GetMsg(ctx, ack.Sequence)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("y.%d.%s", events.Partition(id, 16), events.SubjectToken(id))
		if m.Subject != want {
			t.Errorf("%q: server mapped to %q, events.Partition says %q", id, m.Subject, want)
		}
	}
}

func TestStoreInUseRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := Open(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	// A second server on the same store (a second `devstatus serve`, or a
	// rebuild while the service runs) is refused, not started.
	if _, err := Open(ctx, Config{DataDir: dir}); !errors.Is(err, ErrStoreInUse) {
		t.Fatalf("second server on the same store: %v", err)
	}
	b.Close()
	// Once the first stopped, the store can be opened again.
	b, err = Open(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
}

func TestListenAddressTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = Open(context.Background(), Config{DataDir: t.TempDir(), ListenAddr: ln.Addr().String()})
	if err == nil || !strings.Contains(err.Error(), "cannot accept NATS clients") {
		t.Fatalf("err = %v", err)
	}
}

// TestStreamAgeLimitsFollowConfig: the age limits of an existing input and
// transitions stream are updated when the configuration changes, and a
// transitions limit of 0 means forever again.
func TestStreamAgeLimitsFollowConfig(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	maxAges := func(cfg Config) (in, tr time.Duration) {
		t.Helper()
		cfg.DataDir = dir
		b, err := Open(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		for _, name := range []string{events.InputStream, events.TransitionStream} {
			st, err := b.JS.Stream(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			info, err := st.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if name == events.InputStream {
				in = info.Config.MaxAge
			} else {
				tr = info.Config.MaxAge
			}
		}
		return in, tr
	}
	for _, c := range []struct{ in, tr, wantIn, wantTr time.Duration }{
		{0, 0, 7 * 24 * time.Hour, 0},
		{48 * time.Hour, 30 * 24 * time.Hour, 48 * time.Hour, 30 * 24 * time.Hour},
		{24 * time.Hour, 0, 24 * time.Hour, 0},
	} {
		in, tr := maxAges(Config{InputMaxAge: c.in, TransitionMaxAge: c.tr})
		if in != c.wantIn || tr != c.wantTr {
			t.Fatalf("with input %s, transitions %s: stream max ages %s and %s, want %s and %s",
				c.in, c.tr, in, tr, c.wantIn, c.wantTr)
		}
	}
	if _, err := Open(ctx, Config{DataDir: t.TempDir(), TransitionMaxAge: -time.Hour}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("negative age limit: %v, want ErrInvalidConfig", err)
	}
}
