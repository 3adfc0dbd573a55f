package procstat

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// TreeCPU returns the CPU seconds (user + system) used so far by process pid
// and all its descendants (Linux /proc; 0 elsewhere). Descendants that
// already exited are not counted unless waited for by a counted parent
// (their time then shows in the parent's cutime, which is added).
func TreeCPU(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	type st struct {
		ppid  int
		ticks float64
	}
	procs := map[int]st{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... field 14 utime, 15 stime, 16 cutime, 17 cstime
		r := bytes.LastIndexByte(b, ')')
		if r < 0 {
			continue
		}
		f := strings.Fields(string(b[r+1:]))
		if len(f) < 15 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		var t float64
		for _, k := range []int{11, 12, 13, 14} {
			v, _ := strconv.ParseFloat(f[k], 64)
			t += v
		}
		procs[p] = st{ppid: pp, ticks: t}
	}
	in := map[int]bool{pid: true}
	for changed := true; changed; {
		changed = false
		for p, s := range procs {
			if !in[p] && in[s.ppid] {
				in[p], changed = true, true
			}
		}
	}
	var ticks float64
	for p := range in {
		ticks += procs[p].ticks
	}
	return ticks / 100 // USER_HZ
}

// LoadAvg returns the 1-minute load average (0 when unknown).
func LoadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// RSS returns the resident set size of a process in bytes (Linux).
func RSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseFloat(f[1], 64)
	return pages * float64(os.Getpagesize())
}
