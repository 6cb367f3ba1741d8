"""Whole texts as one session, through the tool and through the daemon: `gist-model
perplexity --ctx 0` equals the windowed figure exactly on a text shorter than the context;
`full` stops at the context with a clear error while a compacting policy runs on for several
contexts; `gistctl score` through a real gistd agrees with the tool on the same text, policy
and budget (within 0.5%), and closes the session it opened on success, on an error and on
Ctrl-C."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import tap

sys.path.insert(0, os.path.join(tap.ROOT, "clients", "python"))
os.environ.setdefault("GISTD_PYPROTO", os.path.join(tap.BUILD, "gen", "python"))
import gistc  # noqa: E402

GM = tap.tool("gist-model")
GISTCTL = tap.tool("gistctl")
TMP = tap.tmpdir()
SENTENCES = ["The cat sat on the mat. ", "It was a warm day in June! ", "Where did the dog go? ",
             "Anne walked to the village and back.\n", "They spoke of the navy for an hour. "]


def tiny():
    return tap.tiny_model(5)  # n_ctx 256, a byte-level vocabulary


def text_file(n_chars, name):
    out, i = [], 0
    while sum(map(len, out)) < n_chars:
        out.append(SENTENCES[(i * 7 + i // 3) % len(SENTENCES)])
        i += 1
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write("".join(out))
    return path


def figures(out):
    return dict(re.findall(r"^(\w+): (.*)$", out, re.M))


def perplexity(*args):
    p = subprocess.run([GM, "perplexity", tiny(), *args], capture_output=True, text=True,
                       timeout=300)
    return p.returncode, figures(p.stdout), p.stderr


def ctl(ep, *args):
    p = subprocess.run([GISTCTL, "--connect", ep, "--timeout", "60000", *args],
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def full_bytes():
    # the full cache of one context, as the tool reports it
    rc, f, err = perplexity("--file", text_file(100, "short.txt"), "--ctx", "256",
                            "--policy", "full")
    assert rc == 0, err
    return int(f["full_kv_bytes"])


def test_ctx0_equals_windows_when_short():
    path = text_file(200, "two_hundred.txt")  # under 256 tokens
    rc, win, err = perplexity("--file", path, "--ctx", "256", "--policy", "full")
    assert rc == 0, err
    rc, one, err = perplexity("--file", path, "--ctx", "0", "--policy", "full")
    assert rc == 0, err
    assert one["tokens"] == win["tokens"] and one["ppl"] == win["ppl"], (one, win)


def test_full_stops_compacting_policies_go_on():
    path = text_file(1200, "three_contexts.txt")
    rc, f, err = perplexity("--file", path, "--ctx", "0", "--policy", "full")
    assert rc != 0 and "context of 256" in err and "full" in err, err
    budget = str(full_bytes() // 2)
    for policy in ("window", "h2o", "pool", "auto"):
        rc, f, err = perplexity("--file", path, "--ctx", "0", "--policy", policy,
                                "--kv-budget", budget)
        assert rc == 0, (policy, err)
        assert int(f["tokens"]) > 3 * 256 and float(f["ppl"]) > 1.0, (policy, f)
        assert int(f["peak_kv_bytes"]) <= int(budget), (policy, f)


def test_daemon_and_tool_agree():
    # the project's own model (n_ctx 1024): a text of about 1.6 contexts, half a context's
    # bytes; the tool runs the daemon's prefill chunks (64 tokens)
    model = os.path.join(tap.ROOT, "models", "gistd-6m.gguf")
    path = text_file(6000, "agree.txt")
    p = subprocess.run([GM, "perplexity", model, "--file", path, "--ctx", "0", "--policy",
                        "auto", "--kv-budget", "50%", "--ubatch", "64"], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    tool = figures(p.stdout)
    budget = str(int(tool["kv_budget"]))
    assert int(tool["tokens"]) > 1400, tool
    with gistc.Daemon(tap.tool("gistd"), model) as d:
        rc, out, err = ctl(d.endpoint, "score", "--file", path, "--policy", "auto",
                           "--budget", budget)
        assert rc == 0, err
        daemon = figures(out)
        assert out.rstrip().splitlines()[-1].startswith("ppl: ")
        assert daemon["tokens"] == tool["tokens"], (daemon, tool)
        a, b = float(daemon["ppl"]), float(tool["ppl"])
        assert abs(a - b) / b < 0.005, (a, b)
        assert int(daemon["compactions"]) > 0 and int(daemon["peak_kv_bytes"]) <= int(budget)
        rc, out, _ = ctl(d.endpoint, "sessions", "--json")
        assert rc == 0 and json.loads(out) == [], out


def test_score_closes_its_session_on_errors():
    path = text_file(900, "errors.txt")
    with gistc.Daemon(tap.tool("gistd"), tiny()) as d:
        # full past the context: the daemon refuses, the session goes
        rc, out, err = ctl(d.endpoint, "score", "--file", path, "--policy", "full")
        assert rc == 1 and "256" in err, (rc, err)
        rc, out, _ = ctl(d.endpoint, "sessions", "--json")
        assert json.loads(out) == [], out
        rc, out, err = ctl(d.endpoint, "score", "--file", path, "--session", "77")
        assert rc == 1 and "77" in err, (rc, err)
        rc, out, err = ctl(d.endpoint, "score", "--file", os.path.join(TMP, "missing.txt"))
        assert rc == 2 and "missing.txt" in err, (rc, err)


def test_score_closes_its_session_on_ctrl_c():
    path = text_file(40000, "long.txt")
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--prefill-chunk", "1") as d:
        p = subprocess.Popen([GISTCTL, "--connect", d.endpoint, "score", "--file", path,
                              "--policy", "auto", "--budget", "64K"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # wait (bounded) until its session is there, then interrupt it
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            rc, out, _ = ctl(d.endpoint, "sessions", "--json")
            if rc == 0 and json.loads(out):
                break
        assert p.poll() is None, ("gistctl score ended before it was interrupted",
                                  p.returncode, p.communicate()[1])
        assert json.loads(out), "the session never appeared"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 130 and "interrupted" in err, (p.returncode, err)
        rc, out, _ = ctl(d.endpoint, "sessions", "--json")
        assert json.loads(out) == [], out


tap.main(globals())
