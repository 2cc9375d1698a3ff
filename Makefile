# The two set-up commands (see README.md):
#   make demo   installs what is missing, builds dtest, runs the bundled example suite
#   make test   installs what is missing, builds everything, runs every test
BUILD ?= build
CMAKE_FLAGS ?=
CTEST_FLAGS ?= -j2 --output-on-failure --timeout 300

.PHONY: all deps configure build demo test check test-asan bench clean

all: build

deps:
	@bash scripts/deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS) > /dev/null

build: configure
	cmake --build $(BUILD)

demo: configure
	cmake --build $(BUILD) --target dtest dtest-agent dtest_examples
	$(BUILD)/src/dtest -n 2 $(BUILD)/examples/example_math_test $(BUILD)/examples/example_strings_test

# Every test, in the normal build and again under ASan + UBSan.
test: check test-asan

check: configure
	cmake --build $(BUILD)
	cd $(BUILD) && ctest $(CTEST_FLAGS)

# The same suite under AddressSanitizer + UndefinedBehaviorSanitizer (Debug,
# so _GLIBCXX_ASSERTIONS is on too).
test-asan:
	$(MAKE) check BUILD=build-asan CMAKE_FLAGS="-DDTEST_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug"

bench: configure
	cmake --build $(BUILD) --target dtest dtest-agent
	bash bench/gtest_local.sh $(BUILD)

clean:
	rm -rf build build-asan
