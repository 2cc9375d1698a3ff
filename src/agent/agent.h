// dtest-agent's main loop: speaks the protocol (docs/protocol.md) on a pair
// of file descriptors, collects suites and runs batches of tests in their own
// process groups, streaming results back. Single-threaded, poll()-driven.
#pragma once

namespace dtest {

// Runs until the master closes `in_fd` or sends shutdown, or a termination
// signal arrives; then kills every process it started and returns the exit
// code (0 on an orderly end, 3 on a protocol error from the master).
int run_agent(int in_fd, int out_fd);

}  // namespace dtest
