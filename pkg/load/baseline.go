package load

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/devstatus/devstatus/events"
	"github.com/devstatus/devstatus/pkg/apiclient"
)

// BaselineHandler is the baseline of the load run: a plain net/http JSON
// handler for POST /v1/devices/{id}/heartbeat that does what any JSON API
// does and nothing devstatus does — it checks the bearer header is there,
// reads and decodes the body with encoding/json, and answers the heartbeat
// answer's four fields with json.Marshal. No auth look-up, no rate limit, no
// event bus. The service's throughput is reported as a ratio to it, driven
// by the same load generator in the same run.
func BaselineHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/devices/{id}/heartbeat", func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			http.Error(w, `{"error":{"code":"unauthorized","message":"missing bearer token"}}`, http.StatusUnauthorized)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if err != nil {
			http.Error(w, `{"error":{"code":"bad_request","message":"read"}}`, http.StatusBadRequest)
			return
		}
		var hb struct {
			DeviceTime *time.Time      `json:"device_time"`
			Metrics    json.RawMessage `json:"metrics"`
		}
		if len(body) > 0 {
			if err := json.Unmarshal(body, &hb); err != nil {
				http.Error(w, `{"error":{"code":"malformed_json","message":"malformed"}}`, http.StatusBadRequest)
				return
			}
		}
		out, _ := json.Marshal(apiclient.HeartbeatResponse{Status: events.StatusConnected, HeartbeatIntervalS: 30})
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(out)
	})
	return mux
}

// ServeBaseline serves [BaselineHandler] on addr until ctx ends. It writes
// "listening <host:port>" to out once it accepts connections.
func ServeBaseline(ctx context.Context, addr string, out io.Writer) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: BaselineHandler(), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 120 * time.Second}
	fmt.Fprintf(out, "listening %s\n", ln.Addr())
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
