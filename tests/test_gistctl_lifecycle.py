"""What a new user meets in the first hour, against a real gistd and the real gistctl: a
command closes the session it opened on every path (failure, Ctrl-C, a daemon that stops
answering); idle sessions are closed after --idle-timeout (snapshotted first when there is a
snapshot folder); a long prefill does not time the client out; SIGTERM delivers CANCELLED
before the socket closes; snapshot/close/restore keep what the user asked to keep; chat off a
terminal marks its turns and prints compactions between them; top's TOK/S moves while a
session generates."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import tap

sys.path.insert(0, os.path.join(tap.ROOT, "clients", "python"))
os.environ.setdefault("GISTD_PYPROTO", os.path.join(tap.BUILD, "gen", "python"))
import gistc  # noqa: E402

GISTCTL = tap.tool("gistctl")


def tiny(seed="51"):
    return tap.tiny_model(seed)


def ctl(ep, *args, inp=None, timeout_ms=30000):
    p = subprocess.run([GISTCTL, "--connect", ep, "--timeout", str(timeout_ms), *args],
                       capture_output=True, input=inp, timeout=120)
    return p.returncode, p.stdout, p.stderr.decode()


def sessions(ep):
    rc, out, err = ctl(ep, "sessions", "--json")
    assert rc == 0, err
    return json.loads(out)


class Gen:
    """A gistctl gen running in the background; its stdout is read as it comes (a client
    that stops reading would stall on a full pipe, not on the daemon)."""

    def __init__(self, ep, *args, timeout_ms=30000):
        self.proc = subprocess.Popen([GISTCTL, "--connect", ep, "--timeout", str(timeout_ms),
                                      "gen", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.out = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):
            self.out += chunk

    def wait_for_output(self):
        wait_until(lambda: len(self.out) > 0, "gistctl printing tokens")

    def wait(self, timeout):
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc, self.proc.stderr.read().decode()


def wait_until(cond, what, deadline_s=20):
    end = time.time() + deadline_s
    while time.time() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {deadline_s} s: {what}")


def test_gen_closes_its_session_on_failure():
    with gistc.Daemon(tap.tool("gistd"), tiny()) as d:
        # refused by the daemon after the session was opened
        rc, _, err = ctl(d.endpoint, "gen", "--prompt", "hi", "-n", "5", "--temp", "-1")
        assert rc != 0, err
        assert sessions(d.endpoint) == []
        # refused by the daemon: a stop string longer than it allows
        rc, _, err = ctl(d.endpoint, "gen", "--prompt", "hi", "-n", "5", "--stop", "x" * 300)
        assert rc == 1 and "stop string" in err, err
        assert sessions(d.endpoint) == []


# The long generations below are greedy: the tiny random model never samples its EOS then.


def test_gen_closes_its_session_on_ctrl_c():
    with gistc.Daemon(tap.tool("gistd"), tiny()) as d:
        p = Gen(d.endpoint, "--prompt", "Once upon a time", "-n", "100000000", "--temp", "0")
        p.wait_for_output()
        assert len(sessions(d.endpoint)) == 1
        p.proc.send_signal(signal.SIGINT)
        rc, err = p.wait(timeout=20)
        assert rc == 130 and "interrupted" in err, (rc, err)
        assert sessions(d.endpoint) == []


def test_gen_closes_its_session_after_a_timeout():
    with gistc.Daemon(tap.tool("gistd"), tiny()) as d:
        p = Gen(d.endpoint, "--prompt", "Once upon a time", "-n", "100000000", "--temp", "0",
                timeout_ms=1000)
        p.wait_for_output()
        d.proc.send_signal(signal.SIGSTOP)  # the daemon stops answering
        try:
            rc, err = p.wait(timeout=30)
        finally:
            d.proc.send_signal(signal.SIGCONT)
        assert rc == 3 and "no reply" in err, (rc, err)
        # the close gistctl sent on its way out reaches the daemon once it runs again
        wait_until(lambda: sessions(d.endpoint) == [], "the timed-out gen's session closed")


def test_idle_timeout_snapshots_then_frees():
    snaps = tap.tmpdir()
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--idle-timeout", "4",
                      "--snapshot-dir", snaps) as d:
        ep = d.endpoint
        empty = json.loads(ctl(ep, "stats", "--json")[1])["kv_used_bytes"]
        rc, out, err = ctl(ep, "open", "--name", "left")
        assert rc == 0, err
        sid = int(out)
        rc, gen_out, _ = ctl(ep, "gen", "--session", str(sid), "--prompt", "Once upon a time",
                             "-n", "8", "--temp", "0")
        assert rc == 0
        text = ctl(ep, "transcript", str(sid))[1]
        live = sessions(ep)
        assert [s["state"] for s in live] == ["idle"] and live[0]["idle_s"] < 4
        rc, out, _ = ctl(ep, "sessions")
        assert rc == 0 and b"IDLE" in out.splitlines()[0]
        wait_until(lambda: [s["state"] for s in sessions(ep)] == ["closed"],
                   "the idle session closed")
        st = json.loads(ctl(ep, "stats", "--json")[1])
        assert st["sessions"] == 0 and st["idle_timeout_s"] == 4
        assert st["kv_used_bytes"] == empty, (st["kv_used_bytes"], empty)
        assert os.path.exists(os.path.join(snaps, f"session-{sid}.gistd"))
        rc, _, err = ctl(ep, "gen", "--session", str(sid), "--prompt", "x", "-n", "1")
        assert rc == 1 and "restore" in err, err
        rc, out, err = ctl(ep, "restore", str(sid))
        assert rc == 0, err
        assert ctl(ep, "transcript", str(sid))[1] == text
    # without a snapshot folder an idle session is freed
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--idle-timeout", "1") as d:
        assert ctl(d.endpoint, "open")[0] == 0
        wait_until(lambda: sessions(d.endpoint) == [], "the idle session freed")


def test_long_prefill_outlasts_the_client_timeout():
    words = "the cat sat on a mat and then it ran away . ".split()
    # long enough that one token a step outlasts the client's 1 s even on an idle machine
    text = " ".join(words[(i * 7) % len(words)] for i in range(15000))
    path = os.path.join(tap.tmpdir(), "long.txt")
    with open(path, "w") as f:
        f.write(text)
    # one token a step: the prefill takes seconds, the client waits 1 s of silence at most
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--prefill-chunk", "1", "--threads", "1") as d:
        t0 = time.time()
        rc, out, err = ctl(d.endpoint, "gen", "--prompt-file", path, "-n", "4", "--temp", "0",
                           timeout_ms=1000)
        took = time.time() - t0
        assert rc == 0, err
        assert took > 1.0, f"the prefill took {took:.2f} s: too short to test the timeout"
        st = json.loads(ctl(d.endpoint, "stats", "--json")[1])
        assert st["tokens_prefilled"] > 5000
        # a prompt from standard input is the same prompt as --prompt gives
        short = " ".join(text.split()[:100])
        rc, out1, err = ctl(d.endpoint, "gen", "--prompt", short, "-n", "4", "--temp", "0")
        assert rc == 0, err
        rc, out2, err = ctl(d.endpoint, "gen", "--prompt-file", "-", "-n", "4", "--temp", "0",
                            inp=short.encode())
        assert rc == 0 and out2 == out1, err
        rc, _, err = ctl(d.endpoint, "gen", "--prompt-file", path + ".missing", "-n", "4")
        assert rc == 2 and "cannot open" in err
        # score reads its text the same way: a file, or standard input (a tenth of the text:
        # at one token a step the whole of it took over 120 s on a loaded machine)
        part = text[:len(text) // 10]
        with open(path, "w") as f:
            f.write(part)
        rc, from_file, err = ctl(d.endpoint, "score", "--prompt-file", path)
        assert rc == 0 and b"ppl: " in from_file, err
        rc, from_stdin, err = ctl(d.endpoint, "score", "--prompt-file", "-", inp=part.encode())
        assert rc == 0, err
        ppl = [ln for ln in from_file.splitlines() if ln.startswith(b"ppl")]
        assert ppl == [ln for ln in from_stdin.splitlines() if ln.startswith(b"ppl")]
        assert sessions(d.endpoint) == []


def test_sigterm_delivers_cancelled():
    with gistc.Daemon(tap.tool("gistd"), tiny()) as d:
        p = Gen(d.endpoint, "--prompt", "Once upon a time", "-n", "100000000", "--temp", "0")
        p.wait_for_output()
        t0 = time.time()
        assert d.stop() == 0
        rc, err = p.wait(timeout=30)
        assert time.time() - t0 < 8, "the client waited for a timeout"
        assert rc == 1 and "cancelled" in err and "no reply" not in err, (rc, err)


def test_snapshot_close_restore():
    snaps = tap.tmpdir()
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--snapshot-dir", snaps) as d:
        ep = d.endpoint
        sid = ctl(ep, "open", "--name", "keep")[1].decode().strip()
        assert ctl(ep, "gen", "--session", sid, "--prompt", "Once", "-n", "6", "--temp",
                   "0")[0] == 0
        text = ctl(ep, "transcript", sid)[1]
        rc, out, err = ctl(ep, "snapshot", sid)
        assert rc == 0, err
        # restoring a live session says what to do instead
        rc, _, err = ctl(ep, "restore", sid)
        assert rc == 1 and "is live" in err and "--as-new" in err, err
        # a second copy beside it
        rc, out, err = ctl(ep, "restore", sid, "--as-new")
        assert rc == 0, err
        copy = out.decode().split()[-1]
        assert copy != sid and ctl(ep, "transcript", copy)[1] == text
        assert ctl(ep, "close", copy)[0] == 0
        # close keeps the snapshot it asked for; sessions lists it as closed
        assert ctl(ep, "close", sid)[0] == 0
        listed = {s["id"]: s for s in sessions(ep)}
        assert list(listed) == [int(sid)] and listed[int(sid)]["state"] == "closed"
        assert listed[int(sid)]["name"] == "keep"
        rc, out, _ = ctl(ep, "sessions")
        assert b"closed" in out
        rc, out, err = ctl(ep, "restore", sid)
        assert rc == 0, err
        assert ctl(ep, "transcript", sid)[1] == text
        # --forget removes it
        assert ctl(ep, "close", sid, "--forget")[0] == 0
        assert sessions(ep) == []
        rc, _, err = ctl(ep, "restore", sid)
        assert rc == 1 and "no snapshot" in err, err
        # a session never snapshotted on request leaves nothing behind
        other = ctl(ep, "open")[1].decode().strip()
        assert ctl(ep, "close", other)[0] == 0
        assert sessions(ep) == []
    # a closed session stays closed across a restart, and comes back on request
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--snapshot-dir", snaps) as d:
        sid = ctl(d.endpoint, "open")[1].decode().strip()
        assert ctl(d.endpoint, "snapshot", sid)[0] == 0
        assert ctl(d.endpoint, "close", sid)[0] == 0
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--snapshot-dir", snaps) as d:
        assert [s["state"] for s in sessions(d.endpoint)] == ["closed"]
        assert ctl(d.endpoint, "restore", sid)[0] == 0
        assert [s["state"] for s in sessions(d.endpoint)] == ["idle"]


def test_chat_off_a_terminal():
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--block-rows", "16") as d:
        rc, out, err = ctl(d.endpoint, "chat", "--policy", "window", "--param", "recent=32",
                           "--budget", "48K", "-n", "60", "--temp", "0.9", "--seed", "7",
                           inp=b"tell me a story\nand another one\nand a third\n")
        assert rc == 0, err
        turns = out.split(b"\n> ")
        assert out.startswith(b"> tell me a story\n") and len(turns) == 3, out
        assert b"> and another one\n" in out and b"> and a third\n" in out
        # compactions: one line per turn at most, after the reply
        lines = [ln for ln in err.splitlines() if "compaction" in ln]
        assert 0 < len(lines) <= 3, err
        # --seed repeats a sampled chat
        rc, again, _ = ctl(d.endpoint, "chat", "--policy", "window", "--param", "recent=32",
                           "--budget", "48K", "-n", "60", "--temp", "0.9", "--seed", "7",
                           inp=b"tell me a story\nand another one\nand a third\n")
        assert rc == 0 and again == out
        assert sessions(d.endpoint) == []


def test_top_tokens_per_second_while_generating():
    with gistc.Daemon(tap.tool("gistd"), tiny()) as d:
        p = Gen(d.endpoint, "--prompt", "Once upon a time", "-n", "100000000", "--temp", "0")
        try:
            p.wait_for_output()
            wait_until(lambda: any(s["tokens_per_s"] > 0 for s in sessions(d.endpoint)),
                       "a generating session's tokens/s above 0")
            rc, out, _ = ctl(d.endpoint, "top", "--count", "1")
            row = [ln for ln in out.decode().splitlines() if " generate " in ln]
            assert rc == 0 and row and float(row[0].split()[-1]) > 0, out
        finally:
            p.proc.send_signal(signal.SIGINT)
            p.wait(timeout=20)


def test_transcript_tokens_end_with_a_newline():
    with gistc.Daemon(tap.tool("gistd"), tiny()) as d:
        sid = ctl(d.endpoint, "open")[1].decode().strip()
        assert ctl(d.endpoint, "gen", "--session", sid, "--prompt", "hi", "-n", "3")[0] == 0
        rc, out, _ = ctl(d.endpoint, "transcript", sid, "--tokens")
        assert rc == 0 and out.endswith(b"\n") and len(out.split()) >= 3


tap.main(globals())
