package service

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/devstatus/devstatus/pkg/bridge"
)

// TestImportFleet imports a whole fleet in requests of
// bridge.MaxImportDevices and reports the time it took (docs/performance.md
// quotes it). It runs only when DEVSTATUS_IMPORT_FLEET names the fleet size
// (e.g. 100000): it is a measurement, too long for every run.
//
//	DEVSTATUS_IMPORT_FLEET=100000 go test -run TestImportFleet -v ./pkg/service
func TestImportFleet(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("DEVSTATUS_IMPORT_FLEET"))
	if n <= 0 {
		t.Skip("set DEVSTATUS_IMPORT_FLEET to the number of devices to import")
	}
	base := startBulk(t)
	start := time.Now()
	created := 0
	for first := 0; first < n; first += bridge.MaxImportDevices {
		var body bytes.Buffer
		for i := first; i < min(first+bridge.MaxImportDevices, n); i++ {
			fmt.Fprintf(&body, "{\"id\":\"fleet-%07d\",\"group\":\"g%d\"}\n", i, i%10)
		}
		t0 := time.Now()
		ans := importJSON(t, base, "application/x-ndjson", body.Bytes())
		created += ans.Created
		if ans.Failed != 0 {
			for _, r := range ans.Results {
				if r.Status != 201 {
					t.Fatalf("line %d (%s): %d %+v", r.Line, r.ID, r.Status, r.Error)
				}
			}
		}
		t.Logf("request %d: %d devices in %v", first/bridge.MaxImportDevices+1, len(ans.Results), time.Since(t0).Round(time.Millisecond))
	}
	d := time.Since(start)
	if created != n {
		t.Fatalf("created %d of %d", created, n)
	}
	t.Logf("imported %d devices in %v (%.0f devices/s)", n, d.Round(time.Millisecond), float64(n)/d.Seconds())
}
