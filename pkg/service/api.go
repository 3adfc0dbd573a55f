package service

import (
	"net/http"

	"github.com/jmoiron/sqlx"

	"github.com/devstatus/devstatus/pkg/readapi"
	"github.com/devstatus/devstatus/projections"
)

// startAPI registers the read API behind a per-device cache that the
// device's own transitions invalidate.
func (s *Service) startAPI(db *sqlx.DB, mux *http.ServeMux) error {
	cache, err := readapi.NewCache(readapi.CacheConfig{Store: projections.NewStore(db), JetStream: s.Bus.JS, Logger: s.log})
	if err != nil {
		return err
	}
	s.run(s.runCtx, RoleAPI, cache.Run)
	api, err := readapi.New(readapi.Config{Store: cache, AdminToken: s.cfg.AdminToken, Logger: s.log, Clock: s.cfg.Clock})
	if err != nil {
		return err
	}
	api.Routes(mux)
	return nil
}
