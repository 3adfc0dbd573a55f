//go:build race

package web_test

// raceDetector: under the race detector the service answers so slowly that
// the browser test's steps (each waiting on live updates with short
// thresholds) take more than 10x longer than without it (~17 s without it,
// more than 180 s with it on 2 cores). make test runs the browser test in a
// step of its own without the race detector (make test-browser).
const raceDetector = true
