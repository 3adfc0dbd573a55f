// Package procstat reads what the load generator reports of the host from
// Linux's /proc: the CPU time of a process tree, a process's resident memory
// and the load average. Elsewhere every figure is 0. It is for the load
// generator's report only; it must not be used to make decisions in the
// service.
package procstat
