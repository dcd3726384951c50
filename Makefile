# tscale — build, test, run.  `make run` and `make test` work on a fresh Debian 12 machine:
# both install missing packages first (deps), then build.
#
#   make            build build/tscaled (and the test binaries' objects)
#   make run        serve (the built-in demo model unless told otherwise): ARGS="--listen ..."
#   make test       unit tests (plain and ASan+UBSan), golden tests, end-to-end tests, the Python
#                   client against the daemon, the PyTorch modules (installs python3-torch)
#   make bench      build/tscale-bench (one ternary layer vs dense OpenBLAS; bench/README.md)
#   make bench-plot bench/forward_vs_batch.png: forward time vs batch size (gnuplot)
#   make bench-http wrk: tscaled batch-1 inference vs a bare libmicrohttpd server (bench/http_bench.sh)
#   make example    examples/digits-drift: train, serve, adapt under drift, plot (~70 s)
#   make example-short  the same, short, with checks (CI candidate: 5-15 s once installed)
#   make deps       install missing Debian packages (apt-get; sudo when not root)

CC      ?= cc
PKGS    := libuv libmicrohttpd jansson sqlite3 libnats
DEB_PKGS := gcc make pkg-config libuv1-dev libmicrohttpd-dev libjansson-dev libsqlite3-dev \
            check python3 curl ca-certificates libnats-dev nats-server
# `make test` checks the project's PyTorch modules (clients/python/tscale/torch_layers.py) and
# tools/torch_export.py with Debian's torch: ~150 MB of packages, ~50 s to install here.
TORCH_DEB_PKGS := python3-torch
# The Python client's tests: installed offline with pip, numpy in and out (both small).
CLIENT_DEB_PKGS := python3-pip python3-numpy
# Only for `make example` and `make example-short` (scikit-learn's bundled digits, the plot).
EXAMPLE_DEB_PKGS := python3-torch python3-sklearn python3-matplotlib
# Only for `make bench` and `make bench-plot` (not installed by `make run` or `make test`).
BENCH_DEB_PKGS := libopenblas-dev gnuplot-nox

VERSION := $(shell cat VERSION 2>/dev/null || echo 0.0.0)
# Flags of the libraries, looked up only when they exist (deps installs them first).
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)

WARN    := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
CFLAGS  ?= -O2 -g
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -pthread $(WARN) -DTS_VERSION='"$(VERSION)"' -I.
SAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

CORE_SRC   := $(sort $(wildcard core/*.c))
PROTO_SRC  := $(sort $(wildcard proto/*.c))
SERVER_SRC := $(filter-out server/main.c,$(sort $(wildcard server/*.c server/*/*.c)))
GEN_SRC    := build/gen/migrations.c
LIB_SRC    := $(CORE_SRC) $(PROTO_SRC) $(SERVER_SRC) $(GEN_SRC)
TEST_SRC   := $(sort $(wildcard tests/unit/test_*.c))
HEADERS    := $(wildcard core/*.h proto/*.h server/*.h server/*/*.h tests/unit/*.h)

OBJ      := $(patsubst %.c,build/obj/%.o,$(LIB_SRC:build/%=%))
SAN_OBJ  := $(patsubst %.c,build/asan/%.o,$(LIB_SRC:build/%=%))
TESTS    := $(patsubst tests/unit/%.c,build/tests/%,$(TEST_SRC))
SAN_TESTS:= $(patsubst tests/unit/%.c,build/asan/tests/%,$(TEST_SRC))

# Per-file ISA flags: kernels named *_avx2.c / *_avx512.c are compiled for that ISA and
# chosen at run time (core/kernel.c), so the binary still runs on older CPUs.
isa_flags = $(if $(findstring _avx512,$1),-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mavx2,$(if $(findstring _avx2,$1),-mavx2 -mfma,))

.PHONY: all run test deps bench-deps unit unit-asan e2e bench bench-http bench-plot clean help torch-test client-test example example-short
all: build/tscaled

help:
	@sed -n '1,13p' Makefile

# Install the missing packages of $(1) (apt-get; sudo when not root).
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

deps:
	$(call install_missing,$(DEB_PKGS))
bench-deps: deps
	$(call install_missing,$(BENCH_DEB_PKGS))

build/gen/migrations.c: $(sort $(wildcard migrations/*.sql)) tools/embed_sql.sh
	@mkdir -p $(@D)
	sh tools/embed_sql.sh $(sort $(wildcard migrations/*.sql)) > $@.tmp && mv $@.tmp $@

build/obj/gen/%.o: build/gen/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(PKG_CFLAGS) -c $< -o $@
build/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(call isa_flags,$<) $(PKG_CFLAGS) -c $< -o $@
build/asan/gen/%.o: build/gen/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) $(PKG_CFLAGS) -c $< -o $@
build/asan/%.o: %.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) $(call isa_flags,$<) $(PKG_CFLAGS) -c $< -o $@

build/tscaled: build/obj/server/main.o $(OBJ)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) -o $@ $^ $(PKG_LIBS) -lm
build/asan/tscaled: build/asan/server/main.o $(SAN_OBJ)
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) -o $@ $^ $(PKG_LIBS) -lm

build/tests/%: tests/unit/%.c $(OBJ) $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(PKG_CFLAGS) -o $@ $< $(OBJ) $(CHECK_LIBS) $(PKG_LIBS) -lm
build/asan/tests/%: tests/unit/%.c $(SAN_OBJ) $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) $(PKG_CFLAGS) -o $@ $< $(SAN_OBJ) $(CHECK_LIBS) $(PKG_LIBS) -lm

BENCH_SRC := $(filter-out bench/mhd_baseline.c,$(sort $(wildcard bench/*.c)))
build/tscale-bench: $(BENCH_SRC) $(OBJ)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(PKG_CFLAGS) -o $@ $(BENCH_SRC) $(OBJ) $(PKG_LIBS) -lopenblas -lm

run: deps
	@$(MAKE) --no-print-directory build/tscaled
	./build/tscaled $(ARGS)

# Unit tests run from the repository root (golden files are read from tests/golden/).
unit: $(TESTS)
	@set -e; for t in $(TESTS); do echo "== $$t"; CK_FORK=yes $$t; done
unit-asan: $(SAN_TESTS)
	@set -e; for t in $(SAN_TESTS); do echo "== $$t (asan+ubsan)"; \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 CK_FORK=no $$t; done
e2e: build/tscaled
	@python3 tests/e2e/run.py build/tscaled
# Sanitizer reports of the daemon (and of leaks at its exit) go to build/asan/logs/, so that
# one found while a test passes still fails the run.
e2e-asan: build/asan/tscaled
	@rm -rf build/asan/logs && mkdir -p build/asan/logs
	@ASAN_OPTIONS=log_path=$(CURDIR)/build/asan/logs/asan:detect_leaks=1 \
	  UBSAN_OPTIONS=log_path=$(CURDIR)/build/asan/logs/ubsan:print_stacktrace=1 \
	  python3 tests/e2e/run.py build/asan/tscaled
	@if ls build/asan/logs/* >/dev/null 2>&1; then cat build/asan/logs/*; \
	  echo "e2e-asan: the sanitizers reported the errors above"; exit 1; fi

test: deps
	@$(MAKE) --no-print-directory build/tscaled $(TESTS)
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory unit-asan
	@$(MAKE) --no-print-directory e2e
	@$(MAKE) --no-print-directory e2e-asan
	@$(MAKE) --no-print-directory client-test
	@$(MAKE) --no-print-directory torch-test

# The Python client (clients/python), installed as users install it (pip, offline) into
# build/client-py, against build/tscaled. Debian's python (and numpy) is /usr/bin/python3.
client-test: build/tscaled
	$(call install_missing,$(CLIENT_DEB_PKGS))
	@rm -rf build/client-py
	/usr/bin/python3 -m pip install -q --no-index --no-compile --target build/client-py ./clients/python
	PYTHONPATH=build/client-py TSCALE_CLIENT_REQUIRE_NUMPY=1 \
	  /usr/bin/python3 clients/python/tests/test_client.py build/tscaled

# The PyTorch modules against the golden cases (and the reference, when ../shared has it),
# and torch_export.py's commands. Debian's torch lives in /usr/bin/python3.
torch-test:
	$(call install_missing,$(TORCH_DEB_PKGS))
	/usr/bin/python3 tests/torch/test_torch_layers.py

bench: bench-deps
	@$(MAKE) --no-print-directory build/tscale-bench

# examples/digits-drift/README.md: the committed plot and table come from `make example`.
example: deps
	$(call install_missing,$(EXAMPLE_DEB_PKGS))
	@$(MAKE) --no-print-directory build/tscaled
	/usr/bin/python3 examples/digits-drift/run.py
example-short: deps
	$(call install_missing,$(EXAMPLE_DEB_PKGS))
	@$(MAKE) --no-print-directory build/tscaled
	/usr/bin/python3 examples/digits-drift/run.py --samples-per-phase 200 --epochs 15 --seeds 1 --check \
	  --out build/example-short --png build/example-short/digits_drift.png

# A bare libmicrohttpd server with a fixed answer: the ceiling for tscaled's HTTP path.
# `make bench-http` runs wrk against both (bench/http_bench.sh).
build/mhd-baseline: bench/mhd_baseline.c
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(PKG_CFLAGS) -o $@ $< $(PKG_LIBS)
bench-http: build/tscaled build/mhd-baseline
	sh bench/http_bench.sh

# Runs the benchmark at batch 1..256 on a 4096x4096 layer (a few minutes on 2 cores).
bench-plot: bench-deps
	@$(MAKE) --no-print-directory build/tscale-bench
	sh bench/plot.sh build/tscale-bench bench

clean:
	rm -rf build

# ── Hardening (issue 7; tests/fuzz/README.md) ─────────────────────────────────────────────
# make fuzz       build each libFuzzer target tests/fuzz/fuzz_*.c with clang
#                 (-fsanitize=fuzzer,address,undefined) and run it FUZZ_SECONDS, one at a time;
#                 findings land in build/fuzz/artifacts/ and fail the run
# make valgrind   the unit tests under valgrind: any memory error or leak fails
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_DEB_PKGS     := clang libclang-rt-14-dev
VALGRIND_DEB_PKGS := valgrind
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -pthread -DTS_VERSION='"$(VERSION)"' -I. -O1 -g \
                -fno-omit-frame-pointer -fno-sanitize-recover=all
FUZZ_OBJ     := $(patsubst %.c,build/fuzz/obj/%.o,$(LIB_SRC:build/%=%))
FUZZ_TARGETS := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(sort $(wildcard tests/fuzz/fuzz_*.c)))
.SECONDARY: $(FUZZ_OBJ)

build/fuzz/obj/gen/%.o: build/gen/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined $(PKG_CFLAGS) -c $< -o $@
build/fuzz/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined $(call isa_flags,$<) $(PKG_CFLAGS) -c $< -o $@
build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined $(PKG_CFLAGS) -o $@ $< $(FUZZ_OBJ) $(PKG_LIBS) -lm

# tests/unit/test_fuzz.c replays the corpora through the target files it includes.
build/tests/test_fuzz build/asan/tests/test_fuzz: $(wildcard tests/fuzz/*.c tests/fuzz/*.h)

# Each target's working corpus is build/fuzz/corpus/<name> (new inputs go there), read
# together with the seeds tests/fuzz/corpus/<name> and the regressions tests/fuzz/regress/<name>.
fuzz: deps
	@$(MAKE) --no-print-directory deps DEB_PKGS="$(FUZZ_DEB_PKGS)"
	@$(MAKE) --no-print-directory $(FUZZ_TARGETS)
	@set -e; mkdir -p build/fuzz/artifacts; for t in $(FUZZ_TARGETS); do n=$${t#build/fuzz/fuzz_}; \
	  mkdir -p build/fuzz/corpus/$$n; \
	  [ $$n != safetensors ] || cp tests/golden/*.safetensors tests/data/*.safetensors build/fuzz/corpus/$$n/; \
	  echo "== $$t: $(FUZZ_SECONDS) s (log build/fuzz/$$n.log)"; \
	  if ! $$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
	      -artifact_prefix=build/fuzz/artifacts/$$n- build/fuzz/corpus/$$n \
	      $$(ls -d tests/fuzz/corpus/$$n tests/fuzz/regress/$$n 2>/dev/null) > build/fuzz/$$n.log 2>&1; then \
	    tail -40 build/fuzz/$$n.log; echo "fuzz: $$n found a failure (see build/fuzz/artifacts/)"; exit 1; fi; \
	  grep -E 'stat::number_of_executed_units|stat::new_units_added' build/fuzz/$$n.log | tr '\n' ' '; echo; \
	done

valgrind: deps
	@$(MAKE) --no-print-directory deps DEB_PKGS="$(VALGRIND_DEB_PKGS)"
	@$(MAKE) --no-print-directory $(TESTS)
	@set -e; for t in $(TESTS); do echo "== $$t (valgrind)"; \
	  CK_FORK=no valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
	    --errors-for-leak-kinds=definite,indirect $$t; done

# make soak       tests/soak/soak.py: a few minutes of mixed load with snapshots and a restore
soak: build/tscaled
	@python3 tests/soak/soak.py $(SOAK_ARGS)
.PHONY: fuzz valgrind soak
