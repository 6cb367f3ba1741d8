"""The Python client (clients/python/gistc.py) against a real gistd on a loopback port:
streams equal `gist-model generate`, interleaved streams keep to their own requests, errors
come back as GistdError with the daemon's code, and the figures are there."""
import math
import os
import subprocess
import sys

import tap

sys.path.insert(0, os.path.join(tap.ROOT, "clients", "python"))
os.environ.setdefault("GISTD_PYPROTO", os.path.join(tap.BUILD, "gen", "python"))
import gistc  # noqa: E402



def tiny(seed="41"):
    return tap.tiny_model(seed)


def reference(model, prompt, n):
    """What gist-model generate adds after the prompt, greedy, as bytes."""
    out = subprocess.run([tap.tool("gist-model"), "generate", model, "--prompt", prompt, "-n",
                          str(n), "--temp", "0"], check=True, capture_output=True).stdout
    assert out.startswith(prompt.encode()) and out.endswith(b"\n"), out
    return out[len(prompt.encode()):-1]


def tokenize(model, text):
    """BOS and the ids of text, from gist-model tokenize."""
    out = subprocess.run([tap.tool("gist-model"), "tokenize", model, "--bos", "--text", text],
                         check=True, capture_output=True, text=True).stdout
    return [int(t) for t in out.split()]


def daemon(model, *args):
    return gistc.Daemon(tap.tool("gistd"), model, *args)


def test_stream_equals_gist_model():
    model = tiny()
    want = reference(model, "Once upon a time", 20)
    with daemon(model) as d, gistc.Client(d.endpoint) as c:
        assert c.model["n_vocab"] == 384 and c.version == 1
        s = c.open_session()
        stream = s.generate("Once upon a time", max_tokens=20, temp=0)
        raw, texts, idx = b"", "", []
        for ev in stream:
            assert ev.kind == "token"
            raw += ev.raw
            texts += ev.text
            idx.append(ev.index)
        assert raw == want, (raw, want)
        assert stream.text == want.decode("utf-8", "replace")
        assert texts == stream.text
        assert idx == list(range(len(idx)))
        assert stream.reason in ("length", "eos")
        assert stream.usage["generated_tokens"] == len(stream.tokens) or stream.reason == "eos"
        text, toks = s.transcript()
        assert toks == tokenize(model, "Once upon a time") + stream.tokens, toks
        assert text == (b"Once upon a time" + want).decode("utf-8", "replace"), (text, want)


def test_interleaved_streams():
    """Two streams read in turns: each gets its own tokens, equal to running alone."""
    model = tiny()
    prompts = ["The little dog", "A bird sat on the"]
    want = [reference(model, p, 24) for p in prompts]
    with daemon(model) as d, gistc.Client(d.endpoint) as c:
        streams = [c.open_session().generate(p, max_tokens=24, temp=0) for p in prompts]
        got = [b"", b""]
        live = [iter(s) for s in streams]
        while live:
            for it in list(live):
                try:
                    ev = next(it)
                    got[streams.index(it)] += ev.raw
                except StopIteration:
                    live.remove(it)
        assert got == want, (got, want)
        st = c.stats(sessions=True)
        assert st["sessions"] == 2 and len(st["session_list"]) == 2
        assert st["tokens_generated"] >= 2


def test_real_text_stories():
    model = tap.shared("models/stories260K-f32.gguf")
    want = reference(model, "One day, Lily", 40)
    with daemon(model) as d, gistc.Client(d.endpoint) as c:
        s = c.open_session()
        assert s.complete("One day, Lily", max_tokens=40, temp=0).encode() == want
        # score: log-probabilities of a likely and an unlikely continuation
        s2 = c.open_session()
        toks, lps = s2.score("Once upon a time, there was a little girl.")
        assert len(toks) == len(lps) and len(toks) > 5
        assert all(lp <= 0 for lp in lps if not math.isnan(lp))
        s3 = c.open_session()
        _, bad = s3.score("time a upon Once girl little there, was.")
        assert sum(lps) > sum(bad)


def test_errors_raise():
    model = tiny()
    with daemon(model, "--kv-budget", "200K", "--kv-budget-max", "2M") as d, \
            gistc.Client(d.endpoint) as c:
        try:
            c.session(4242).complete("x", max_tokens=2)
            raise AssertionError("no error for an unknown session")
        except gistc.GistdError as e:
            assert e.name == "ERR_NOTFOUND" and e.code == 6 and "4242" in e.message
        try:
            c.open_session(budget=100)
            raise AssertionError("no error for a budget below one token")
        except gistc.GistdError as e:
            assert e.name == "ERR_BUDGET" and "smallest usable" in e.message
        try:
            c.open_session(policy="nope")
            raise AssertionError("no error for an unknown policy")
        except gistc.GistdError as e:
            assert e.name == "ERR_INVAL"
        try:
            c.set_budget("1K")
            c.open_session()
            raise AssertionError("no error under a 1 KiB global budget")
        except gistc.GistdError as e:
            assert e.name == "ERR_BUDGET"
        b = c.set_budget("2M")
        assert b["hard_bytes"] == 2 << 20
        assert c.open_session().complete("ok", max_tokens=3, temp=0) is not None


def test_compaction_events():
    """A pooling session far over its budget streams compaction events that add up."""
    with daemon(tiny(), "--block-rows", "16") as d, gistc.Client(d.endpoint) as c:
        s = c.open_session(policy="pool", budget="48K")
        events, tokens = [], 0
        stream = s.generate("Once upon a time", max_tokens=400, temp=0)
        for ev in stream:
            if ev.kind == "compaction":
                assert ev.bytes_freed == ev.session_bytes_before - ev.session_bytes, ev
                assert ev.session_bytes <= 48 * 1024 and ev.first <= ev.last
                events.append(ev)
            else:
                tokens += 1
        assert (tokens == 400 or stream.reason == "eos") and tokens > 200 and events
        assert {e.method for e in events} & {"pooled", "recency"}
        st = c.stats(sessions=True)
        assert st["compactions"] == len(events)
        assert st["bytes_freed"] == sum(e.bytes_freed for e in events)
        info = st["session_list"][0]
        assert info["peak_bytes"] <= 48 * 1024 and info["compression"] > 2
        text, toks = s.transcript()
        assert len(toks) == info["tokens"] and text.startswith("Once upon a time")


def test_cancel_and_timeout():
    model = tiny()
    with daemon(model) as d, gistc.Client(d.endpoint) as c:
        s = c.open_session()
        stream = s.generate("go", max_tokens=100000, temp=0)
        for i, ev in enumerate(stream):
            if i == 4:
                break
        stream.cancel()
        assert stream.reason == "cancelled" and len(stream.tokens) < 100000
        assert s.info()["state"] == "idle"
        assert d.stop() == 0
    try:
        gistc.Client("ipc://" + os.path.join(tap.tmpdir(), "none.sock"), timeout=0.2)
        raise AssertionError("no timeout without a daemon")
    except gistc.Timeout as e:
        assert "no reply" in e.message


def _keygen(folder, name):
    prefix = os.path.join(folder, name)
    subprocess.run([tap.tool("gistd"), "--keygen", prefix], check=True,
                   stdout=subprocess.DEVNULL)
    return gistc.load_key(prefix + ".pub"), gistc.load_key(prefix + ".key")


def test_curve_keys():
    import zmq
    if not zmq.has("curve"):
        raise tap.Missing("this libzmq has no CURVE support (Debian's libzmq5 has it)")
    model = tiny()
    folder = tap.tmpdir()
    srv, a, b, stranger = (_keygen(folder, n) for n in ("srv", "a", "b", "stranger"))
    allow = os.path.join(folder, "allow.txt")
    with open(allow, "w") as f:
        f.write(f"# two clients\n{a[0]}\n{b[0]}\n")
    secret = os.path.join(folder, "srv.key")

    def client(d, k, **kw):
        return gistc.Client(d.endpoint, curve_server_key=srv[0], curve_public_key=k[0],
                            curve_secret_key=k[1], **kw)

    want = reference(model, "Once upon a time", 12)
    with daemon(model, "--curve-secret", secret, "--allow-keys", allow) as d:
        with client(d, a) as ca, client(d, b) as cb:
            s = ca.open_session()
            s.append("Once upon a time")
            for call in (lambda: cb.session(s.id).generate(max_tokens=4, temp=0).wait(),
                         lambda: cb.session(s.id).append("evil"),
                         lambda: cb.session(s.id).close(),
                         lambda: cb.set_budget("64M")):
                try:
                    call()
                    assert False, "another client used the session"
                except gistc.GistdError as err:
                    assert err.code == gistc.ERR_PERM, err
            assert [x["id"] for x in cb.sessions()] == []
            assert [x["id"] for x in ca.sessions()] == [s.id]
            out = s.generate(max_tokens=12, temp=0)
            raw = b"".join(ev.raw for ev in out if ev.kind == "token")
            assert raw == want, (raw, want)
            assert ca.stats()["curve"]
        for keys in (stranger, None):
            try:
                if keys:
                    client(d, keys, timeout=20)
                else:
                    gistc.Client(d.endpoint, timeout=20)
                assert False, "the daemon let an unknown client in"
            except gistc.Timeout:
                assert False, "a refused handshake ended in a timeout"
            except gistc.GistdError as err:
                assert err.code == gistc.ERR_PERM, err


tap.main(globals())
