"""gistctl against a real gistd on a loopback port: `gen` prints what `gist-model generate`
prints after the prompt, `stats --json` is one JSON object with the budget figures, the
session commands work, and a missing daemon or bad arguments give clear exit statuses."""
import json
import os
import subprocess
import sys

import tap

sys.path.insert(0, os.path.join(tap.ROOT, "clients", "python"))
os.environ.setdefault("GISTD_PYPROTO", os.path.join(tap.BUILD, "gen", "python"))
import gistc  # noqa: E402

GISTCTL = tap.tool("gistctl")


def tiny(seed="51"):
    return tap.tiny_model(seed)


def ctl(ep, *args, inp=None):
    p = subprocess.run([GISTCTL, "--connect", ep, "--timeout", "30000", *args],
                       capture_output=True, input=inp, timeout=120)
    return p.returncode, p.stdout, p.stderr.decode()


def reference(model, prompt, n):
    out = subprocess.run([tap.tool("gist-model"), "generate", model, "--prompt", prompt, "-n",
                          str(n), "--temp", "0"], check=True, capture_output=True).stdout
    return out[len(prompt.encode()):]


def gen_equals_gist_model(model):
    want = reference(model, "Once upon a time", 30)
    with gistc.Daemon(tap.tool("gistd"), model) as d:
        rc, out, err = ctl(d.endpoint, "gen", "--prompt", "Once upon a time", "-n", "30",
                           "--temp", "0")
        assert rc == 0, err
        assert out == want, (out, want)
        # a temporary session is closed afterwards
        rc, out, err = ctl(d.endpoint, "sessions", "--json")
        assert rc == 0 and json.loads(out) == []


def test_gen_equals_gist_model():
    gen_equals_gist_model(tiny())


def test_gen_equals_gist_model_stories():
    gen_equals_gist_model(tap.shared("models/stories260K-f32.gguf"))


def test_stats_json():
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--kv-budget", "1M") as d:
        rc, out, err = ctl(d.endpoint, "stats", "--json")
        assert rc == 0, err
        st = json.loads(out)
        for k in ("kv_budget_bytes", "kv_used_bytes", "kv_peak_bytes", "sessions"):
            assert isinstance(st[k], int), k
        assert st["kv_budget_bytes"] == 1 << 20 and st["sessions"] == 0
        rc, out, _ = ctl(d.endpoint, "gen", "--prompt", "hi", "-n", "5", "--temp", "0")
        assert rc == 0
        st2 = json.loads(ctl(d.endpoint, "stats", "--json", "--sessions")[1])
        assert st2["kv_peak_bytes"] > 0 and st2["tokens_generated"] >= 1
        assert st2["kv_peak_bytes"] <= st2["kv_budget_bytes"]
        assert st2["session_list"] == []
        rc, out, _ = ctl(d.endpoint, "stats")
        assert rc == 0 and b"kv budget" in out and b"1.00 MiB" in out


def test_sessions_budget_transcript():
    with gistc.Daemon(tap.tool("gistd"), tiny()) as d:
        ep = d.endpoint
        rc, out, err = ctl(ep, "open", "--budget", "256K", "--name", "work")
        assert rc == 0, err
        sid = out.decode().strip()
        rc, out, _ = ctl(ep, "gen", "--session", sid, "--prompt", "Once upon a time", "-n",
                         "12", "--temp", "0")
        assert rc == 0
        generated = out[:-1]
        rc, out, _ = ctl(ep, "transcript", sid)
        assert rc == 0 and out.startswith(b"Once upon a time")
        rc, out, _ = ctl(ep, "transcript", sid, "--tokens")
        ids = [int(x) for x in out.split()]
        assert len(ids) >= 12 and ids[0] == 1  # BOS first
        sess = json.loads(ctl(ep, "sessions", "--json")[1])
        assert [s["id"] for s in sess] == [int(sid)] and sess[0]["name"] == "work"
        assert sess[0]["hard_bytes"] == 256 * 1024 and sess[0]["tokens"] == len(ids)
        rc, out, _ = ctl(ep, "budget", "512K", "--session", sid)
        assert rc == 0 and b"512 KiB" in out
        rc, _, err = ctl(ep, "budget", "1K", "--session", sid)
        assert rc == 1 and "limit stays" in err
        rc, out, _ = ctl(ep, "top", "--count", "1")
        assert rc == 0 and b"work" in out and b"budget" in out
        rc, out, _ = ctl(ep, "close", sid)
        assert rc == 0
        rc, _, err = ctl(ep, "close", sid)
        assert rc == 1 and "no session" in err
        assert generated


def test_policy_and_params():
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--block-rows", "16") as d:
        ep = d.endpoint
        rc, out, err = ctl(ep, "open", "--policy", "window", "--param", "recent=32",
                           "--budget", "48K")
        assert rc == 0, err
        sid = out.decode().strip()
        rc, out, err = ctl(ep, "gen", "--session", sid, "--prompt", "Once", "-n", "300",
                           "--temp", "0")
        assert rc == 0, err
        sess = json.loads(ctl(ep, "sessions", "--json")[1])[0]
        assert sess["policy"] == "window" and sess["compactions"] > 0
        assert sess["peak_bytes"] <= 48 * 1024 and sess["tokens"] >= 300
        rc, _, err = ctl(ep, "open", "--param", "recent")
        assert rc == 2 and "KEY=VALUE" in err
        rc, _, err = ctl(ep, "open", "--policy", "window", "--param", "bogus=1")
        assert rc == 1 and "bogus" in err
        rc, out, err = ctl(ep, "chat", "--policy", "pool", "--budget", "48K", "-n", "40",
                           "--temp", "0", inp=b"tell me a story\nand another one\n")
        assert rc == 0, err


def pooled_session(ep):
    """A pool session under 128K that has generated 600 tokens: its id."""
    rc, out, err = ctl(ep, "open", "--policy", "pool", "--budget", "128K")
    assert rc == 0, err
    sid = out.decode().strip()
    rc, out, err = ctl(ep, "gen", "--session", sid, "--prompt", "Once upon a time", "-n", "600",
                       "--temp", "0")
    assert rc == 0, err
    return sid


def test_expand_squeezed_span_is_refused():
    """A span whose neighbours were squeezed onto one model position (the session held more
    positions than the context) is refused with ERR_CONTEXT, before any room is made."""
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--block-rows", "16", "--kv-type", "f16") as d:
        ep = d.endpoint
        sid = pooled_session(ep)
        before = json.loads(ctl(ep, "sessions", "--json")[1])[0]
        rc, out, err = ctl(ep, "expand", sid, "--span", "64:71")
        assert rc == 1 and "squeezed" in err and "nothing expanded" in err, (out, err)
        after = json.loads(ctl(ep, "sessions", "--json")[1])[0]
        for k in ("compactions", "expansions", "bytes", "rows", "tokens"):
            assert after[k] == before[k], (k, before, after)
        # a later span, past the squeezed ones, still comes back
        rc, out, err = ctl(ep, "expand", sid, "--span", "400:407")
        assert rc == 0 and "8 tokens re-prefilled" in out.decode(), (out, err)


def test_expand():
    """`gistctl expand` prints each expansion and a summary; a span with nothing compressed
    and a bad span are refused with the daemon's message or a usage error."""
    # f32 rows: f16 rows hold more positions under the same budget than this model's context
    # of 256, so the oldest are squeezed together; test_expand_squeezed_span_is_refused
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--block-rows", "16", "--kv-type", "f32") as d:
        ep = d.endpoint
        sid = pooled_session(ep)
        sess = json.loads(ctl(ep, "sessions", "--json")[1])[0]
        assert sess["compactions"] > 0 and sess["expansions"] == 0, sess
        rc, out, err = ctl(ep, "expand", sid, "--span", "64:71")
        assert rc == 0, err
        lines = out.decode().splitlines()
        assert lines[-1].startswith("expanded 1 of 1 compressed spans: 8 tokens"), out
        assert any(x.startswith("expand   positions 64..71 at model position") for x in lines)
        sess = json.loads(ctl(ep, "sessions", "--json")[1])[0]
        assert sess["expansions"] == 1 and sess["expand_tokens"] == 8, sess
        st = json.loads(ctl(ep, "stats", "--json")[1])
        assert st["expansions"] == 1 and st["expand_tokens"] == 8, st
        rc, _, err = ctl(ep, "expand", sid, "--span", "0:1")
        assert rc == 1 and "nothing compressed" in err, err
        rc, _, err = ctl(ep, "expand", sid, "--span", "9:3")
        assert rc == 2 and "FIRST <= LAST" in err, err
        rc, out, err = ctl(ep, "expand", sid, "--max-tokens", "4")
        assert rc == 0 and out.decode().startswith("expand"), (out, err)
        # the Python client speaks it too
        with gistc.Client(ep) as c:
            r = c.session(int(sid)).expand(72, 79)
            assert r["spans"] == 1 and r["tokens"] == 8, r
            try:
                c.session(int(sid)).expand(72, 79)
                assert False, "expanded twice"
            except gistc.GistdError as e:
                assert "nothing compressed" in str(e)


def test_chat():
    with gistc.Daemon(tap.tool("gistd"), tiny()) as d:
        rc, out, err = ctl(d.endpoint, "chat", "-n", "6", "--temp", "0",
                           inp=b"hello there\nhow are you\n")
        assert rc == 0, err
        # off a terminal each turn is marked: "> " and the user's text, then the reply
        assert out.startswith(b"> hello there\n") and b"\n> how are you\n" in out, out
        assert "session 1" in err


def test_exit_statuses():
    none = "ipc://" + os.path.join(tap.tmpdir(), "nobody.sock")
    p = subprocess.run([GISTCTL, "--connect", none, "--timeout", "300", "stats", "--json"],
                       capture_output=True, timeout=60)
    assert p.returncode == 3 and b"no reply" in p.stderr
    p = subprocess.run([GISTCTL, "--connect", none, "gen", "-n", "3"], capture_output=True)
    assert p.returncode == 2 and b"usage" in p.stderr
    p = subprocess.run([GISTCTL, "frobnicate"], capture_output=True)
    assert p.returncode == 2 and b"unknown command" in p.stderr
    p = subprocess.run([GISTCTL, "--help"], capture_output=True)
    assert p.returncode == 0 and b"gistctl stats" in p.stdout


tap.main(globals())
