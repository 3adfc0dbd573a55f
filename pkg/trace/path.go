package trace

import (
	"bufio"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// EnvPath is the one setting that says where the full trace is: the
// environment variable DEVSTATUS_TRACE, the path of event_trace.tab.xz (or
// the unpacked event_trace.tab) of the Grid'5000 set. The real-input tests
// and devicesim's --trace default read it through [FullPath].
const EnvPath = "DEVSTATUS_TRACE"

// Source says where the full trace comes from, for skip and error messages.
const Source = "the Grid'5000 availability trace of the Failure Trace Archive (set g5k06): " +
	"its event table event_trace.tab.xz; set " + EnvPath + " to its path"

// module is the module path whose go.mod marks the repository root.
const module = "github.com/devstatus/devstatus"

// FullPath returns the path of the full trace: $DEVSTATUS_TRACE when set,
// else [DefaultPath]; a relative path is resolved against the repository
// root (the nearest directory, from the working directory upward, holding
// this module's go.mod; failing that, the root this package was built from;
// failing that, the working directory). It does not check that the file
// exists: a caller without it should say so with [Source].
func FullPath() string {
	p := os.Getenv(EnvPath)
	if p == "" {
		p = DefaultPath
	}
	if filepath.IsAbs(p) {
		return p
	}
	if root := repoRoot(); root != "" {
		return filepath.Join(root, p)
	}
	return p
}

// repoRoot finds the repository root as [FullPath] describes, or "".
func repoRoot() string {
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; {
			if isRoot(dir) {
				return dir
			}
			up := filepath.Dir(dir)
			if up == dir {
				break
			}
			dir = up
		}
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		if dir := filepath.Join(filepath.Dir(file), "..", ".."); isRoot(dir) {
			return filepath.Clean(dir)
		}
	}
	return ""
}

// isRoot reports whether dir holds the go.mod of this module.
func isRoot(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); strings.HasPrefix(line, "module ") {
			return strings.TrimSpace(strings.TrimPrefix(line, "module ")) == module
		}
	}
	return false
}
