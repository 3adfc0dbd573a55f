package procstat

import (
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"
)

func TestOwnProcess(t *testing.T) {
	if runtime.GOOS != "linux" {
		if TreeCPU(os.Getpid()) != 0 || RSS(os.Getpid()) != 0 || LoadAvg() != 0 {
			t.Fatal("figures outside Linux")
		}
		t.Skip("reads /proc")
	}
	before := TreeCPU(os.Getpid())
	// Burn CPU until the tick-based counter moves (ticks are 10 ms).
	deadline := time.Now().Add(10 * time.Second)
	x := 0
	for TreeCPU(os.Getpid()) <= before && time.Now().Before(deadline) {
		for i := range 1_000_000 {
			x += i
		}
	}
	if after := TreeCPU(os.Getpid()); after <= before {
		t.Fatalf("CPU %v → %v after burning (%d)", before, after, x)
	}
	if rss := RSS(os.Getpid()); rss < 1<<20 {
		t.Fatalf("RSS %v bytes", rss)
	}
	if LoadAvg() < 0 {
		t.Fatal("negative load average")
	}
	if TreeCPU(0) != 0 || TreeCPU(-1) != 0 || RSS(-1) != 0 {
		t.Fatal("figures for no process")
	}
}

// TestTreeCountsChildren: a child's CPU counts in its parent's tree while
// it runs.
func TestTreeCountsChildren(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	cmd := exec.Command(sh, "-c", "while :; do :; done")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// The test process itself has used far less than the child will.
	deadline := time.Now().Add(20 * time.Second)
	for TreeCPU(cmd.Process.Pid) < 0.5 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // poll: the child burns on its own
	}
	child := TreeCPU(cmd.Process.Pid)
	if tree := TreeCPU(os.Getpid()); child < 0.5 || tree < child {
		t.Fatalf("child %v s, the test's tree %v s", child, tree)
	}
}
