//go:build race

package trace

// raceEnabled: the race detector slows the pure-Go xz decoder tenfold.
const raceEnabled = true
