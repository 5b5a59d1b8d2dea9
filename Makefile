# trellis: the entry points. Each target installs what it needs first.
#   make run    build (Release) and start api-management on http://127.0.0.1:8080
#   make test   build with ASan+UBSan, start the test servers, run every test
#   make bench  build (Release), start the servers, run every benchmark
#   make build  build (Release) only;  make deps  install build dependencies

JOBS ?= $(shell nproc 2>/dev/null || echo 2)
RELEASE_DIR ?= build-release
TEST_DIR ?= build

.PHONY: all deps build run test bench fuzz clean services-start services-stop

all: build

deps:
	@scripts/install-deps build

build: deps
	@cmake -S . -B $(RELEASE_DIR) -DCMAKE_BUILD_TYPE=Release -DTRELLIS_BUILD_TESTS=OFF >/dev/null
	@cmake --build $(RELEASE_DIR) -j$(JOBS)

run: build
	@mkdir -p data
	@test -f .env || { echo "note: no .env here; using defaults (see .env.example)"; }
	exec ./$(RELEASE_DIR)/bin/api-management

test:
	@scripts/test

bench:
	@scripts/install-deps bench
	@cmake -S . -B $(RELEASE_DIR) -DCMAKE_BUILD_TYPE=Release -DTRELLIS_BUILD_TESTS=OFF >/dev/null
	@cmake --build $(RELEASE_DIR) -j$(JOBS)
	@bench/run $(RELEASE_DIR)/bin

fuzz:
	@scripts/install-deps test
	@CC=clang cmake -S . -B build-fuzz -DTRELLIS_BUILD_FUZZ=ON -DTRELLIS_ASAN=ON \
	  -DTRELLIS_BUILD_TESTS=OFF -DTRELLIS_BUILD_BENCH=OFF -DTRELLIS_FUZZ_SECONDS=$${FUZZ_SECONDS:-60} >/dev/null
	@cmake --build build-fuzz -j$(JOBS)
	@ctest --test-dir build-fuzz -L fuzz --output-on-failure

services-start:
	@scripts/services start

services-stop:
	@scripts/services stop

clean:
	rm -rf $(RELEASE_DIR) $(TEST_DIR) build-fuzz
