//go:build race

package e2e

// raceDetector: the race detector slows the pipeline about tenfold; the
// full-day replay and the live replay run in make test's non-race step.
const raceDetector = true
