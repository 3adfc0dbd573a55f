package service

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/devstatus/devstatus/internal/testenv"
	"github.com/devstatus/devstatus/pkg/bus"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and localhost
// and its key (PEM) into dir and returns their paths and a pool trusting it.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "devstatus test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestTLSAndMetricsListener: with a certificate the HTTP address speaks
// HTTPS only; with a metrics address /metrics (build info included) and
// pprof are there and /metrics is gone from the devices' port; ambiguous
// framing is refused over TLS too.
func TestTLSAndMetricsListener(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	svc, err := Start(context.Background(), Config{HTTPAddr: "127.0.0.1:0", Bus: bus.Config{DataDir: filepath.Join(dir, "data"), Partitions: 2},
		Roles: []string{RoleBridge}, AdminToken: "admin", PingToken: "ping", Logger: testenv.Logger(t),
		TLSCertFile: certFile, TLSKeyFile: keyFile, MetricsAddr: "127.0.0.1:0", Pprof: true})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop(context.Background())
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	base := "https://" + svc.Addr()

	resp, err := client.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.TLS == nil {
		t.Fatalf("https /healthz: %d, TLS %v", resp.StatusCode, resp.TLS != nil)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		code, body := get(t, client, base+"/readyz")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready over https: %d %s", code, body)
		}
	}
	if code, _ := get(t, client, base+"/metrics"); code != http.StatusNotFound {
		t.Errorf("/metrics on the devices' port: %d, want 404", code)
	}
	plain := &http.Client{Timeout: 5 * time.Second}
	if resp, err := plain.Get("http://" + svc.Addr() + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP answered 200 on the HTTPS port")
		}
	}

	metrics := "http://" + svc.MetricsAddr()
	code, body := get(t, plain, metrics+"/metrics")
	if code != 200 {
		t.Fatalf("metrics listener /metrics: %d", code)
	}
	bi := ReadBuildInfo()
	fams := scrape(t, metrics)
	fam := fams["devstatus_build_info"]
	if fam == nil || len(fam.GetMetric()) != 1 || fam.GetMetric()[0].GetGauge().GetValue() != 1 {
		t.Fatalf("devstatus_build_info: %v", fam)
	}
	m := fam.GetMetric()[0]
	if label(m, "goversion") != runtime.Version() || label(m, "version") != bi.Version || label(m, "revision") != bi.Revision {
		t.Errorf("build info labels %v, want %+v", m.GetLabel(), bi)
	}
	if !strings.Contains(body, "devstatus_bridge_") {
		t.Error("the metrics listener lacks the bridge's metrics")
	}
	if code, body := get(t, plain, metrics+"/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("pprof index: %d", code)
	}

	// Both Content-Length and Transfer-Encoding, over TLS: 400, then closed.
	c, err := tls.Dial("tcp", svc.Addr(), &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "POST /v1/devices/a/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
		"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
	br := bufio.NewReader(c)
	r1, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(r1.Body)
	if r1.StatusCode != http.StatusBadRequest || !r1.Close {
		t.Errorf("ambiguous framing: %d, close %v; want 400 and close", r1.StatusCode, r1.Close)
	}
	_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, err := http.ReadResponse(br, nil); err == nil {
		t.Error("the connection stayed open after the refused request")
	} else if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		t.Error("the connection was neither used nor closed")
	}
}

func TestTLSConfigErrors(t *testing.T) {
	_, err := Start(context.Background(), Config{Roles: []string{RoleTicker}, TLSCertFile: "x.pem"})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("certificate without key: %v", err)
	}
	_, err = Start(context.Background(), Config{Roles: []string{RoleTicker}, Pprof: true})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("pprof without a metrics address: %v", err)
	}
}

// TestReadyzNamesFailingChecksOnly: the unauthenticated answer carries the
// names of the failing checks, never their error text.
func TestReadyzNamesFailingChecksOnly(t *testing.T) {
	s := &Service{log: testenv.Logger(t)}
	secret := "pq: password authentication failed for user \"fleet\" at 10.1.2.3:5432"
	s.addReady("nats", func(context.Context) error { return nil })
	s.addReady("postgres", func(context.Context) error { return errors.New(secret) })
	s.addReady("projector", func(context.Context) error { return errors.New("projections: transitions not ready: " + secret) })
	rec := httptest.NewRecorder()
	s.handleReady(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d", rec.Code)
	}
	var body struct {
		Status  string   `json:"status"`
		Failing []string `json:"failing"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body.Status != "not_ready" || strings.Join(body.Failing, ",") != "postgres,projector" {
		t.Errorf("answer %s", rec.Body.String())
	}
	if strings.Contains(rec.Body.String(), "password") || strings.Contains(rec.Body.String(), "10.1.2.3") {
		t.Errorf("error text in the answer: %s", rec.Body.String())
	}
}
