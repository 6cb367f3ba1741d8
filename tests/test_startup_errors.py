"""Start-up and command-line mistakes get one clear message and one exit status: a model file
that cannot be loaded exits 2 however it is bad; --listen with an unknown transport names the
transport (not CURVE); gistctl --connect with one exits 2; a budget below the smallest usable
session budget is refused at start-up with the figure, which --help and stats state too; and
errors name the client's session id, never the store's."""
import json
import re
import os
import subprocess
import sys

import tap

sys.path.insert(0, os.path.join(tap.ROOT, "clients", "python"))
os.environ.setdefault("GISTD_PYPROTO", os.path.join(tap.BUILD, "gen", "python"))
import gistc  # noqa: E402

GISTD, GISTCTL = tap.tool("gistd"), tap.tool("gistctl")


def tiny():
    return tap.tiny_model(61)


def gistd(*args):
    p = subprocess.run([GISTD, "--listen", "tcp://127.0.0.1:*", *args], capture_output=True,
                       timeout=60)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def min_budget(model):
    rc, out, err = gistd("--model", model, "--help")
    assert rc == 0, err
    line = [ln for ln in out.splitlines() if "smallest usable session budget is" in ln]
    assert line, out
    return int(line[0].split(" is ")[1].split()[0])


def test_bad_model_files_exit_2():
    d = tap.tmpdir()
    garbage = os.path.join(d, "garbage.gguf")
    with open(garbage, "wb") as f:
        f.write(b"not a model at all" * 10)
    empty = os.path.join(d, "empty.gguf")
    open(empty, "wb").close()
    unreadable = os.path.join(d, "folder.gguf")
    os.mkdir(unreadable)
    for path in (os.path.join(d, "missing.gguf"), garbage, empty, unreadable):
        rc, out, err = gistd("--model", path)
        assert rc == 2 and out == "" and path in err, (path, rc, err)


def test_listen_names_the_transport():
    rc, _, err = gistd("--model", tiny(), "--listen", "foo://bar")
    assert rc == 2 and "unknown transport 'foo'" in err and "CURVE" not in err, err
    p = subprocess.run([GISTCTL, "--connect", "foo://bar", "stats"], capture_output=True,
                       timeout=60)
    assert p.returncode == 2 and b"foo://bar" in p.stderr, p.stderr


def test_smallest_session_budget():
    model = tiny()
    smallest = min_budget(model)
    # the model's lanes each need a block: 2 layers x 2 kv-heads x 64 rows x 16 x (K + V) f16
    assert smallest >= 4 * 64 * 16 * 2 * 2, smallest
    rc, out, err = gistd("--model", model, "--session-budget", str(smallest - 1))
    assert rc == 2 and str(smallest) in err and "--session-budget" in err, err
    assert "creating a session" not in err
    rc, out, err = gistd("--model", model, "--kv-budget", "1")
    assert rc == 2 and str(smallest) in err and "--kv-budget" in err, err
    # --help states every default, and the figure for the bundled model (as --help with
    # the model computes it)
    rc, out, err = gistd("--model", os.path.join(tap.ROOT, "models", "gistd-6m.gguf"), "--help")
    kib = re.search(r"smallest usable session budget is \d+ bytes \((\d+) KiB\)", out)
    assert rc == 0 and kib, out
    rc, out, err = gistd("--help")
    assert rc == 0
    for default in ("[" "tcp://127.0.0.1:5557]", "[auto]", "[64]", "[1M]", "[f16]", "[warn]",
                    "[1800]", f"{kib.group(1)} KiB for models/gistd-6m.gguf"):
        assert default in out, default
    with gistc.Daemon(GISTD, model, "--session-budget", str(smallest)) as d:
        p = subprocess.run([GISTCTL, "--connect", d.endpoint, "stats", "--json"],
                           capture_output=True, timeout=60)
        st = json.loads(p.stdout)
        assert st["session_min_bytes"] == smallest
        p = subprocess.run([GISTCTL, "--connect", d.endpoint, "stats"], capture_output=True,
                           timeout=60)
        assert b"at least" in p.stdout
        with gistc.Client(d.endpoint) as c:
            try:
                c.open_session(budget=smallest - 1)
                raise AssertionError("a budget below the smallest was accepted")
            except gistc.GistdError as e:
                assert str(smallest) in e.message and "smallest usable" in e.message


def test_errors_name_the_clients_session():
    model = tiny()
    smallest = min_budget(model)
    with gistc.Daemon(GISTD, model, "--policy", "full") as d:
        with gistc.Client(d.endpoint) as c:
            s = c.open_session(budget=smallest)
            try:
                for _ in s.generate("Once upon a time", max_tokens=2000):
                    pass
                raise AssertionError("a full cache grew past its budget")
            except gistc.GistdError as e:
                msg = e.message
            assert f"session {s.id}" in msg, msg
            for other in range(s.id + 1, s.id + 4):
                assert f"session {other}" not in msg, msg
            try:
                c._call(gistc.pb.Request(close=gistc.pb.CloseSession(session=0)), "ack")
                raise AssertionError("session 0 was closed")
            except gistc.GistdError as e:
                assert "session 0" not in e.message and "names no session" in e.message, \
                    e.message


tap.main(globals())
