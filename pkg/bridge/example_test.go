package bridge_test

import (
	"context"
	"log"
	"net/http"

	"github.com/devstatus/devstatus/pkg/bridge"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/clock"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/registry"
)

// Example shows how a binary wires the bridge: one registry over the bus, the
// bridge's routes on a mux wrapped by httpx.DeviceIDs, Run in the background
// and Ready behind /readyz. (Not run: it needs a data directory and a port.)
func Example() {
	ctx := context.Background()
	b, err := bus.Open(ctx, bus.Config{DataDir: "./data"})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	clk := clock.NewMonotonic()
	reg, err := registry.New(registry.Config{Bus: b, Clock: clk})
	if err != nil {
		log.Fatal(err)
	}
	br, err := bridge.New(bridge.Config{Bus: b, Registry: reg, Clock: clk,
		AdminToken: "admin-token", PingToken: "ping-token",
		RateMinInterval: bridge.DefaultRateMinInterval, RatePerMinute: bridge.DefaultRatePerMinute})
	if err != nil {
		log.Fatal(err)
	}
	go func() { _ = br.Run(ctx) }() // also runs reg's KV watch
	mux := http.NewServeMux()
	br.Routes(mux)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := br.Ready(r.Context()); err != nil {
			httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, err.Error())
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	log.Fatal(http.ListenAndServe(":8080", httpx.DeviceIDs(mux)))
}
