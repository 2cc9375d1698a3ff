// dtest: parse options, call the library, print the error.
#include <iostream>

#include "master/cli.h"

int main(int argc, char** argv) { return dtest::dtest_main(argc, argv, std::cout, std::cerr); }
