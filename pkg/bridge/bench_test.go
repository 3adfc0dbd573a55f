package bridge

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// BenchmarkHeartbeat measures the whole ingest path (HTTP over loopback,
// decode, cached auth, rate limit, publish and PubAck on the embedded file
// store, answer) with parallel clients over 1 000 devices.
func BenchmarkHeartbeat(b *testing.B) {
	e := newEnv(b, func(c *Config) { c.RateMinInterval, c.RatePerMinute = 0, 0 })
	const devices = 1000
	toks := make([]string, devices)
	for i := range toks {
		toks[i] = e.register(fmt.Sprintf("bench-%d", i), "g")
	}
	client := e.srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	body := `{"metrics":{"battery":87,"signal":-61,"app_version":"1.2.3"}}`
	var n atomic.Int64
	b.ResetTimer()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(n.Add(1)) % devices
			req, _ := http.NewRequest(http.MethodPost, e.srv.URL+devPath(fmt.Sprintf("bench-%d", i), "/heartbeat"), strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+toks[i])
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body) // so that the connection is reused
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "heartbeats/s")
}
