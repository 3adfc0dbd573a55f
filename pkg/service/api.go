package service

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/readapi"
	"github.com/devstatus/devstatus/pkg/worker"
	"github.com/devstatus/devstatus/projections"
	"github.com/devstatus/devstatus/web"
)

// startAPI registers the read API (behind a per-device cache that the
// device's own transitions invalidate), the live stream GET /v1/stream, the
// web dashboard at GET / and the read side's metrics: the cache's counters
// and devstatus_devices{status}.
func (s *Service) startAPI(db *sqlx.DB, mux *httpx.RecordingMux) error {
	store := projections.NewStore(db)
	cache, err := readapi.NewCache(readapi.CacheConfig{Store: store, JetStream: s.Bus.JS, Logger: s.log})
	if err != nil {
		return err
	}
	for _, c := range cache.Collectors() {
		if err := s.reg.Register(c); err != nil {
			return err
		}
	}
	if err := s.reg.Register(newDevicesCollector(store, 5*time.Second)); err != nil {
		return err
	}
	s.run(s.runCtx, RoleAPI, cache.Run)
	api, err := readapi.New(readapi.Config{Store: cache, AdminToken: s.cfg.AdminToken, Auth: s.Tokens, Logger: s.log, Clock: s.cfg.Clock,
		Registerer: s.reg, Stream: readapi.StreamConfig{JetStream: s.Bus.JS}, Hold: s.holdState})
	if err != nil {
		return err
	}
	api.Routes(mux)
	var auth httpx.Authorizer = httpx.StaticToken(s.cfg.AdminToken)
	if s.Tokens != nil {
		auth = s.Tokens
	}
	mux.Handle("GET /v1/partitions", httpx.RequireRole(auth, httpx.RoleAdmin, http.HandlerFunc(s.handlePartitions)))
	mux.Handle(PatternOutageHoldRelease, httpx.RequireRole(auth, httpx.RoleAdmin, http.HandlerFunc(s.handleHoldRelease)))
	web.Routes(mux)
	return nil
}

// handlePartitions answers GET /v1/partitions (admin token): every
// partition's owner, since when, and the owner's applied sequence and lag
// (as of its last lease renewal), and the live worker instances with their
// roles and partitions ([worker.Ownership]). 503 when the bus cannot be read.
func (s *Service) handlePartitions(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	own, err := worker.ReadOwnership(ctx, s.Bus.Leases, s.Bus.Partitions())
	if err != nil {
		httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, "reading the partition leases failed: "+err.Error())
		return
	}
	httpx.WriteJSON(w, http.StatusOK, own)
}

// PatternOutageHoldRelease is the operator's end of an outage hold (api
// role, admin token).
const PatternOutageHoldRelease = "POST /v1/outage-hold/release"

// OutageHoldReleaseJSON is the answer of POST /v1/outage-hold/release:
// released says whether a hold was on and its end was published (202: the
// partitions apply it in their log order, moments later; 200 with released
// false when no hold was on; 503 before this instance has read the hold's
// state, or when the end could not be published), outage_hold is the hold
// that was released (or the state found).
type OutageHoldReleaseJSON struct {
	Released   bool               `json:"released"`
	OutageHold readapi.OutageHold `json:"outage_hold"`
}

func outageHoldJSON(st worker.HoldState) readapi.OutageHold {
	out := readapi.OutageHold{Active: st.Active, Reason: st.Reason}
	if st.Active {
		since := st.Since.UTC()
		out.Since = &since
	}
	return out
}

func (s *Service) holdState() (readapi.OutageHold, <-chan struct{}) {
	st, ch := s.Hold.State()
	return outageHoldJSON(st), ch
}

func (s *Service) handleHoldRelease(w http.ResponseWriter, r *http.Request) {
	if !s.Hold.Ready() {
		httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, "the outage hold's state is not read yet; retry")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	st, err := worker.ReleaseHold(ctx, s.Bus, s.Hold, "admin", s.cfg.Clock.Now())
	switch {
	case errors.Is(err, worker.ErrNoHold):
		httpx.WriteJSON(w, http.StatusOK, OutageHoldReleaseJSON{OutageHold: outageHoldJSON(st)})
	case err != nil:
		s.log.Warn("outage hold release failed", slog.Any("err", err))
		httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, "the release could not be published; retry")
	default:
		s.log.Warn("outage hold released by an operator", slog.Time("since", st.Since), slog.String("reason", st.Reason))
		httpx.WriteJSON(w, http.StatusAccepted, OutageHoldReleaseJSON{Released: true, OutageHold: outageHoldJSON(st)})
	}
}

// devicesCollector exports devstatus_devices{status}: the fleet (not
// decommissioned) by status, from the projection. A scrape reads Postgres at
// most once per maxAge (one grouped count: cheap, but not free on a large
// fleet); a failed read exports nothing rather than stale numbers.
type devicesCollector struct {
	store  *projections.Store
	maxAge time.Duration
	desc   *prometheus.Desc

	mu     sync.Mutex
	at     time.Time
	counts projections.Counts
}

func newDevicesCollector(store *projections.Store, maxAge time.Duration) *devicesCollector {
	return &devicesCollector{store: store, maxAge: maxAge, desc: prometheus.NewDesc("devstatus_devices",
		"Devices by status, from the status projection (decommissioned excluded); refreshed at most every few seconds.",
		[]string{"status"}, nil)}
}

func (c *devicesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *devicesCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts == nil || time.Since(c.at) >= c.maxAge {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		sum, err := c.store.Summary(ctx)
		cancel()
		if err != nil {
			c.counts = nil
			return
		}
		c.counts, c.at = sum.ByStatus, time.Now()
	}
	for _, st := range events.Statuses {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(c.counts[st]), string(st))
	}
}
