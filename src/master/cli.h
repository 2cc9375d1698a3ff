// dtest's command line. All of dtest is a library; main() only calls this,
// so end-to-end tests can run it in-process too.
#pragma once

#include <ostream>

namespace dtest {

int dtest_main(int argc, char** argv, std::ostream& out, std::ostream& err);

}  // namespace dtest
