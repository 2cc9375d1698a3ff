// dtest: parse options, call the library, print the error. Two hidden modes
// come first: the process that holds a warm ssh connection (started by the
// ssh gateway as `dtest __ssh-holder ...`) and `dtest __ssh-close [TARGET...]`
// (closes warm connections; what `dtest disconnect` does).
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "gateway/gateway.h"
#include "gateway/ssh_gateway.h"
#include "master/cli.h"

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "__ssh-holder") == 0) return dtest::gateway::ssh_holder_main(argc, argv);
  if (argc >= 2 && std::strcmp(argv[1], "__ssh-close") == 0)
    return dtest::gateway::close_warm_connections(std::vector<std::string>(argv + 2, argv + argc), std::cout);
  // This is the dtest binary: ssh gateways may leave their connection to a
  // holder started from it.
  dtest::gateway::enable_warm_connections("/proc/self/exe");
  return dtest::dtest_main(argc, argv, std::cout, std::cerr);
}
