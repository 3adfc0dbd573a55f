package readapi_test

import (
	"context"
	"net/http"
	"os"

	"github.com/jmoiron/sqlx"

	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/readapi"
	"github.com/devstatus/devstatus/projections"
)

// The read API role: a per-device cache fed by the transitions stream in
// front of the projections, its GET routes on the shared mux, the mux wrapped
// with httpx.DeviceIDs. (Compiled, not run.)
func ExampleAPI_Routes() {
	ctx := context.Background()
	db := sqlx.MustOpen("postgres", os.Getenv("DATABASE_URL"))
	b, err := bus.Open(ctx, bus.Config{})
	if err != nil {
		return
	}
	defer b.Close()
	cache, err := readapi.NewCache(readapi.CacheConfig{Store: projections.NewStore(db), JetStream: b.JS})
	if err != nil {
		return
	}
	go func() { _ = cache.Run(ctx) }()
	api, err := readapi.New(readapi.Config{Store: cache, AdminToken: os.Getenv("DEVSTATUS_ADMIN_TOKEN"),
		Stream: readapi.StreamConfig{JetStream: b.JS}})
	if err != nil {
		return
	}
	mux := http.NewServeMux()
	api.Routes(mux) // the GET routes of the package doc, /v1/stream among them (Config.Stream.JetStream)
	// The bridge registers its POST/PATCH/DELETE patterns on the same mux.
	_ = http.ListenAndServe(":8080", httpx.DeviceIDs(mux))
}
