"""tests/tap.py — the Python side of the project's TAP test harness.

A test module defines functions named test_*, and ends with `tap.main(globals())`.
A test fails on an exception (AssertionError included) and is skipped by raising
tap.Skip("why") for a reason of the machine, or tap.Missing("why") for want of shared data or
an installed package: with GISTD_REQUIRE_SHARED=1 (as CI runs) a Missing fails the test. Paths: tap.ROOT (repository), tap.BUILD (build folder), tap.shared(rel).
"""
import atexit
import os
import shutil
import sys
import subprocess
import tempfile
import traceback

ROOT = os.environ.get("GISTD_ROOT", os.getcwd())
BUILD = os.path.join(ROOT, os.environ.get("GISTD_BUILD", "build"))
SHARED = os.environ.get("GISTD_SHARED", os.path.join(ROOT, "..", "shared"))
REQUIRE_SHARED = os.environ.get("GISTD_REQUIRE_SHARED", "") not in ("", "0")


class Skip(Exception):
    pass


class Missing(Skip):
    """Shared data or an installed package is absent."""


def shared(rel):
    """Path of a file under the shared folder, or raise Missing when it is absent."""
    p = os.path.join(SHARED, rel)
    if not os.path.exists(p):
        raise Missing(f"{rel} not found under {SHARED}")
    return p


def tool(name):
    return os.path.join(BUILD, "bin", name)


def tmpdir():
    """A fresh temporary folder, removed when the test program exits."""
    d = tempfile.mkdtemp(prefix="gistd-pytest-")
    atexit.register(shutil.rmtree, d, True)
    return d


_tiny = {}


def tiny_model(seed, *extra):
    """A tiny random model (gist-model make-tiny: n_ctx 256, a byte-level vocabulary), made
    once per seed and options in this program's temporary folder."""
    key = (str(seed),) + extra
    if key not in _tiny:
        path = os.path.join(tmpdir(), f"tiny{seed}.gguf")
        subprocess.run([tool("gist-model"), "make-tiny", path, "--seed", str(seed), *extra],
                       check=True, stdout=subprocess.DEVNULL)
        _tiny[key] = path
    return _tiny[key]


def main(ns):
    tests = [(k, v) for k, v in ns.items() if k.startswith("test_") and callable(v)]
    failed = 0
    for i, (name, fn) in enumerate(tests, 1):
        try:
            fn()
            print(f"ok {i} - {name}", flush=True)
        except Missing as s:
            if not REQUIRE_SHARED:
                print(f"ok {i} - {name} # SKIP {s}", flush=True)
                continue
            failed += 1
            print(f"# GISTD_REQUIRE_SHARED=1, and {s}")
            print(f"not ok {i} - {name}", flush=True)
        except Skip as s:
            print(f"ok {i} - {name} # SKIP {s}", flush=True)
        except Exception:
            failed += 1
            for line in traceback.format_exc().rstrip().splitlines():
                print("# " + line)
            print(f"not ok {i} - {name}", flush=True)
    print(f"1..{len(tests)}")
    sys.exit(1 if failed else 0)
