//go:build !race

package web_test

// raceDetector: see race_test.go.
const raceDetector = false
