package bridge

import (
	"context"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/httpx"
)

// TestBusRefusesPublish: JetStream is up but refuses the event (the input
// stream is full and set to refuse new messages, by count, bytes or per
// subject, or the message is over the stream's size limit): heartbeats and
// ping results get 503 with Retry-After, never 200; nothing is stored; the
// refused heartbeat gives its rate budget back; when the stream takes
// events again, ingest resumes by itself.
func TestBusRefusesPublish(t *testing.T) {
	e := newEnv(t)
	tok := e.register("d", "")
	e.register("p", "")
	ctx := context.Background()
	st, err := e.bus.JS.Stream(ctx, events.InputStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	orig := info.Config
	full := map[string]func(c *jetstream.StreamConfig, msgs, bytes uint64){
		"full by count": func(c *jetstream.StreamConfig, msgs, _ uint64) {
			c.MaxMsgs, c.Discard = int64(msgs), jetstream.DiscardNew
		},
		"full by bytes": func(c *jetstream.StreamConfig, _, bytes uint64) {
			c.MaxBytes, c.Discard = int64(bytes), jetstream.DiscardNew
		},
		"full per subject": func(c *jetstream.StreamConfig, _, _ uint64) {
			c.MaxMsgsPerSubject, c.Discard, c.DiscardNewPerSubject = 1, jetstream.DiscardNew, true
		},
		"message over the size limit": func(c *jetstream.StreamConfig, _, _ uint64) {
			c.MaxMsgSize = 16
		},
	}
	for name, set := range full {
		t.Run(name, func(t *testing.T) {
			info, err := st.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			cfg := orig
			set(&cfg, info.State.Msgs, info.State.Bytes)
			if _, err := e.bus.JS.UpdateStream(ctx, cfg); err != nil {
				t.Fatal(err)
			}
			e.clk.Advance(DefaultRateMinInterval)
			before := len(e.inputEvents())
			r := e.heartbeat("d", tok, `{"metrics":{"n":1}}`)
			if r.code != 503 || r.errCode(t) != httpx.CodeUnavailable || r.hdr.Get("Retry-After") == "" {
				t.Errorf("heartbeat: %d %s Retry-After %q", r.code, r.body, r.hdr.Get("Retry-After"))
			}
			p := e.do("POST", devPath("p", "/ping"), pingToken, "application/json", strings.NewReader(`{"ok":true}`))
			if p.code != 503 || p.hdr.Get("Retry-After") == "" {
				t.Errorf("ping: %d %s", p.code, p.body)
			}
			if n := len(e.inputEvents()); n != before {
				t.Errorf("%d events stored while refused", n-before)
			}
			if _, err := e.bus.JS.UpdateStream(ctx, orig); err != nil {
				t.Fatal(err)
			}
			// Same instant: the refused heartbeat spent no budget.
			if r := e.heartbeat("d", tok, `{"metrics":{"n":2}}`); r.code != 200 {
				t.Errorf("after the stream takes events again: %d %s", r.code, r.body)
			}
		})
	}
	hb := counterValue(t, e.br.m.publishErrors.WithLabelValues(string(events.TypeHeartbeat)))
	pg := counterValue(t, e.br.m.publishErrors.WithLabelValues(string(events.TypePingResult)))
	if hb != float64(len(full)) || pg != float64(len(full)) {
		t.Errorf("publish errors counted: %v heartbeats, %v pings, want %d each", hb, pg, len(full))
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
