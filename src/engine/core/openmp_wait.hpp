#pragma once
// How idle OpenMP threads wait between parallel regions.
//
// libgomp's default lets every idle worker spin for ~300,000 iterations after each parallel region
// before it sleeps. The CPU backend runs thousands of short regions per forward, so the workers
// spin most of the time; on a small or shared machine (the 2-vCPU VM of docs/BENCHMARKS.md) that
// spinning takes the cores from the thread doing the work: the quickstart took 1 min 58 s with
// the default and 48 s with OMP_WAIT_POLICY=PASSIVE (2026-11-27), and an AWQ test 17.4 s vs 6.8 s.
// libgomp reads the variable when it is loaded, before main(), so setting it later has no effect.

namespace refinery {

// When the user has set neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT: sets OMP_WAIT_POLICY=PASSIVE
// and re-executes this program (/proc/self/exe) with the same arguments, once (the variable is set
// the second time). Returns only when nothing was done or the exec failed (the run then goes on
// with the default policy). Call it first thing in main().
void reexec_with_passive_openmp_wait(char** argv);

}  // namespace refinery
