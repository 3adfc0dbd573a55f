package load

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/devstatus/devstatus/pkg/apiclient"
	"github.com/devstatus/devstatus/pkg/load/internal/rawhttp"
)

// clockText caches the RFC 3339 time of now, refreshed every 10 ms, for the
// device_time of heartbeats.
type clockText struct{ v atomic.Pointer[string] }

// run refreshes the time until ctx ends.
func (c *clockText) run(ctx context.Context) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		s := time.Now().UTC().Format(time.RFC3339Nano)
		c.v.Store(&s)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *clockText) now() string {
	if p := c.v.Load(); p != nil {
		return *p
	}
	return time.Now().UTC().Format(time.RFC3339Nano)
}

// appendMetrics appends a heartbeat's fields (without braces): device time
// and three metrics that change from one heartbeat to the next.
func appendMetrics(b []byte, now string, rnd uint64) []byte {
	b = append(b, `"device_time":"`...)
	b = append(b, now...)
	b = append(b, `","metrics":{"battery":`...)
	b = strconv.AppendUint(b, 20+rnd%81, 10)
	b = append(b, `,"signal":-`...)
	b = strconv.AppendUint(b, 50+(rnd>>8)%40, 10)
	b = append(b, `,"app_version":"devicesim/1.0"}`...)
	return b
}

// conn is what a heartbeat sender owns: its connection, a reused body
// buffer and its random source.
type conn struct {
	r    *loadRun
	rc   *rawhttp.Conn
	body []byte
	rnd  *rand.PCG
	clk  *clockText
}

func (c *conn) close() { c.rc.Close() }

// post sends the request and counts it, and returns the answer and how long
// it took.
func (c *conn) post(ps *phaseStats, path, token string, body []byte) (rawhttp.Response, time.Duration, error) {
	t0 := time.Now()
	resp, err := c.rc.Do("POST", path, token, body)
	d := time.Since(t0)
	ps.requests.Add(1)
	c.r.requests.Add(1)
	return resp, d, err
}

// dial makes conns senders, of the single devices' heartbeats to base or of
// the gateways' batches to the service, with device_time from clk. No
// connection is opened before the first request.
func (r *loadRun) dial(conns int, gateways bool, base string, clk *clockText) ([]sender, error) {
	out := make([]sender, 0, conns)
	for range conns {
		rc, err := rawhttp.New(base, r.cfg.Timeout)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		c := conn{r: r, rc: rc, rnd: rand.NewPCG(rand.Uint64(), rand.Uint64()), clk: clk}
		if gateways {
			out = append(out, &gatewayWorker{c})
		} else {
			out = append(out, &singleWorker{c})
		}
	}
	return out, nil
}

// singleWorker sends single heartbeats: item i is device i.
type singleWorker struct{ conn }

// send sends device i's heartbeat and records the outcome in ps.
func (w *singleWorker) send(ps *phaseStats, i int) {
	b := append(w.body[:0], '{')
	b = appendMetrics(b, w.clk.now(), w.rnd.Uint64())
	b = append(b, '}')
	w.body = b
	resp, d, err := w.post(ps, w.r.paths[i], w.r.tokens[i], b)
	switch {
	case err != nil:
		ps.fail(err)
	case resp.Status == 200:
		w.r.record(ps, d, 1)
		return
	case resp.Status == 429:
		ps.r429.Add(1)
	case resp.Status == 503:
		ps.r503.Add(1)
	default:
		ps.fail(fmt.Errorf("heartbeat %s: HTTP %d %s", w.r.ids[i], resp.Status, bytes.TrimSpace(resp.Body)))
	}
	w.r.failures.Add(1)
}

// gatewayWorker sends gateway batches: item g is gateway g with all its
// devices.
type gatewayWorker struct{ conn }

var (
	tagHTTP429  = []byte(`"http_status":429`)
	tagHTTP503  = []byte(`"http_status":503`)
	tagAccepted = []byte(`"accepted":`)
)

// send posts gateway g's batch and records the outcome in ps.
func (w *gatewayWorker) send(ps *phaseStats, g int) {
	b := append(w.body[:0], `{"heartbeats":[`...)
	now := w.clk.now()
	for k, dev := range w.r.gwDevs[g] {
		if k > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"device":"`...)
		b = append(b, dev...) // generated ids: nothing to escape
		b = append(b, `",`...)
		b = appendMetrics(b, now, w.rnd.Uint64())
		b = append(b, '}')
	}
	b = append(b, "]}"...)
	w.body = b
	resp, d, err := w.post(ps, w.r.gwPaths[g], w.r.gwTokens[g], b)
	switch {
	case err != nil:
		ps.fail(err)
		w.r.failures.Add(1)
	case resp.Status == 200:
		acc := acceptedCount(resp.Body)
		if acc < 0 {
			ps.fail(fmt.Errorf("gateway batch: no accepted count in %.200s", resp.Body))
			return
		}
		ps.r429.Add(int64(bytes.Count(resp.Body, tagHTTP429)))
		ps.r503.Add(int64(bytes.Count(resp.Body, tagHTTP503)))
		if rej := int64(len(w.r.gwDevs[g])) - acc; rej > 0 {
			w.r.failures.Add(rej)
		}
		w.r.record(ps, d, acc)
	case resp.Status == 503:
		ps.r503.Add(int64(len(w.r.gwDevs[g])))
		w.r.failures.Add(1)
	default:
		ps.fail(fmt.Errorf("gateway batch %s: HTTP %d %.300s", w.r.gwIDs[g], resp.Status, bytes.TrimSpace(resp.Body)))
		w.r.failures.Add(1)
	}
}

// acceptedCount reads the last "accepted": n of a gateway batch's answer
// (-1: none).
func acceptedCount(body []byte) int64 {
	i := bytes.LastIndex(body, tagAccepted)
	if i < 0 {
		return -1
	}
	rest := body[i+len(tagAccepted):]
	j := 0
	for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	n, err := strconv.ParseInt(string(rest[:j]), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// registration is one POST of the registration phase; token (nil: none
// kept) receives the answer's token.
type registration struct {
	path, body string
	token      *string
}

// registrar registers what job(i) says; the first failure cancels the
// phase (cancel) and is kept in ps.
type registrar struct {
	rc     *rawhttp.Conn
	admin  string
	ctx    context.Context
	cancel context.CancelFunc
	job    func(i int) registration
	done   *atomic.Int64
}

func (g *registrar) close() { g.rc.Close() }

func (g *registrar) send(ps *phaseStats, i int) {
	j := g.job(i)
	var resp rawhttp.Response
	var err error
	for attempt := 0; ; attempt++ {
		resp, err = g.rc.Do("POST", j.path, g.admin, []byte(j.body))
		if err != nil || resp.Status != 503 || attempt >= 5 {
			break
		}
		select {
		case <-g.ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err == nil && resp.Status != 201 {
		err = fmt.Errorf("load: register: POST %s %s: HTTP %d %s", j.path, j.body, resp.Status, bytes.TrimSpace(resp.Body))
	}
	if err == nil && j.token != nil {
		var reg apiclient.Registration
		if err = json.Unmarshal(resp.Body, &reg); err == nil && reg.Token == "" {
			err = errors.New("load: register: no token in the answer")
		}
		*j.token = reg.Token
	}
	if err != nil {
		ps.fail(err)
		g.cancel()
		return
	}
	g.done.Add(1)
}
