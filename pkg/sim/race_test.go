//go:build race

package sim

// raceDetector: the tests that drive a fake service in real time with
// sub-second budgets (TestRun…, TestReplayLive…) skip themselves under the
// race detector, which slows everything about tenfold (see
// skipTimingUnderRace).
const raceDetector = true
