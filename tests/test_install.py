"""make install puts gistd, gistctl, gist-model, libgistc (header and gistc.pc) and the Python
client under PREFIX, where a C program builds against gistc.pc alone and Debian's python3
imports gistc without any sys.path editing; make uninstall takes every file away again."""
import os
import subprocess

import tap


def make(*args):
    p = subprocess.run(["make", "--no-print-directory", "-C", tap.ROOT,
                        "BUILD=" + os.path.relpath(tap.BUILD, tap.ROOT), *args],
                       capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    return p.stdout.decode()


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs)


def test_install_and_uninstall():
    prefix = os.path.join(tap.tmpdir(), "prefix")
    make("install", "PREFIX=" + prefix)
    have = files_under(prefix)
    for want in ("bin/gistd", "bin/gistctl", "bin/gist-model", "lib/libgistc.a",
                 "lib/pkgconfig/gistc.pc", "include/gistd/gistc.h",
                 "include/gistd/common/err.h"):
        assert want in have, (want, have)
    pys = [f for f in have if f.endswith("/gistc.py") or f.endswith("/gistd_pb2.py")]
    assert len(pys) == 2 and all("/dist-packages/" in f for f in pys), have
    for b in ("gistd", "gistctl", "gist-model"):
        p = subprocess.run([os.path.join(prefix, "bin", b), "--help"], capture_output=True)
        assert p.returncode == 0, b

    # a C client built from the installed header, library and gistc.pc alone
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(prefix, "lib", "pkgconfig"))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "gistc"], env=env,
                           capture_output=True, check=True).stdout.decode().split()
    src = os.path.join(tap.tmpdir(), "client.c")
    with open(src, "w") as f:
        f.write('#include <gistc.h>\n#include <stdio.h>\n'
                'int main(void) { char b[32]; puts(gc_format_size(3 << 20, b, sizeof b));'
                ' return 0; }\n')
    exe = src[:-2]
    # a sanitizer build (make asan, make tsan) installs an instrumented library: link alike
    syms = subprocess.run(["nm", "-u", os.path.join(prefix, "lib", "libgistc.a")],
                          capture_output=True, check=True).stdout
    san = (["-fsanitize=address,undefined"] if b"__asan_init" in syms else
           ["-fsanitize=thread"] if b"__tsan_init" in syms else [])
    subprocess.run(["cc", *san, "-o", exe, src, *flags], check=True, cwd=tap.tmpdir())
    assert subprocess.run([exe], capture_output=True).stdout == b"3.00 MiB\n"

    # the Python client imports from its installed folder with its own pb2, nothing else
    pydir = os.path.join(prefix, os.path.dirname(pys[0]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GISTD_")}
    env["PYTHONPATH"] = pydir  # stands for the site folder PREFIX=/usr/local installs into
    p = subprocess.run(["/usr/bin/python3", "-c", "import gistc, gistd_pb2, os; "
                        "print(os.path.dirname(gistd_pb2.__file__))"],
                       env=env, capture_output=True, cwd="/")
    assert p.returncode == 0 and p.stdout.decode().strip() == pydir, p.stderr.decode()

    # with the default prefix the Python folder is one Debian's python3 already searches
    out = make("-n", "install", "PREFIX=/usr/local", "DESTDIR=/nonexistent")
    site = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('\\n'.join(sys.path))"],
                          capture_output=True, check=True).stdout.decode().split()
    line = [ln for ln in out.splitlines() if "gistc.py" in ln and "install -m 644" in ln][0]
    dest = line.split()[-1].rstrip("/")
    assert dest.startswith("/nonexistent/")
    assert dest[len("/nonexistent"):] in site, (dest, site)

    make("uninstall", "PREFIX=" + prefix)
    assert files_under(prefix) == [], files_under(prefix)


tap.main(globals())
