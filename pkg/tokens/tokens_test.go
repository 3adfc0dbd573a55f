package tokens_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
	"github.com/devstatus/devstatus/pkg/httpx"
	"github.com/devstatus/devstatus/pkg/tokens"
)

func TestStore(t *testing.T) {
	ctx := context.Background()
	b := testenv.NATS(t, bus.Config{})
	s, err := tokens.New(ctx, tokens.Config{JetStream: b.JS, AdminToken: "boot", Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if role, err := s.Authorize(ctx, "boot"); err != nil || role != httpx.RoleAdmin {
		t.Fatalf("bootstrap: %q %v", role, err)
	}
	for _, tok := range []string{"", "bootx", "dst_nothing"} {
		if _, err := s.Authorize(ctx, tok); !errors.Is(err, httpx.ErrUnknownToken) {
			t.Errorf("Authorize(%q) = %v, want ErrUnknownToken", tok, err)
		}
	}
	v, vsecret, err := s.Create(ctx, "wall screen", httpx.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	a, asecret, err := s.Create(ctx, "ops", httpx.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(vsecret, "dst_") || len(vsecret) != 4+43 || vsecret == asecret || v.ID == a.ID {
		t.Fatalf("secrets %q %q ids %q %q", vsecret, asecret, v.ID, a.ID)
	}
	if role, err := s.Authorize(ctx, vsecret); err != nil || role != httpx.RoleViewer {
		t.Fatalf("viewer: %q %v", role, err)
	}
	if role, err := s.Authorize(ctx, asecret); err != nil || role != httpx.RoleAdmin {
		t.Fatalf("admin: %q %v", role, err)
	}
	// A second store on the same bucket (another instance) knows them.
	s2, err := tokens.New(ctx, tokens.Config{JetStream: b.JS})
	if err != nil {
		t.Fatal(err)
	}
	list, err := s2.List(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("list: %v %v", list, err)
	}
	for _, tk := range list {
		if tk.Name == "" || tk.CreatedAt.IsZero() || (tk.ID != v.ID && tk.ID != a.ID) {
			t.Errorf("listed %+v", tk)
		}
	}
	if err := s2.Delete(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authorize(ctx, vsecret); !errors.Is(err, httpx.ErrUnknownToken) {
		t.Fatalf("deleted token: %v", err)
	}
	if err := s.Delete(ctx, v.ID); !errors.Is(err, tokens.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if role, err := s.Authorize(ctx, asecret); err != nil || role != httpx.RoleAdmin {
		t.Fatalf("the other token after a delete: %q %v", role, err)
	}
	for _, c := range []struct {
		name string
		role httpx.Role
	}{{"", httpx.RoleViewer}, {strings.Repeat("x", 129), httpx.RoleViewer}, {"a\x00b", httpx.RoleViewer}, {"x", "root"}, {"x", ""}} {
		if _, _, err := s.Create(ctx, c.name, c.role); !errors.Is(err, tokens.ErrInvalid) {
			t.Errorf("Create(%q, %q) = %v, want ErrInvalid", c.name, c.role, err)
		}
	}
	b.NC.Close()
	if _, err := s.Authorize(ctx, asecret); !errors.Is(err, tokens.ErrUnavailable) {
		t.Fatalf("closed connection: %v, want ErrUnavailable", err)
	}
}

func TestRoleAllows(t *testing.T) {
	for _, c := range []struct {
		r, need httpx.Role
		ok      bool
	}{{httpx.RoleAdmin, httpx.RoleAdmin, true}, {httpx.RoleAdmin, httpx.RoleViewer, true},
		{httpx.RoleViewer, httpx.RoleViewer, true}, {httpx.RoleViewer, httpx.RoleAdmin, false}, {"", httpx.RoleViewer, false}} {
		if c.r.Allows(c.need) != c.ok {
			t.Errorf("%q allows %q: %v", c.r, c.need, !c.ok)
		}
	}
}
