"""gistd-http against a real gistd, both on loopback ports of their own choosing: greedy
/v1/completions equals `gist-model generate`; streamed replies are framed as server-sent
events and join to the unstreamed text; a conversation resent whole every turn prefills only
its new turn (gistd's own counts say so); /metrics parses with prometheus_client and agrees
with `gistctl stats --json`; bad requests get their status and the gateway keeps serving; and
the official OpenAI client for Node lists, completes and streams."""
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import tap

sys.path.insert(0, os.path.join(tap.ROOT, "clients", "python"))
os.environ.setdefault("GISTD_PYPROTO", os.path.join(tap.BUILD, "gen", "python"))
import gistc  # noqa: E402



def tiny(seed="7"):
    return tap.tiny_model(seed)


def smallest_budget(model):
    """The smallest usable session budget for model (one KV block per lane), as gistd
    computes it for its rows."""
    p = subprocess.run([tap.tool("gistd"), "--model", model, "--help"], capture_output=True,
                       text=True, timeout=60)
    line = [ln for ln in p.stdout.splitlines() if "smallest usable session budget is" in ln]
    assert p.returncode == 0 and line, p.stderr
    return int(line[0].split(" is ")[1].split()[0])


def stories():
    p = os.path.join(tap.SHARED, "models/stories260K-f32.gguf")
    return p if os.path.exists(p) else None


class Gateway:
    """gistd-http as a child process on a free port (it prints its URL first)."""

    def __init__(self, endpoint, *args):
        self.proc = subprocess.Popen([tap.tool("gistd-http"), "--connect", endpoint, "--listen",
                                      "127.0.0.1:0", *args], stdout=subprocess.PIPE)
        url = self.proc.stdout.readline().decode().strip()
        self.proc.stdout.close()
        if not url.startswith("http://"):
            raise RuntimeError(f"gistd-http did not start (exit {self.proc.wait()})")
        self.url = url
        self.host, port = url[len("http://"):].split(":")
        self.port = int(port)

    def request(self, method, path, body=None, headers=None, raw=None):
        """(status, headers, body bytes)."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=120)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        h = {"Content-Type": "application/json", **(headers or {})}
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        out = (r.status, dict(r.getheaders()), r.read())
        c.close()
        return out

    def post(self, path, body, headers=None):
        st, _, data = self.request("POST", path, body, headers)
        return st, json.loads(data)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=60)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def sse_events(data):
    """The payloads of a server-sent event stream, checking its framing on the way."""
    text = data.decode()
    assert text.endswith("\n\n"), text[-80:]
    events = text[:-2].split("\n\n")
    out = []
    for ev in events:
        assert ev.startswith("data: ") and "\n" not in ev, ev
        out.append(ev[len("data: "):])
    return out


def stream(gw, path, body):
    """(chunks as objects, [DONE] seen) of a streamed request."""
    st, headers, data = gw.request("POST", path, {**body, "stream": True})
    assert st == 200, data
    assert headers.get("Content-Type", "").startswith("text/event-stream"), headers
    events = sse_events(data)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1, events[-3:]
    return [json.loads(e) for e in events[:-1]]


def reference(model, prompt, n):
    out = subprocess.run([tap.tool("gist-model"), "generate", model, "--prompt", prompt, "-n",
                          str(n), "--temp", "0"], check=True, capture_output=True).stdout
    assert out.startswith(prompt.encode()) and out.endswith(b"\n")
    # the gateway sends JSON text: bytes that are not UTF-8 become U+FFFD, as Python does it
    return out[len(prompt.encode()):-1].decode("utf-8", errors="replace")


def ctl_json(endpoint, *args):
    out = subprocess.run([tap.tool("gistctl"), "--connect", endpoint, *args, "--json"],
                         check=True, capture_output=True, timeout=60).stdout
    return json.loads(out)


def n_tokens(model, text):
    out = subprocess.run([tap.tool("gist-model"), "tokenize", model, "--text", text],
                         check=True, capture_output=True).stdout.split()
    return len(out)


# ------------------------------------------------------------------ tests

def test_completion_equals_gist_model():
    models = [tiny()] + ([stories()] if stories() else [])
    for model in models:
        prompt = "Once upon a time"
        want = reference(model, prompt, 40)
        with gistc.Daemon(tap.tool("gistd"), model) as d, Gateway(d.endpoint) as gw:
            st, r = gw.post("/v1/completions", {"prompt": prompt, "max_tokens": 40,
                                                "temperature": 0})
            assert st == 200, r
            assert r["object"] == "text_completion"
            assert r["choices"][0]["text"] == want, (r["choices"][0]["text"], want)
            assert r["choices"][0]["finish_reason"] == "length"
            assert r["usage"]["completion_tokens"] == 40
            assert r["usage"]["prompt_tokens"] == n_tokens(model, prompt) + 1  # BOS
            chunks = stream(gw, "/v1/completions", {"prompt": prompt, "max_tokens": 40,
                                                    "temperature": 0})
            assert all(c["object"] == "text_completion" for c in chunks)
            assert "".join(c["choices"][0]["text"] for c in chunks) == want
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"
            assert chunks[-1]["usage"]["completion_tokens"] == 40
            # every completion's session was its own and is closed
            assert ctl_json(d.endpoint, "sessions") == []


def test_chat_stream_framing_equals_unstreamed():
    with gistc.Daemon(tap.tool("gistd"), stories() or tiny()) as d, Gateway(d.endpoint) as gw:
        body = {"model": json.loads(gw.request("GET", "/v1/models")[2])["data"][0]["id"],
                "messages": [{"role": "system", "content": "You tell stories."},
                             {"role": "user", "content": "Tell me about a cat."}],
                "max_tokens": 30, "temperature": 0}
        st, r = gw.post("/v1/chat/completions", body)
        assert st == 200, r
        assert r["object"] == "chat.completion"
        want = r["choices"][0]["message"]["content"]
        assert r["choices"][0]["message"]["role"] == "assistant" and want
        assert r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + 30
        chunks = stream(gw, "/v1/chat/completions", body)
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
        last = chunks[-1]
        assert last["choices"][0]["finish_reason"] == "length"
        assert last["usage"]["completion_tokens"] == 30
        assert last["gistd"]["kv_bytes"] > 0 and last["gistd"]["compactions"] == 0
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == want, (text, want)


def test_stop_string_is_cut_the_same_streamed_or_not():
    model = stories()
    if not model:
        raise tap.Missing("stories260K not found under the shared folder")
    ref = reference(model, "Once upon a time", 60)
    stop = ref[20:24]  # a few characters in the middle: likely over two tokens
    want = ref[:ref.index(stop)]
    with gistc.Daemon(tap.tool("gistd"), model) as d, Gateway(d.endpoint) as gw:
        body = {"prompt": "Once upon a time", "max_tokens": 60, "temperature": 0,
                "stop": [stop, "zzzz"]}
        st, r = gw.post("/v1/completions", body)
        assert st == 200, r
        assert r["choices"][0]["text"] == want and r["choices"][0]["finish_reason"] == "stop"
        chunks = stream(gw, "/v1/completions", body)
        assert "".join(c["choices"][0]["text"] for c in chunks) == want


def test_twenty_turns_prefill_only_the_new_turn():
    model = tiny()
    with gistc.Daemon(tap.tool("gistd"), model) as d, Gateway(d.endpoint) as gw:
        msgs = [{"role": "system", "content": "Be brief."}]
        sid = None
        for turn in range(20):
            user = f"Question number {turn}: what is {turn} plus {turn}?"
            msgs.append({"role": "user", "content": user})
            before = ctl_json(d.endpoint, "stats")["tokens_prefilled"]
            st, r = gw.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 6,
                                                     "temperature": 0})
            assert st == 200, r
            after = ctl_json(d.endpoint, "stats")["tokens_prefilled"]
            new = n_tokens(model, user) + (n_tokens(model, "Be brief.") + 1 if turn == 0 else 0)
            sessions = ctl_json(d.endpoint, "sessions")
            assert len(sessions) == 1, sessions  # one conversation, one session, all along
            sid = sid or sessions[0]["id"]
            assert sessions[0]["id"] == sid == r["gistd"]["session"]
            # gistd prefilled the new turn and the last token it sampled last turn (its
            # decode steps forward the others), nothing more
            assert after - before == new + (turn > 0), (turn, after - before, new)
            assert r["gistd"]["prefilled_tokens"] == after - before
            # the prompt is the session's positions before the reply; all but the new turn's
            # were held from before
            assert r["usage"]["prompt_tokens"] == sessions[0]["tokens"] - 6
            assert r["usage"]["prompt_tokens_details"]["cached_tokens"] == (
                sessions[0]["tokens"] - 6 - new)
            msgs.append({"role": "assistant", "content": r["choices"][0]["message"]["content"]})
        # a conversation that leaves the held one's path starts a session of its own
        st, r = gw.post("/v1/chat/completions", {"messages": msgs[:3] + [
            {"role": "user", "content": "Something else."}], "max_tokens": 4})
        assert st == 200 and r["gistd"]["session"] != sid
        assert len(ctl_json(d.endpoint, "sessions")) == 2


def test_explicit_binding_and_idle_close():
    with gistc.Daemon(tap.tool("gistd"), tiny()) as d, \
            Gateway(d.endpoint, "--idle-timeout", "2") as gw:
        # a named binding: each request sends only its new turn
        lengths = []
        for i, text in enumerate(["First.", "Second.", "Third."]):
            st, r = gw.post("/v1/chat/completions",
                            {"messages": [{"role": "user", "content": text}], "max_tokens": 3,
                             "temperature": 0}, headers={"X-Gistd-Session": "work"})
            assert st == 200, r
            sessions = ctl_json(d.endpoint, "sessions")
            assert len(sessions) == 1 and sessions[0]["name"] == "work"
            lengths.append(sessions[0]["tokens"])
        assert lengths[0] < lengths[1] < lengths[2]
        # the same by the body's session field, with the id gistd gave the session
        sid = r["gistd"]["session"]
        st, r = gw.post("/v1/chat/completions", {"session": sid, "max_tokens": 3,
                                                 "messages": [{"role": "user", "content": "4"}]})
        assert st == 200 and r["gistd"]["session"] == sid, r
        st, r = gw.post("/v1/chat/completions", {"session": 99999, "max_tokens": 3,
                                                 "messages": [{"role": "user", "content": "x"}]})
        assert st == 404 and "99999" in r["error"]["message"], r
        # idle conversations are closed in gistd
        deadline = time.time() + 20
        while ctl_json(d.endpoint, "sessions") and time.time() < deadline:
            time.sleep(0.2)
        assert ctl_json(d.endpoint, "sessions") == []
        st, r = gw.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "y"}],
                                                 "max_tokens": 2})
        assert st == 200, r


def test_metrics_agree_with_gistctl():
    from prometheus_client.parser import text_string_to_metric_families
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--kv-budget", "4M") as d, \
            Gateway(d.endpoint) as gw:
        for i in range(3):
            st, _ = gw.post("/v1/chat/completions", {
                "messages": [{"role": "user", "content": f"Hello {i}"}], "max_tokens": 5})
            assert st == 200
        st, headers, data = gw.request("GET", "/metrics")
        assert st == 200 and headers["Content-Type"].startswith("text/plain")
        text = data.decode()
        stats = ctl_json(d.endpoint, "stats")
        fam = {f.name: f for f in text_string_to_metric_families(text)}
        for name in ("gistd_kv_bytes", "gistd_kv_budget_bytes", "gistd_kv_peak_bytes",
                     "gistd_sessions", "gistd_compactions", "gistd_tokens_prompt",
                     "gistd_tokens_generated", "gistd_request_duration_seconds",
                     "gistd_kv_tier_bytes"):
            assert name in fam, (name, sorted(fam))
            assert f"# HELP {name}" in text or f"# HELP {name}_total" in text, name

        def one(name, **labels):
            return [s.value for s in fam[name].samples
                    if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert one("gistd_kv_bytes") == [stats["kv_used_bytes"]]
        assert one("gistd_kv_budget_bytes") == [4 << 20] == [stats["kv_budget_bytes"]]
        assert one("gistd_kv_peak_bytes") == [stats["kv_peak_bytes"]]
        assert one("gistd_sessions") == [stats["sessions"]] == [3]
        for tier in ("f32", "f16", "q8_0"):
            assert one("gistd_kv_tier_bytes", tier=tier) == [stats["tier_bytes"][tier]], tier
        assert fam["gistd_tokens_generated"].samples[0].value == stats["tokens_generated"]
        assert fam["gistd_tokens_prompt"].samples[0].value == stats["tokens_prefilled"]
        h = fam["gistd_request_duration_seconds"]
        assert h.type == "histogram"
        count = [s.value for s in h.samples if s.name.endswith("_count")
                 and s.labels["route"] == "/v1/chat/completions"]
        assert count == [3]
        assert one("gistd_up") == [1]


def test_metrics_count_compactions_by_method():
    from prometheus_client.parser import text_string_to_metric_families
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--block-rows", "16") as d, \
            Gateway(d.endpoint, "--policy", "window", "--session-budget", "48K") as gw:
        st, r = gw.post("/v1/completions", {"prompt": "Once", "max_tokens": 200,
                                            "temperature": 0})
        assert st == 200, r
        assert r["gistd"]["compactions"] > 0
        fam = {f.name: f for f in text_string_to_metric_families(
            gw.request("GET", "/metrics")[2].decode())}
        by = {s.labels["method"]: s.value for s in fam["gistd_compactions"].samples
              if s.name == "gistd_compactions_total"}
        stats = ctl_json(d.endpoint, "stats")
        assert by == stats["compactions_by_method"], (by, stats["compactions_by_method"])
        assert by["window"] == r["gistd"]["compactions"] == stats["compactions"], by
        assert set(by) >= {"pooled", "learned", "window", "h2o", "tova", "trim"}
        assert "prefill" not in by  # re-expansions are counted apart
        assert fam["gistd_expansions"].samples[0].value == stats["expansions"]
        assert fam["gistd_expand_tokens"].samples[0].value == stats["expand_tokens"]


def test_bad_requests_get_their_status_and_the_gateway_serves_on():
    with gistc.Daemon(tap.tool("gistd"), tiny()) as d, \
            Gateway(d.endpoint, "--max-body", "4K") as gw:
        good = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        cases = [
            ("POST", "/v1/chat/completions", b"{not json", 400),
            ("POST", "/v1/chat/completions", b"[1, 2]", 400),
            ("POST", "/v1/chat/completions", json.dumps({**good, "model": "gpt-9"}).encode(),
             400),
            ("POST", "/v1/chat/completions", json.dumps({"messages": []}).encode(), 400),
            ("POST", "/v1/chat/completions", json.dumps({"messages": [
                {"role": "wizard", "content": "x"}]}).encode(), 400),
            ("POST", "/v1/chat/completions", json.dumps({**good, "max_tokens": -3}).encode(),
             400),
            ("POST", "/v1/chat/completions", json.dumps({**good, "max_tokens": 10**9}).encode(),
             400),
            ("POST", "/v1/chat/completions", json.dumps({**good, "temperature": "hot"}).encode(),
             400),
            ("POST", "/v1/chat/completions", json.dumps({**good, "n": 3}).encode(), 400),
            ("POST", "/v1/chat/completions", json.dumps({**good, "stop": [""]}).encode(), 400),
            ("POST", "/v1/chat/completions", json.dumps({**good, "stream": "yes"}).encode(),
             400),
            ("POST", "/v1/completions", json.dumps({"prompt": 42}).encode(), 400),
            ("POST", "/v1/chat/completions", b"x" * 10000, 413),
            ("GET", "/v1/chat/completions", None, 405),
            ("POST", "/v1/models", b"{}", 405),
            ("GET", "/v2/nothing", None, 404),
        ]
        for method, path, raw, want in cases:
            st, _, data = gw.request(method, path, raw=raw)
            assert st == want, (path, raw and raw[:60], st, data)
            err = json.loads(data)["error"]
            assert err["message"] and err["type"] and err["code"], err
            st, r = gw.post("/v1/chat/completions", good)
            assert st == 200, (path, raw and raw[:60], r)
        # a body sent in chunks, without a length, is bounded too
        c = http.client.HTTPConnection(gw.host, gw.port, timeout=60)
        c.request("POST", "/v1/chat/completions", body=iter([b"{" + b" " * 3000] * 3),
                  encode_chunked=True, headers={"Content-Type": "application/json"})
        assert c.getresponse().status == 413
        c.close()
        # a prompt the daemon refuses is a 400 with its reason: over a session budget it may
        # not compact (one block of 64 rows per lane and a half: 102 tokens need two), or
        # past the model's context (256 tokens) with nothing to compact
        budget = str(smallest_budget(tiny()) * 3 // 2)
        with Gateway(d.endpoint, "--policy", "full", "--session-budget", budget) as small:
            st, r = small.post("/v1/completions", {"prompt": "a " * 100, "max_tokens": 2})
            assert st == 400 and "hard limit" in r["error"]["message"], r
            st, r = small.post("/v1/chat/completions", good)
            assert st == 200, r
        with Gateway(d.endpoint, "--policy", "full") as full:
            st, r = full.post("/v1/completions", {"prompt": "a " * 2000, "max_tokens": 2})
            assert st == 400 and "context" in r["error"]["message"], r
            assert full.post("/v1/chat/completions", good)[0] == 200
        assert gw.post("/v1/chat/completions", good)[0] == 200
    # gistd gone: 503, and the gateway still answers
    with gistc.Daemon(tap.tool("gistd"), tiny()) as d:
        gw = Gateway(d.endpoint, "--timeout", "1000")
        assert gw.post("/v1/chat/completions", good)[0] == 200
        d.stop()
        try:
            st, r = gw.post("/v1/chat/completions", good)
            assert st == 503 and r["error"]["type"] == "server_error", r
            st, _, data = gw.request("GET", "/health")
            assert st == 503, data
            st, _, data = gw.request("GET", "/metrics")
            assert st == 200 and b"gistd_up 0" in data
        finally:
            assert gw.stop() == 0


def test_curve_keys_pass_through():
    folder = tap.tmpdir()
    for name in ("srv", "gw", "stranger"):
        subprocess.run([tap.tool("gistd"), "--keygen", os.path.join(folder, name)], check=True,
                       stdout=subprocess.DEVNULL)
    allow = os.path.join(folder, "allow.txt")
    with open(allow, "w") as f, open(os.path.join(folder, "gw.pub")) as k:
        f.write(k.read())
    srv = os.path.join(folder, "srv")
    good = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    with gistc.Daemon(tap.tool("gistd"), tiny(), "--curve-secret", srv + ".key",
                      "--allow-keys", allow) as d:
        with Gateway(d.endpoint, "--server-key", srv + ".pub", "--key",
                     os.path.join(folder, "gw")) as gw:
            st, r = gw.post("/v1/chat/completions", good)
            assert st == 200, r
        # a key the daemon does not list: 503 with the daemon's reason
        with Gateway(d.endpoint, "--timeout", "3000", "--server-key", srv + ".pub", "--key",
                     os.path.join(folder, "stranger")) as gw:
            st, r = gw.post("/v1/chat/completions", good)
            assert st == 503 and "refused" in r["error"]["message"], r
    # half a key pair is a usage error
    p = subprocess.run([tap.tool("gistd-http"), "--server-key", srv + ".pub"],
                       capture_output=True, timeout=30)
    assert p.returncode == 2 and b"--key" in p.stderr, p.stderr


def test_concurrent_clients():
    with gistc.Daemon(tap.tool("gistd"), tiny()) as d, Gateway(d.endpoint) as gw:
        results = []

        def client(i):
            body = {"messages": [{"role": "user", "content": f"client {i}"}], "max_tokens": 8,
                    "temperature": 0}
            if i % 2:
                chunks = stream(gw, "/v1/chat/completions", body)
                results.append(chunks[-1]["choices"][0]["finish_reason"])
            else:
                st, r = gw.post("/v1/chat/completions", body)
                results.append(r["choices"][0]["finish_reason"] if st == 200 else st)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == ["length"] * 16, results


NODE_SCRIPT = r"""
const OpenAI = require("openai");
(async () => {
  const client = new OpenAI({ baseURL: process.argv[2] + "/v1", apiKey: "none" });
  const out = {};
  const models = await client.models.list();
  out.models = models.data.map((m) => m.id);
  const body = { model: out.models[0], max_tokens: 24, temperature: 0,
                 messages: [{ role: "user", content: "Tell me a story." }] };
  const r = await client.chat.completions.create(body);
  out.text = r.choices[0].message.content;
  out.finish = r.choices[0].finish_reason;
  out.usage = r.usage;
  const s = await client.chat.completions.create({ ...body, stream: true });
  out.streamed = "";
  for await (const chunk of s) out.streamed += chunk.choices[0]?.delta?.content || "";
  try {
    await client.chat.completions.create({ ...body, model: "nope" });
  } catch (e) { out.error_status = e.status; }
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def test_openai_node_client():
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        raise tap.Skip("node and npm are needed for the OpenAI client test")
    work = tap.tmpdir()
    try:
        p = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent", "openai@4"],
                           cwd=work, capture_output=True, timeout=180)
    except subprocess.TimeoutExpired:
        raise tap.Skip("npm install openai took over 3 minutes (registry unreachable?)")
    if p.returncode != 0:
        raise tap.Skip("cannot install the openai npm package (registry unreachable?): "
                       + p.stderr.decode()[-200:].replace("\n", " "))
    script = os.path.join(work, "client.js")
    with open(script, "w") as f:
        f.write(NODE_SCRIPT)
    with gistc.Daemon(tap.tool("gistd"), stories() or tiny()) as d, Gateway(d.endpoint) as gw:
        out = subprocess.run([node, script, gw.url], cwd=work, capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        r = json.loads(out.stdout)
        assert len(r["models"]) == 1
        assert r["text"] and r["finish"] == "length" and r["usage"]["completion_tokens"] == 24
        assert r["streamed"] == r["text"], r
        assert r["error_status"] == 400


tap.main(globals())
