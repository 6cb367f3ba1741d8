"""gistc — a Python client for gistd, over pyzmq and the protobuf module generated from
proto/gistd.proto (Debian's python3-zmq and python3-protobuf).

    import gistc
    with gistc.Client("tcp://127.0.0.1:5557") as c:
        s = c.open_session(budget="8M", template="chatml")
        s.append("You are terse.", role="system")
        for ev in s.generate("Tell me a story.", role="assistant", max_tokens=64):
            if ev.kind == "token":
                print(ev.text, end="", flush=True)
            elif ev.kind == "compaction":
                print(f"[{ev.action} {ev.first}-{ev.last}: {ev.bytes_freed} bytes]")

A Client is one DEALER connection; requests are matched to replies by id, so several
streams may be read at once, interleaved. It is not thread-safe: use one Client per thread.
Every wait is bounded by the client's timeout (Timeout, a GistdError). The daemon's error
replies raise GistdError with its code (the wire code of common/err.h), name and message.

CURVE: give the daemon's public key and this client's key pair (z85 text, or files as
`gistd --keygen PREFIX` writes them, read with load_key):

    c = gistc.Client(ep, curve_server_key=gistc.load_key("server.pub"),
                     curve_public_key=gistc.load_key("me.pub"),
                     curve_secret_key=gistc.load_key("me.key"))

A daemon that refuses the key, or a handshake that fails because one side uses CURVE and the
other does not, raises GistdError ERR_PERM (code 13) instead of a timeout.

The generated module gistd_pb2 is found in $GISTD_PYPROTO, then beside this file (where
`make install` puts both), then in build/gen/python of this
checkout (`make` writes it there), else it is generated with protoc into a temporary folder.
"""
import codecs
import os
import subprocess
import sys
import tempfile

import zmq

PROTOCOL_VERSION = 1
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"


def _load_pb2():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    build = os.environ.get("GISTD_BUILD", "build")
    # installed (make install): gistd_pb2 lies beside this file
    candidates = [os.environ.get("GISTD_PYPROTO"), here,
                  os.path.join(root, build, "gen", "python")]
    for d in candidates:
        if d and os.path.exists(os.path.join(d, "gistd_pb2.py")):
            sys.path.insert(0, d)
            break
    else:
        proto = os.path.join(root, "proto", "gistd.proto")
        d = tempfile.mkdtemp(prefix="gistc-pb2-")
        subprocess.run(["protoc", "--proto_path", os.path.dirname(proto), "--python_out", d,
                        proto], check=True)
        sys.path.insert(0, d)
    import gistd_pb2
    return gistd_pb2


pb = _load_pb2()

ROLES = {None: pb.ROLE_NONE, "": pb.ROLE_NONE, "none": pb.ROLE_NONE, "system": pb.ROLE_SYSTEM,
         "user": pb.ROLE_USER, "assistant": pb.ROLE_ASSISTANT}
STOP_REASONS = {pb.STOP_NONE: "none", pb.STOP_LENGTH: "length", pb.STOP_EOS: "eos",
                pb.STOP_STRING: "stop", pb.STOP_CANCELLED: "cancelled"}
ERR_TIMEOUT = 12
ERR_PERM = 13
ERR_TOOBIG = 16


class GistdError(Exception):
    """An error reply from the daemon (or a timeout): code, name and message."""

    def __init__(self, code, name, message):
        super().__init__(f"{name}: {message}")
        self.code, self.name, self.message = code, name, message


class Timeout(GistdError):
    def __init__(self, message):
        super().__init__(ERR_TIMEOUT, "ERR_TIMEOUT", message)


def load_key(path):
    """A CURVE key (40 z85 characters) from a file: its first line that is not blank or a
    '#' comment."""
    with open(path) as f:
        for line in f:
            word = line.strip()
            if not word or word.startswith("#"):
                continue
            word = word.split()[0]
            if len(word) != 40:
                raise ValueError(f"{path}: '{word}' is not a CURVE key (40 z85 characters)")
            return word
    raise ValueError(f"{path} holds no key")


def parse_size(v):
    """Bytes from an int or a string like "64K", "8M", "1.5G" (powers of 1024)."""
    if isinstance(v, int):
        return v
    s = str(v).strip()
    if s[-1:] in "bB" and s[-2:-1].isdigit():
        s = s[:-1]
    mul = 1
    for i, u in enumerate("KMGT"):
        if s[-1:].upper() == u or s[-2:].upper() == u + "B" or s[-3:].upper() == u + "IB":
            s = s.rstrip("bB").rstrip("iI")[:-1]
            mul = 1024 ** (i + 1)
            break
    return int(float(s) * mul)


def _to_dict(msg):
    """A message as a dict of plain Python values (numbers stay numbers), defaults included."""
    out = {}
    for f in msg.DESCRIPTOR.fields:
        v = getattr(msg, f.name)
        is_msg = f.message_type is not None
        if f.label == f.LABEL_REPEATED:
            out[f.name] = [_to_dict(x) for x in v] if is_msg else list(v)
        else:
            out[f.name] = _to_dict(v) if is_msg else v
    return out


def _sampling(temp=None, top_k=None, top_p=None, min_p=None, repeat_penalty=None,
              repeat_last_n=None, seed=None):
    """A Sampling message when any setting is given (the rest at the daemon's defaults)."""
    given = [temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed]
    if all(v is None for v in given):
        return None
    d = dict(temp=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0, repeat_last_n=64,
             seed=0)
    for k, v in zip(d, given):
        if v is not None:
            d[k] = v
    return pb.Sampling(**d)


class Event:
    """One streamed event: kind "token" (id, text, raw, index, pos) or "compaction"
    (action, method, reason, first, last, level, lanes, rows_before, rows_after, tokens,
    bytes_freed = session_bytes_before - session_bytes)."""

    def __init__(self, kind, **kw):
        self.kind = kind
        self.__dict__.update(kw)

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k != "kind")
        return f"Event({self.kind}, {fields})"


def _compaction(e):
    return Event("compaction", action=e.action, method=e.method, reason=e.reason,
                 first=e.span.first, last=e.span.last, level=e.level, lanes=e.lanes,
                 rows_before=e.rows_before, rows_after=e.rows_after, tokens=e.tokens,
                 bytes_freed=e.bytes_freed, session_bytes_before=e.session_bytes_before,
                 session_bytes=e.session_bytes)


class Stream:
    """The events of one Generate, as an iterator. After it ends: reason ("length", "eos",
    "stop", "cancelled"), text (the whole generated text), usage (a dict). Breaking out of
    the loop early does not stop the daemon: call cancel()."""

    def __init__(self, client, req_id, session):
        self._c, self._id, self.session = client, req_id, session
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")
        self.reason = self.text = self.usage = self.stop = None
        self.done = False
        self.tokens = []

    def __iter__(self):
        return self

    def __next__(self):
        if self.done:
            raise StopIteration
        r = self._c._next_reply(self._id)
        body = r.WhichOneof("body")
        while not r.final and body not in ("token", "compaction"):
            # a keep-alive (progress) while the daemon prefills, or an event this client
            # does not know: the request goes on
            r = self._c._next_reply(self._id)
            body = r.WhichOneof("body")
        if body == "token":
            t = r.token
            self.tokens.append(t.id)
            return Event("token", id=t.id, raw=t.text, text=self._dec.decode(t.text),
                         index=t.index, pos=t.pos)
        if body == "compaction":
            return _compaction(r.compaction)
        self.done = True
        if body == "error":
            raise GistdError(r.error.code, r.error.name, r.error.message)
        d = r.done
        self.reason = STOP_REASONS.get(d.reason, str(d.reason))
        self.text = d.text.decode("utf-8", "replace")
        self.stop = d.stop.decode("utf-8", "replace")
        self.usage = _to_dict(d.usage)
        raise StopIteration

    def wait(self):
        """Reads the stream to its end; returns the generated text."""
        for _ in self:
            pass
        return self.text

    def cancel(self):
        """Stops the generation; the rest of the stream is read and dropped."""
        if not self.done:
            self._c.cancel(self.session)
            for _ in self:
                pass


class Thinking:
    """What Session.think wrote: text, thoughts finished, compaction events, tokens."""

    def __init__(self):
        self.text, self.thoughts, self.events, self.tokens = "", 0, [], 0


class Session:
    """A session on the daemon (from Client.open_session or Client.session)."""

    def __init__(self, client, sid):
        self.client, self.id = client, sid

    def append(self, text=None, tokens=None, role=None, special=False):
        """Appends and prefills; returns the usage (a dict)."""
        m = pb.Append(session=self.id, role=ROLES[role], special=special)
        if text is not None:
            m.text = text.encode() if isinstance(text, str) else text
        elif tokens is not None:
            m.tokens.extend(tokens)
        return _to_dict(self.client._call(pb.Request(append=m), "ack").usage)

    def generate(self, prompt=None, max_tokens=128, stop=(), role=None, prompt_role=None,
                 special=False, **sampling):
        """Starts a generation and returns its Stream (an iterator of Events). sampling:
        temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed."""
        m = pb.Generate(session=self.id, max_tokens=max_tokens, role=ROLES[role],
                        prompt_role=ROLES[prompt_role], special=special)
        if prompt:
            m.prompt = prompt.encode() if isinstance(prompt, str) else prompt
        m.stop.extend(s.encode() if isinstance(s, str) else s for s in stop)
        smp = _sampling(**sampling)
        if smp is not None:
            m.sampling.CopyFrom(smp)
        rid = self.client._send(pb.Request(generate=m))
        return Stream(self.client, rid, self.id)

    def complete(self, prompt=None, **kw):
        """Generates and returns the whole text."""
        return self.generate(prompt, **kw).wait()

    def think(self, prompt=None, max_tokens=256, compact=True, until="Answer:", **sampling):
        """A reasoning loop: generates one thought at a time (a thought ends with a paragraph
        break, gistd's thought boundary) and, with compact, has gistd compress each finished
        thought (Compact{last_thought}) before the next one is written. After the text
        `until` it generates to the end of that line and stops; it stops too at the end of
        text or after max_tokens in all. Returns a Thinking: text, thoughts (finished
        thoughts), events (the compaction Events), tokens (generated)."""
        out = Thinking()
        left, first = max_tokens, True
        while left > 0:
            st = self.generate(prompt if first else None, max_tokens=left,
                               stop=("\n\n", until), **sampling)
            first = False
            out.events += [e for e in st if e.kind == "compaction"]
            out.text += st.text
            out.tokens += st.usage.get("generated_tokens", 0)
            left = max_tokens - out.tokens
            if st.reason != "stop":
                break
            if st.stop == until:  # the answer: the rest of its line, then done
                st = self.generate(max_tokens=min(left, 16), stop=("\n",), **sampling)
                out.events += [e for e in st if e.kind == "compaction"]
                out.text += st.text
                out.tokens += st.usage.get("generated_tokens", 0)
                break
            out.thoughts += 1
            if compact:
                # a generation's last token is stored by the next step: an empty append
                # stores the paragraph break, so the thought it ends is finished
                self.append("")
                try:
                    out.events += self.compact(last_thought=True)
                except GistdError as ex:  # a paragraph break with no text before it
                    if ex.name != "ERR_NOTFOUND":
                        raise
        return out

    def score(self, text=None, tokens=None):
        """(tokens, logprobs) of text (or token ids), each given everything before it."""
        m = pb.Score(session=self.id)
        if text is not None:
            m.text = text.encode() if isinstance(text, str) else text
        else:
            m.tokens.extend(tokens)
        r = self.client._call(pb.Request(score=m), "score")
        return list(r.tokens), list(r.logprobs)

    def transcript(self, first=0, count=0):
        """The session's text (decoded) and token ids."""
        m = pb.TranscriptRequest(session=self.id, first=first, count=count)
        r = self.client._call(pb.Request(transcript=m), "transcript")
        return r.text.decode("utf-8", "replace"), list(r.tokens)

    def info(self):
        return self.client._call(pb.Request(info=pb.SessionInfoRequest(session=self.id)),
                                 "info", as_dict=True)

    def set_budget(self, hard, soft=0):
        return self.client.set_budget(hard, soft, session=self.id)

    def compact(self, first=None, last=None, last_thought=False):
        """Compacts positions [first, last] now, or the last finished thought; returns the
        compaction Events it caused."""
        m = pb.Compact(session=self.id, last_thought=last_thought)
        if not last_thought:
            m.span.first, m.span.last = first, last
        return self.client._call_events(pb.Request(compact=m), "ack")[0]

    def expand(self, first=None, last=None, max_tokens=0):
        """Brings compressed spans back from the cold transcript: those overlapping
        [first, last], or (no span) the ones most relevant to the session's last tokens.
        Returns the ExpandReply as a dict (spans, tokens, bytes, session_bytes, note, ...)."""
        m = pb.Expand(session=self.id, max_tokens=max_tokens)
        if first is not None:
            m.span.first, m.span.last = first, last
        return self.client._call(pb.Request(expand=m), "expand", as_dict=True)

    def snapshot(self):
        return self.client.snapshot(self.id)

    def cancel(self):
        self.client.cancel(self.id)

    def close(self, forget=False):
        """Closes the session; a snapshot it asked for stays (restorable) unless forget."""
        self.client._call(pb.Request(close=pb.CloseSession(session=self.id, forget=forget)),
                          "ack")


class Client:
    def __init__(self, endpoint=None, timeout=30.0, context=None, curve_server_key=None,
                 curve_public_key=None, curve_secret_key=None):
        self.endpoint = endpoint or os.environ.get("GISTD_ENDPOINT") or DEFAULT_ENDPOINT
        self.timeout = timeout
        keys = [curve_server_key, curve_public_key, curve_secret_key]
        if any(k is not None for k in keys) and not all(k is not None for k in keys):
            raise ValueError("CURVE needs curve_server_key, curve_public_key and "
                             "curve_secret_key, all three")
        self.curve = keys[0] is not None
        self.max_request_bytes = 0
        self._sock = self._mon = None
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if self.curve:
            key = [k.encode() if isinstance(k, str) else k for k in keys]
            self._sock.curve_serverkey, self._sock.curve_publickey, self._sock.curve_secretkey = key
        # handshake failures: read beside the socket, so a refusal is an error, not a timeout
        self._mon = self._sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        self._sock.connect(self.endpoint)
        self._next_id = 1
        self._queues = {}  # request id -> replies not yet read
        try:
            r = self._call(pb.Request(hello=pb.Hello(version=PROTOCOL_VERSION,
                                                     client="gistc.py")), "hello")
        except BaseException:
            self.close()
            raise
        self.server, self.version = r.server, r.version
        self.model = _to_dict(r.model)
        self.max_request_bytes = r.max_request_bytes

    def close(self):
        if self._sock is not None:
            if self._mon is not None:
                self._sock.disable_monitor()
                self._mon.close(0)
                self._mon = None
            self._sock.close(0)
            self._sock = None
            if self._own_ctx:
                self._ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- plumbing

    def _send(self, req):
        req.id = self._next_id
        self._next_id += 1
        payload = req.SerializeToString()
        if self.max_request_bytes and len(payload) > self.max_request_bytes:
            raise GistdError(ERR_TOOBIG, "ERR_TOOBIG",
                             f"{self.endpoint}: a request of {len(payload)} bytes is larger "
                             f"than the daemon's limit of {self.max_request_bytes} bytes")
        self._queues[req.id] = []
        self._sock.send_multipart([b"", payload])
        return req.id

    def _handshake_failed(self):
        """Raises ERR_PERM for a failed handshake read from the monitor."""
        from zmq.utils.monitor import recv_monitor_message
        ev = recv_monitor_message(self._mon)
        hint = ("it may not use CURVE, or its public key is not the one given" if self.curve
                else "it may require CURVE keys (a server key and a client key pair)")
        if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise GistdError(ERR_PERM, "ERR_PERM",
                             f"{self.endpoint}: the daemon refused this client's key (CURVE "
                             f"authentication failed, status {ev['value']})")
        raise GistdError(ERR_PERM, "ERR_PERM",
                         f"{self.endpoint}: the security handshake with the daemon failed: "
                         f"{hint}")

    def _pump(self):
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._mon, zmq.POLLIN)
        ready = dict(poller.poll(int(self.timeout * 1000)))
        if self._mon in ready:
            self._handshake_failed()
        if self._sock not in ready:
            raise Timeout(f"{self.endpoint}: no reply from gistd within {self.timeout} s")
        frames = self._sock.recv_multipart()
        r = pb.Reply()
        r.ParseFromString(frames[-1])
        q = self._queues.get(r.id)
        if q is not None:
            q.append(r)

    def _next_reply(self, rid):
        q = self._queues[rid]
        while not q:
            self._pump()
        r = q.pop(0)
        if r.final:
            del self._queues[rid]
        return r

    def _call(self, req, want, as_dict=False):
        return self._call_events(req, want, as_dict)[1]

    def _call_events(self, req, want, as_dict=False):
        """(compaction Events streamed before the final reply, the reply's `want` body)."""
        rid = self._send(req)
        events = []
        while True:
            r = self._next_reply(rid)
            if r.final:
                break
            if r.WhichOneof("body") == "compaction":
                events.append(_compaction(r.compaction))
        body = r.WhichOneof("body")
        if body == "error":
            raise GistdError(r.error.code, r.error.name, r.error.message)
        if body != want:
            raise GistdError(14, "ERR_PROTO", f"expected a {want} reply, got {body}")
        out = getattr(r, want)
        return events, _to_dict(out) if as_dict else out

    # ---- requests

    def open_session(self, policy="", budget=0, soft=0, template="", name="", no_bos=False,
                     sinks=0, recent=0, pin_system=False, params=None, **sampling):
        """Opens a session and returns it. budget/soft: bytes or "8M"-style sizes."""
        m = pb.OpenSession(policy=policy, budget_bytes=parse_size(budget),
                           soft_bytes=parse_size(soft), chat_template=template, name=name,
                           no_bos=no_bos)
        m.pins.sink_tokens, m.pins.recent_tokens = sinks, recent
        m.pins.system_prompt = pin_system
        for k, v in (params or {}).items():
            m.policy_params.add(key=str(k), value=str(v))
        smp = _sampling(**sampling)
        if smp is not None:
            m.sampling.CopyFrom(smp)
        return Session(self, self._call(pb.Request(open=m), "opened").session)

    def session(self, sid):
        return Session(self, sid)

    def sessions(self):
        r = self._call(pb.Request(list=pb.ListSessions()), "sessions")
        return [_to_dict(s) for s in r.sessions]

    def stats(self, sessions=False):
        return self._call(pb.Request(stats=pb.StatsRequest(sessions=sessions)), "stats",
                          as_dict=True)

    def set_budget(self, hard, soft=0, session=0):
        m = pb.SetBudget(session=session, hard_bytes=parse_size(hard), soft_bytes=parse_size(soft))
        return self._call(pb.Request(set_budget=m), "budget", as_dict=True)

    def snapshot(self, session=0):
        r = self._call(pb.Request(snapshot=pb.Snapshot(session=session)), "snapshot")
        return list(r.paths)

    def restore(self, session, as_new=False):
        """Brings a snapshotted session back: under its id, or as_new under a new one."""
        return Session(self, self._call(pb.Request(restore=pb.Restore(session=session,
                                                                      as_new=as_new)),
                                        "opened").session)

    def cancel(self, session):
        self._call(pb.Request(cancel=pb.Cancel(session=session)), "ack")


class Daemon:
    """Runs gistd as a child process on a free loopback port (or the given endpoint) and
    knows its endpoint once it is ready (gistd prints it on its first stdout line):

        with gistc.Daemon("build/bin/gistd", "model.gguf", "--kv-budget", "64M") as d:
            with gistc.Client(d.endpoint) as c: ...

    stop() sends SIGTERM and returns gistd's exit status."""

    def __init__(self, gistd, model, *args, listen="tcp://127.0.0.1:*", log_level="error"):
        import subprocess
        self.proc = subprocess.Popen([gistd, "--model", model, "--listen", listen,
                                      "--log-level", log_level, *args],
                                     stdout=subprocess.PIPE)
        self.endpoint = self.proc.stdout.readline().decode().strip()
        self.proc.stdout.close()
        if not self.endpoint:
            rc = self.proc.wait()
            raise RuntimeError(f"gistd exited with status {rc} before it was ready")

    def stop(self, sig=None):
        import signal
        import subprocess
        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("gistd did not stop within 120 s of the signal; killed") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
