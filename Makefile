# gistd — one non-recursive Makefile.
#
#   make deps    install the Debian packages the project needs (as root)
#   make         build everything under build/
#   make test    build and run every test; ends with `N passed, N failed, N skipped`
#   make asan    the same under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)
#   make check   the C test programs under valgrind: no leaks, no errors (GISTD_TEST_QUICK=1)
#   make tsan    the suite under ThreadSanitizer (build-tsan/; tests/tsan.supp says what it drops)
#   make fuzz    build the libFuzzer targets with clang (build-fuzz/) and run each for
#                FUZZ_SECONDS (default 60) from its seeds in fuzz/corpus/; FUZZ_TARGETS=name...
#                picks some; findings land in build-fuzz/crashes/ (fuzz/run.sh says more)
#   make fuzz-long  the same, FUZZ_SECONDS (default 1200) per target, growing the corpus kept
#                in build-fuzz/corpus/; the table of executions and coverage per target is
#                also written to build-fuzz/fuzz-summary.txt
#   make run     start gistd on the default model (RUN_KV_BUDGET, default 1G; snapshots in
#                var/snapshots) and gistd-http (HTTP=HOST:PORT) before it
#   make install [PREFIX=/usr/local] [DESTDIR=]   the programs, libgistc and the Python client;
#                make uninstall removes them
#   make format  clang-format every C file in place
#
# Each bench/bench_NAME.c becomes build/bin/bench_NAME (run by the scripts in bench/).
#
# Each module folder's *.c files (but the fuzz targets, fuzz_*.c) form one static library;
# files named *_avx2.c and *_avx512.c are compiled for those instruction sets and chosen at
# run time.

BUILD    ?= build
CC       ?= cc
OPT      ?= -O2
SAN      ?=
PYTHON   ?= /usr/bin/python3

PKGS     := libzmq libprotobuf-c jemalloc openblas
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wpointer-arith \
            -Wformat=2 -Wundef -Wno-unused-parameter
CFLAGS   ?= $(OPT) -g
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -I. -I$(BUILD)/gen $(WARN) -fopenmp -fPIC \
              $(PKG_CFLAGS) $(SAN) $(CFLAGS)
LDLIBS   := $(PKG_LIBS) -fopenmp -lm -lpthread
AVX2_FLAGS   := -mavx2 -mfma -mf16c
AVX512_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c -mavx2

# Libraries, in link order (dependents first).
MODULES  := runtime policy kvstore model common
lib_srcs  = $(filter-out $(1)/fuzz_%.c,$(wildcard $(1)/*.c))
lib_objs  = $(patsubst %.c,$(BUILD)/obj/%.o,$(call lib_srcs,$(1)))
LIBS     := $(foreach m,$(MODULES),$(if $(call lib_srcs,$(m)),$(BUILD)/lib/libgist_$(m).a))

GIST_MODEL_SRCS := $(wildcard tools/gist-model/*.c)
BENCH_SRCS := $(wildcard bench/*.c)
BENCHES  := $(patsubst bench/%.c,$(BUILD)/bin/%,$(BENCH_SRCS))
BINS     := $(BUILD)/bin/gist-model $(BENCHES)

# The daemon and its clients (see the protocol section below).
GISTD_SRCS   := $(filter-out daemon/fuzz_%.c,$(wildcard daemon/*.c))
GISTC_SRCS   := $(wildcard clients/libgistc/*.c)
GISTCTL_SRCS := $(wildcard clients/gistctl/*.c)
PROTO_C      := $(BUILD)/gen/proto/gistd.pb-c.c
PROTO_H      := $(BUILD)/gen/proto/gistd.pb-c.h
PROTO_PY     := $(BUILD)/gen/python/gistd_pb2.py
PROTO_LIB    := $(BUILD)/lib/libgist_proto.a
GISTC_LIB    := $(BUILD)/lib/libgistc.a
GISTC_PC     := $(BUILD)/gistc.pc
BINS     += $(if $(GISTD_SRCS),$(BUILD)/bin/gistd) $(if $(GISTCTL_SRCS),$(BUILD)/bin/gistctl)
BINS     += $(if $(wildcard clients/gistd-http/*.c),$(BUILD)/bin/gistd-http)

TEST_SRCS := $(wildcard tests/test_*.c)
TESTS     := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRCS))
TEST_LIB  := $(BUILD)/obj/tests/check.o

.PHONY: all deps deps-train test asan fuzz fuzz-long fuzz-build check tsan run install uninstall \
        format clean
.SECONDARY:
all: $(LIBS) $(PROTO_LIB) $(PROTO_PY) $(if $(GISTC_SRCS),$(GISTC_LIB) $(GISTC_PC)) $(BINS) \
     $(TESTS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(AVX2_FLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(AVX512_FLAGS) -MMD -MP -c $< -o $@

define lib_rule
$(BUILD)/lib/libgist_$(1).a: $(call lib_objs,$(1))
	@mkdir -p $$(dir $$@)
	rm -f $$@ && ar rcs $$@ $$^
endef
$(foreach m,$(MODULES),$(eval $(call lib_rule,$(m))))

$(BUILD)/bin/gist-model: $(patsubst %.c,$(BUILD)/obj/%.o,$(GIST_MODEL_SRCS)) $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bin/bench_%: $(BUILD)/obj/bench/bench_%.o $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(TEST_LIB) $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

# ---- protocol, daemon, clients
# proto/gistd.proto is compiled at build time: C (protobuf-c) for the daemon, libgistc and the
# tests, Python for the Python client. Objects that include the generated header wait for it.
$(PROTO_C) $(PROTO_H) &: proto/gistd.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --proto_path=. --c_out=$(BUILD)/gen $<

$(PROTO_PY): proto/gistd.proto
	@mkdir -p $(dir $@)
	protoc --proto_path=proto --python_out=$(dir $@) $<

$(BUILD)/obj/proto/gistd.pb-c.o: $(PROTO_C)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(patsubst %.c,$(BUILD)/obj/%.o,$(GISTD_SRCS) $(GISTC_SRCS) $(GISTCTL_SRCS) $(TEST_SRCS)): \
    | $(PROTO_H)

$(PROTO_LIB): $(BUILD)/obj/proto/gistd.pb-c.o
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/bin/gistd: $(patsubst %.c,$(BUILD)/obj/%.o,$(GISTD_SRCS)) $(PROTO_LIB) $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

# libgistc.a carries the protocol code, the error table and the key-file reader, so a client
# links it alone (with the libraries gistc.pc names).
$(GISTC_LIB): $(patsubst %.c,$(BUILD)/obj/%.o,$(GISTC_SRCS)) $(BUILD)/obj/proto/gistd.pb-c.o \
              $(BUILD)/obj/common/err.o $(BUILD)/obj/common/keyfile.o
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(GISTC_PC): Makefile
	@mkdir -p $(dir $@)
	printf '%s\n' 'prefix=$(CURDIR)' 'libdir=$${prefix}/$(BUILD)/lib' \
	    'Name: gistc' 'Description: C client library for gistd' 'Version: 0.1' \
	    'Requires.private: libzmq libprotobuf-c' \
	    'Cflags: -I$${prefix} -I$${prefix}/$(BUILD)/gen' \
	    'Libs: -L$${libdir} -lgistc -lzmq -lprotobuf-c' > $@

$(BUILD)/bin/gistctl: $(patsubst %.c,$(BUILD)/obj/%.o,$(GISTCTL_SRCS)) $(GISTC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

# gistd-http, the HTTP gateway: a client of gistd like gistctl, with libmicrohttpd and jansson.
GISTD_HTTP_SRCS := $(wildcard clients/gistd-http/*.c)
HTTP_PKGS   := libmicrohttpd jansson
HTTP_CFLAGS := $(shell pkg-config --cflags $(HTTP_PKGS) 2>/dev/null)
HTTP_LIBS   := $(shell pkg-config --libs $(HTTP_PKGS) 2>/dev/null)
GISTD_HTTP_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(GISTD_HTTP_SRCS))
$(GISTD_HTTP_OBJS): ALL_CFLAGS += $(HTTP_CFLAGS)
$(GISTD_HTTP_OBJS): | http-deps
.PHONY: http-deps
http-deps:
	@pkg-config --exists $(HTTP_PKGS) || { echo "gistd-http needs libmicrohttpd and jansson" \
	    "(Debian: libmicrohttpd-dev libjansson-dev; 'make deps' installs them)" >&2; exit 1; }
$(BUILD)/bin/gistd-http: $(GISTD_HTTP_OBJS) $(GISTC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS) $(HTTP_LIBS)

# test_gistc_text checks the clients' text handling (libgistc's text.c) alone.
$(BUILD)/tests/test_gistc_text: $(BUILD)/obj/tests/test_gistc_text.o $(GISTC_LIB) $(TEST_LIB) $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

# bench_depth runs sessions the way gist-model does (its kvrun).
$(BUILD)/bin/bench_depth: $(BUILD)/obj/bench/bench_depth.o $(BUILD)/obj/tools/gist-model/kvrun.o \
                          $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

# bench_daemon, bench_load and bench_http drive a real gistd through libgistc.
$(BUILD)/bin/bench_daemon $(BUILD)/bin/bench_load $(BUILD)/bin/bench_http: $(BUILD)/bin/%: \
        $(BUILD)/obj/bench/%.o $(GISTC_LIB) $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

# Daemon tests drive a real gistd through libgistc.
DAEMON_TESTS := $(filter $(BUILD)/tests/test_daemon%,$(TESTS))
$(DAEMON_TESTS): $(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(TEST_LIB) $(GISTC_LIB) $(PROTO_LIB) \
                                   $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

test: all
	@bash tests/run.sh $(BUILD)

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	    test

# ---- fuzzing, valgrind, ThreadSanitizer (see the header)
# Fuzz targets are model/fuzz_*.c and kvstore/fuzz_*.c (kept out of the libraries by lib_srcs).
# In build-fuzz/ clang compiles them and the parsers they reach (FUZZ_DEPS: the GGUF reader
# and writer, hparams, the tokenizer, the KV store) with address+undefined and libFuzzer's
# coverage, and links each target with -fsanitize=fuzzer. The same target files, compiled
# normally, are linked into tests/test_fuzz_regress, which replays the corpora.
FUZZ_SRCS    := $(wildcard model/fuzz_*.c kvstore/fuzz_*.c)
FUZZ_DEPS    := $(filter-out $(FUZZ_SRCS),$(wildcard common/*.c kvstore/*.c model/gguf*.c \
                model/hparams.c model/tok*.c))
FUZZERS      := $(addprefix $(BUILD)/fuzz/,$(basename $(notdir $(FUZZ_SRCS))))
FUZZ_SECONDS ?= 60
$(BUILD)/tests/test_fuzz_regress: $(BUILD)/obj/tests/test_fuzz_regress.o \
                                  $(patsubst %.c,$(BUILD)/obj/%.o,$(FUZZ_SRCS)) $(TEST_LIB) $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

define fuzz_rule
$(BUILD)/fuzz/$(basename $(notdir $(1))): $(patsubst %.c,$(BUILD)/obj/%.o,$(1) $(FUZZ_DEPS))
	@mkdir -p $$(dir $$@)
	$$(CC) $$(ALL_CFLAGS) -fsanitize=fuzzer -o $$@ $$^ $$(LDLIBS)
endef
$(foreach f,$(FUZZ_SRCS),$(eval $(call fuzz_rule,$(f))))

# The request target (daemon/fuzz_*.c) reaches the whole daemon: every library, the protocol
# code and the daemon's objects but main.o. clang 14 cannot build the SIMD kernels (its
# __builtin_cpu_supports does not know "f16c"; it ignores `#pragma GCC target`), so in
# build-fuzz gcc compiles them (FUZZ_GCC), without sanitizers or coverage: the request
# fuzzer only needs them to run.
FUZZ_DMN_SRCS := $(wildcard daemon/fuzz_*.c)
FUZZ_DMN_DEPS := $(patsubst %.c,$(BUILD)/obj/%.o,$(filter-out daemon/main.c,$(GISTD_SRCS))) \
                 $(PROTO_LIB) $(LIBS)
FUZZERS       += $(addprefix $(BUILD)/fuzz/,$(basename $(notdir $(FUZZ_DMN_SRCS))))
$(patsubst %.c,$(BUILD)/obj/%.o,$(FUZZ_DMN_SRCS)): | $(PROTO_H)
$(BUILD)/fuzz/fuzz_%: $(BUILD)/obj/daemon/fuzz_%.o $(FUZZ_DMN_DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)
$(BUILD)/tests/test_fuzz_regress_daemon: $(BUILD)/obj/tests/test_fuzz_regress_daemon.o \
        $(patsubst %.c,$(BUILD)/obj/%.o,$(FUZZ_DMN_SRCS)) $(TEST_LIB) $(FUZZ_DMN_DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)
FUZZ_GCC := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard model/kernels*.c model/attn_ops*.c))
ifneq ($(findstring fuzzer-no-link,$(SAN)),)
$(FUZZ_GCC): override CC := gcc
$(FUZZ_GCC): ALL_CFLAGS := $(filter-out -fsanitize=% -fno-sanitize-recover=%,$(ALL_CFLAGS))
endif

fuzz:
	$(MAKE) BUILD=build-fuzz CC=clang OPT=-O1 SAN="-fsanitize=fuzzer-no-link,address,undefined \
	    -fno-sanitize-recover=undefined -fno-omit-frame-pointer -DGISTD_FUZZ_ENTRY" fuzz-build
	bash fuzz/run.sh build-fuzz $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-long:
	$(MAKE) fuzz FUZZ_SECONDS=$(if $(filter command line environment,$(origin FUZZ_SECONDS)),$(FUZZ_SECONDS),1200)

fuzz-build: $(FUZZERS)

# make check: every C test program under valgrind (tests/run.sh puts GISTD_WRAP before each;
# Python tests are left to make test). Leaks count when definite or indirect; jemalloc's
# malloc is checked like libc's (--soname-synonyms); OMP_WAIT_POLICY=passive keeps libgomp's
# threads from spinning on valgrind's one CPU. GISTD_TEST_QUICK=1 shrinks the slowest workloads
# (test_kvstore_random). The daemon tests (test_daemon*) run unwrapped: they drive a gistd
# process at full speed and assert on its batching, which a client slowed 30x changes.
VALGRIND := valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
            --errors-for-leak-kinds=definite,indirect --soname-synonyms=somalloc=*jemalloc* \
            --suppressions=tests/valgrind.supp
check: all
	OMP_WAIT_POLICY=passive GISTD_TEST_QUICK=1 GISTD_WRAP="$(VALGRIND)" \
	    GISTD_NOWRAP='test_daemon*' bash tests/run.sh $(BUILD)

# make tsan: the suite (C and Python) built with ThreadSanitizer in build-tsan/. The project's own
# code starts no threads; the threads are libgomp's (kernels, forward pass), OpenBLAS's (on
# libgomp's) and ZeroMQ's I/O threads, none of them built for TSan, so tests/tsan.supp drops
# the false reports their invisible synchronisation causes (each entry says why). OpenMP keeps
# its real thread counts: OMP_THREAD_LIMIT=1 would hide the regions as well, but OpenBLAS then
# spins waiting for workers it never gets. The matmul kernels and their tests are compiled
# without instrumentation (TSAN_PLAIN): TSan cannot judge their OpenMP regions, and instrumented
# they make test_kernels run for over ten minutes. history_size=7 keeps the workers' stacks
# whole, which the suppressions match on.
TSAN_PLAIN := $(wildcard model/kernels*.c tests/test_kernels*.c)
ifneq ($(findstring -fsanitize=thread,$(SAN)),)
$(patsubst %.c,$(BUILD)/obj/%.o,$(TSAN_PLAIN)): ALL_CFLAGS := \
    $(filter-out -fsanitize=thread,$(ALL_CFLAGS))
endif
tsan:
	$(MAKE) BUILD=build-tsan OPT=-O1 SAN="-fsanitize=thread -fno-omit-frame-pointer" all
	TSAN_OPTIONS="suppressions=$(CURDIR)/tests/tsan.supp history_size=7 halt_on_error=0" \
	    bash tests/run.sh build-tsan

# The project's own model when models/ has it, else the shared stories260K.
DEFAULT_MODEL = $(firstword $(wildcard models/gistd-6m.gguf) ../shared/models/stories260K-f32.gguf)
# make run: a bounded daemon that keeps its sessions — a KV budget of RUN_KV_BUDGET (1G unless
# given) and snapshots in the tree's own var/snapshots (ignored by git); a stop snapshots every
# session and the next `make run` restores them — on tcp://127.0.0.1:5557, and gistd-http on
# $(HTTP) (default 127.0.0.1:8080) in front of it; Ctrl-C stops both.
RUN_KV_BUDGET ?= 1G
HTTP ?= 127.0.0.1:8080
run: all
	@mkdir -p var/snapshots
	@$(BUILD)/bin/gistd --model $(or $(MODEL),$(DEFAULT_MODEL)) --kv-budget $(RUN_KV_BUDGET) \
	    --snapshot-dir var/snapshots & gistd=$$!; \
	    trap 'kill $$gistd 2>/dev/null; wait $$gistd' EXIT; \
	    $(BUILD)/bin/gistd-http --listen $(HTTP)

# make install [PREFIX=/usr/local] [DESTDIR=...]: the programs (gistd, gistctl, gist-model,
# gistd-http when it is built), libgistc with its header and gistc.pc, and the Python client
# (gistc with its generated gistd_pb2) where Debian's python3 finds modules: for /usr,
# /usr/lib/python3/dist-packages; for any other prefix, PREFIX/lib/python3.X/dist-packages
# (/usr/local/lib/python3.11/dist-packages on Debian 12). make uninstall removes them again.
PREFIX  ?= /usr/local
DESTDIR ?=
PY_VER   = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYDIR   ?= $(if $(filter /usr,$(PREFIX)),/usr/lib/python3/dist-packages,$(PREFIX)/lib/python$(PY_VER)/dist-packages)
INSTALL_BINS := gistd gistctl gist-model gistd-http
I_BIN := $(DESTDIR)$(PREFIX)/bin
I_LIB := $(DESTDIR)$(PREFIX)/lib
I_INC := $(DESTDIR)$(PREFIX)/include/gistd
I_PY  := $(DESTDIR)$(PYDIR)
install: all
	install -d $(I_BIN) $(I_LIB)/pkgconfig $(I_INC)/common $(I_PY)
	for b in $(INSTALL_BINS); do \
	    if [ -x $(BUILD)/bin/$$b ]; then install -m 755 $(BUILD)/bin/$$b $(I_BIN)/; fi; done
	install -m 644 $(GISTC_LIB) $(I_LIB)/
	install -m 644 clients/libgistc/gistc.h $(I_INC)/
	install -m 644 common/err.h $(I_INC)/common/
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$${prefix}/lib' 'includedir=$${prefix}/include' \
	    'Name: gistc' 'Description: C client library for gistd' 'Version: 0.1' \
	    'Requires.private: libzmq libprotobuf-c' 'Cflags: -I$${includedir}/gistd' \
	    'Libs: -L$${libdir} -lgistc -lzmq -lprotobuf-c' > $(I_LIB)/pkgconfig/gistc.pc
	install -m 644 clients/python/gistc.py $(PROTO_PY) $(I_PY)/

uninstall:
	rm -f $(addprefix $(I_BIN)/,$(INSTALL_BINS)) $(I_LIB)/libgistc.a \
	    $(I_LIB)/pkgconfig/gistc.pc $(I_INC)/gistc.h $(I_INC)/common/err.h \
	    $(I_PY)/gistc.py $(I_PY)/gistd_pb2.py
	rm -rf $(I_PY)/__pycache__/gistc.* $(I_PY)/__pycache__/gistd_pb2.*
	-rmdir $(I_INC)/common $(I_INC) 2>/dev/null

DEB_PKGS := build-essential pkg-config libjemalloc-dev libzmq3-dev libprotobuf-c-dev \
            protobuf-c-compiler libopenblas-openmp-dev python3 python3-numpy gnuplot-nox \
            protobuf-compiler python3-zmq python3-protobuf clang-14 libclang-rt-14-dev valgrind \
            libmicrohttpd-dev libjansson-dev python3-prometheus-client
TRAIN_PKGS := python3-torch python3-sentencepiece python3-jinja2
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "all packages present"; fi

deps-train:
	@$(MAKE) --no-print-directory deps DEB_PKGS="$(TRAIN_PKGS)"

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-asan build-fuzz build-tsan

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
