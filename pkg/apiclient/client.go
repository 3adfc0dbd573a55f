package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/devstatus/devstatus/events"
)

// Sentinel errors an [*APIError] matches with errors.Is, by HTTP status.
var (
	ErrBadRequest   = errors.New("apiclient: bad request")         // 400, 413, 415
	ErrUnauthorized = errors.New("apiclient: unauthorized")        // 401, 403
	ErrNotFound     = errors.New("apiclient: not found")           // 404
	ErrConflict     = errors.New("apiclient: already exists")      // 409
	ErrRateLimited  = errors.New("apiclient: rate limited")        // 429
	ErrUnavailable  = errors.New("apiclient: service unavailable") // 503
)

// ErrInvalidConfig wraps the errors of [NewClient] for a bad [ClientConfig].
var ErrInvalidConfig = errors.New("apiclient: invalid config")

// APIError is a non-2xx answer of the service, with the API's error body
// ({"error": {"code", "message"}}) when it had one.
type APIError struct {
	// Op names the call ("register", "heartbeat", …).
	Op string
	// Status is the HTTP status code.
	Status int
	// Code and Message come from the error body ("" when it had none).
	Code, Message string
	// RetryAfter is the Retry-After header (whole seconds), 0 when absent.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	s := fmt.Sprintf("apiclient: %s: HTTP %d", e.Op, e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Is matches the sentinel of the status class.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrBadRequest:
		return e.Status == http.StatusBadRequest || e.Status == http.StatusRequestEntityTooLarge || e.Status == http.StatusUnsupportedMediaType
	case ErrUnauthorized:
		return e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden
	case ErrNotFound:
		return e.Status == http.StatusNotFound
	case ErrConflict:
		return e.Status == http.StatusConflict
	case ErrRateLimited:
		return e.Status == http.StatusTooManyRequests
	case ErrUnavailable:
		return e.Status == http.StatusServiceUnavailable
	}
	return false
}

// ClientConfig configures [NewClient].
type ClientConfig struct {
	// URL is the service's base URL, e.g. "http://127.0.0.1:8080". Required.
	URL string
	// AdminToken authorizes registration and reads (Authorization: Bearer).
	AdminToken string
	// HTTP is the client to use. Default: a client with a connection pool
	// sized for many concurrent devices (MaxIdleConnsPerHost 512).
	HTTP *http.Client
	// Timeout bounds one request when the context has no deadline. Default 10 s.
	Timeout time.Duration
	// Retries is how many times [Client.Heartbeat] and the reads retry a 429
	// or 503 (after Retry-After, or RetryWait without one). Default 3; -1: none.
	Retries int
	// RetryWait is the wait before retrying a 503 without Retry-After.
	// Default 500 ms.
	RetryWait time.Duration
	// MaxRetryAfter caps the Retry-After honoured. Default 30 s.
	MaxRetryAfter time.Duration
}

// Client calls the devstatus HTTP API. It is safe for concurrent use and
// holds no state beyond its configuration.
type Client struct {
	cfg  ClientConfig
	base string
}

// NewClient checks cfg, applies its defaults and returns a client; a bad URL
// gives an error wrapping [ErrInvalidConfig].
func NewClient(cfg ClientConfig) (*Client, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: URL %q must be http(s)://host[:port]", ErrInvalidConfig, cfg.URL)
	}
	if cfg.HTTP == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns = 1024
		tr.MaxIdleConnsPerHost = 512
		cfg.HTTP = &http.Client{Transport: tr}
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Retries == 0 {
		cfg.Retries = 3
	} else if cfg.Retries < 0 {
		cfg.Retries = 0
	}
	if cfg.RetryWait == 0 {
		cfg.RetryWait = 500 * time.Millisecond
	}
	if cfg.MaxRetryAfter == 0 {
		cfg.MaxRetryAfter = 30 * time.Second
	}
	return &Client{cfg: cfg, base: strings.TrimRight(cfg.URL, "/")}, nil
}

// RetryWait is the configured wait before retrying a 503 that has no
// Retry-After (default 500 ms), for callers that retry [Client.HeartbeatOnce]
// themselves.
func (c *Client) RetryWait() time.Duration { return c.cfg.RetryWait }

// DevicePath is the URL path of a device: "/v1/devices/" + the id escaped as
// one path segment (url.PathEscape: '/' becomes %2F, space %20, non-ASCII
// percent-encoded), so every valid id reaches the server intact.
func DevicePath(id string) string { return "/v1/devices/" + url.PathEscape(id) }

// Registration is the answer to [Client.Register].
type Registration struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}

// HeartbeatRequest is the JSON body of a heartbeat.
type HeartbeatRequest struct {
	// DeviceTime is the device's own clock (metadata only), RFC 3339.
	DeviceTime *time.Time `json:"device_time,omitempty"`
	// Metrics are free-form device metrics (battery, signal, …).
	Metrics map[string]any `json:"metrics,omitempty"`
}

// HeartbeatResponse is the 200 answer to a heartbeat.
type HeartbeatResponse struct {
	Status               events.Status `json:"status"`
	RemoteControlEnabled bool          `json:"remote_control_enabled"`
	ShouldReconnect      bool          `json:"should_reconnect"`
	HeartbeatIntervalS   int           `json:"heartbeat_interval_s"`
}

// Device is a device as the read API shows it.
type Device struct {
	ID                   string          `json:"id"`
	Group                string          `json:"group"`
	Status               events.Status   `json:"status"`
	StatusSince          *time.Time      `json:"status_since"`
	Reason               string          `json:"reason"`
	LastHeartbeatAt      *time.Time      `json:"last_heartbeat_at"`
	LastPingAt           *time.Time      `json:"last_ping_at"`
	LastPingOK           *bool           `json:"last_ping_ok"`
	Metrics              json.RawMessage `json:"metrics"`
	RemoteControlEnabled bool            `json:"remote_control_enabled"`
}

// DevicePage is one page of [Client.ListDevices].
type DevicePage struct {
	Devices []Device `json:"devices"`
	// NextCursor is "" on the last page.
	NextCursor string `json:"next_cursor"`
}

// ListOptions filters [Client.ListDevices]. Zero fields are not sent.
type ListOptions struct {
	Status events.Status
	Group  string
	// Limit is the page size.
	Limit  int
	Cursor string
}

// TransitionRecord is one entry of a device's history.
type TransitionRecord struct {
	From       events.Status     `json:"from"`
	To         events.Status     `json:"to"`
	ReasonCode events.ReasonCode `json:"reason_code"`
	Reason     string            `json:"reason"`
	At         time.Time         `json:"at"`
}

// Register registers a device (POST /v1/devices, admin token) and returns its
// token. An existing id gives an error matching [ErrConflict].
func (c *Client) Register(ctx context.Context, id, group string) (Registration, error) {
	var reg Registration
	body, _ := json.Marshal(map[string]string{"id": id, "group": group})
	err := c.do(ctx, "register", http.MethodPost, "/v1/devices", c.cfg.AdminToken, body, http.StatusCreated, &reg, false)
	return reg, err
}

// HeartbeatOnce sends one heartbeat (POST /v1/devices/{id}/heartbeat with the
// device token), without retrying: a 429 or 503 comes back as an
// [*APIError] with RetryAfter set.
func (c *Client) HeartbeatOnce(ctx context.Context, id, token string, req HeartbeatRequest) (*HeartbeatResponse, error) {
	return c.heartbeat(ctx, id, token, req, false)
}

// Heartbeat is [Client.HeartbeatOnce] retried on 429 (after Retry-After) and
// 503 (after Retry-After or RetryWait), up to Retries times.
func (c *Client) Heartbeat(ctx context.Context, id, token string, req HeartbeatRequest) (*HeartbeatResponse, error) {
	return c.heartbeat(ctx, id, token, req, true)
}

func (c *Client) heartbeat(ctx context.Context, id, token string, req HeartbeatRequest, retry bool) (*HeartbeatResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("apiclient: heartbeat body: %w", err)
	}
	var resp HeartbeatResponse
	if err := c.do(ctx, "heartbeat", http.MethodPost, DevicePath(id)+"/heartbeat", token, body, http.StatusOK, &resp, retry); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Device reads one device (GET /v1/devices/{id}).
func (c *Client) Device(ctx context.Context, id string) (*Device, error) {
	var d Device
	if err := c.do(ctx, "get device", http.MethodGet, DevicePath(id), c.cfg.AdminToken, nil, http.StatusOK, &d, true); err != nil {
		return nil, err
	}
	return &d, nil
}

// ListDevices reads one page (GET /v1/devices?status=&group=&limit=&cursor=).
func (c *Client) ListDevices(ctx context.Context, opts ListOptions) (*DevicePage, error) {
	q := url.Values{}
	if opts.Status != "" {
		q.Set("status", string(opts.Status))
	}
	if opts.Group != "" {
		q.Set("group", opts.Group)
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Cursor != "" {
		q.Set("cursor", opts.Cursor)
	}
	path := "/v1/devices"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var p DevicePage
	if err := c.do(ctx, "list devices", http.MethodGet, path, c.cfg.AdminToken, nil, http.StatusOK, &p, true); err != nil {
		return nil, err
	}
	return &p, nil
}

// AllDevices follows the cursor from opts.Cursor to the last page and returns
// every device listed. It stops with an error if a cursor repeats.
func (c *Client) AllDevices(ctx context.Context, opts ListOptions) ([]Device, error) {
	var out []Device
	seen := map[string]bool{}
	for {
		p, err := c.ListDevices(ctx, opts)
		if err != nil {
			return out, err
		}
		out = append(out, p.Devices...)
		if p.NextCursor == "" {
			return out, nil
		}
		if seen[p.NextCursor] {
			return out, fmt.Errorf("apiclient: list devices: cursor %q repeats", p.NextCursor)
		}
		seen[p.NextCursor] = true
		opts.Cursor = p.NextCursor
	}
}

// Transitions reads a device's history, oldest first
// (GET /v1/devices/{id}/transitions).
func (c *Client) Transitions(ctx context.Context, id string) ([]TransitionRecord, error) {
	var body struct {
		Transitions []TransitionRecord `json:"transitions"`
	}
	if err := c.do(ctx, "transitions", http.MethodGet, DevicePath(id)+"/transitions", c.cfg.AdminToken, nil, http.StatusOK, &body, true); err != nil {
		return nil, err
	}
	return body.Transitions, nil
}

// Counts are device counts per status.
type Counts struct {
	Registered         int `json:"registered"`
	Connected          int `json:"connected"`
	TemporarilyOffline int `json:"temporarily_offline"`
	Disconnected       int `json:"disconnected"`
	Total              int `json:"total"`
}

// Summary is the answer of GET /v1/summary: the fleet's counts, and the
// same per group ("" is the devices without a group).
type Summary struct {
	Counts
	Groups map[string]Counts `json:"groups"`
}

// Summary reads the fleet's counts per status and per group (GET /v1/summary).
func (c *Client) Summary(ctx context.Context) (*Summary, error) {
	var out Summary
	if err := c.do(ctx, "summary", http.MethodGet, "/v1/summary", c.cfg.AdminToken, nil, http.StatusOK, &out, true); err != nil {
		return nil, err
	}
	return &out, nil
}

// do performs one call; with retry it retries 429 and 503.
func (c *Client) do(ctx context.Context, op, method, path, token string, body []byte, want int, out any, retry bool) error {
	for attempt := 0; ; attempt++ {
		err := c.once(ctx, op, method, path, token, body, want, out)
		var ae *APIError
		if !retry || attempt >= c.cfg.Retries || !errors.As(err, &ae) ||
			(ae.Status != http.StatusTooManyRequests && ae.Status != http.StatusServiceUnavailable) {
			return err
		}
		wait := ae.RetryAfter
		if wait == 0 {
			wait = c.cfg.RetryWait
		}
		wait = min(wait, c.cfg.MaxRetryAfter)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

func (c *Client) once(ctx context.Context, op, method, path, token string, body []byte, want int, out any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("apiclient: %s: %w", op, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.cfg.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("apiclient: %s: %w", op, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("apiclient: %s: read answer: %w", op, err)
	}
	if resp.StatusCode != want {
		ae := &APIError{Op: op, Status: resp.StatusCode}
		var eb struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(b, &eb) == nil {
			ae.Code, ae.Message = eb.Error.Code, eb.Error.Message
		}
		if ra := resp.Header.Get("Retry-After"); ra != "" {
			if secs, err := strconv.Atoi(strings.TrimSpace(ra)); err == nil && secs >= 0 {
				ae.RetryAfter = time.Duration(secs) * time.Second
			} else if t, err := http.ParseTime(ra); err == nil {
				ae.RetryAfter = max(time.Until(t), 0)
			}
		}
		return ae
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("apiclient: %s: decode answer: %w", op, err)
		}
	}
	return nil
}
