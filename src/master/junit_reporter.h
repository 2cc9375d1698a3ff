// JUnit XML: one <testsuite> per binary (per binary and platform under
// --dist each); worker id and gateway as properties of each <testcase>.
#pragma once

#include <string>
#include <vector>

#include "master/model.h"

namespace dtest {

std::string junit_xml(const std::vector<Unit>& units, double seconds, const std::string& hostname);
// Writes atomically (temp file + rename); throws std::runtime_error.
void write_junit(const std::string& path, const std::string& xml);
// XML-escapes text and drops characters XML 1.0 cannot carry.
std::string xml_escape(std::string_view s);

}  // namespace dtest
