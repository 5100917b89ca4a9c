# Makefile: thin wrapper around cmake. The README's two commands are `make run` and `make test`.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
MODEL ?= models/tiny-omni
RUNTIME_DIR ?= $(BUILD)/run

.PHONY: all deps configure build test test-all run model clean

all: build

deps:
	@./scripts/install-deps

configure: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

# CI and developers: everything but the GPU tests.
test: build
	cd $(BUILD) && ctest -LE gpu --output-on-failure -j $(JOBS)

# On a GPU machine: everything.
test-all: build
	cd $(BUILD) && ctest --output-on-failure

model: build
	@./scripts/ensure-model $(MODEL)

# Installs, builds, makes the default model if none is there, and runs a three-turn conversation
# through all four daemons.
run: build model
	@./scripts/run-demo $(MODEL) $(RUNTIME_DIR)

clean:
	rm -rf $(BUILD)
