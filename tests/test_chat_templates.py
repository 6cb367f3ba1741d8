"""Chat templates against a real gistd: a session that names no template takes the family of
the model file's tokenizer.chat_template (told by its markers), and each family renders a
conversation as its Jinja template does. The transcript the daemon returns is compared with
the expected text; the files are make-tiny models whose tokenizer does not add a space before
each piece (--no-space-prefix), so the text round-trips exactly. An unknown template falls
back to plain with one warning in the daemon's log; a file without one to none."""
import os
import subprocess
import sys

import tap

sys.path.insert(0, os.path.join(tap.ROOT, "clients", "python"))
os.environ.setdefault("GISTD_PYPROTO", os.path.join(tap.BUILD, "gen", "python"))
import gistc  # noqa: E402

TMP = tap.tmpdir()

# Fragments of the Jinja templates the families ship with (enough to carry their markers).
JINJA = {
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
              "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}",
    "llama3": "{% set content = '<|start_header_id|>' + message['role'] + "
              "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}",
    "llama2": "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] "
              "+ ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + "
              "message['content'] + ' ' + eos_token }}{% endif %}",
    "gemma": "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + "
             "'<end_of_turn>\\n' }}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}",
    "phi3": "{% if message['role'] == 'user' %}{{'<|user|>' + '\\n' + message['content'] + "
            "'<|end|>' + '\\n' + '<|assistant|>' + '\\n'}}{% endif %}",
    "zephyr": "{% if message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + "
              "eos_token }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' }}",
}

SYS, USER, BOT, USER2 = "Be brief.", "Hi there", "Hello", "Bye now"

# The conversation (system, user, assistant, user) as each family writes it.
WANT = {
    "chatml": f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\n{USER}<|im_end|>\n"
              f"<|im_start|>assistant\n{BOT}<|im_end|>\n<|im_start|>user\n{USER2}<|im_end|>\n",
    "llama3": f"<|start_header_id|>system<|end_header_id|>\n\n{SYS}<|eot_id|>"
              f"<|start_header_id|>user<|end_header_id|>\n\n{USER}<|eot_id|>"
              f"<|start_header_id|>assistant<|end_header_id|>\n\n{BOT}<|eot_id|>"
              f"<|start_header_id|>user<|end_header_id|>\n\n{USER2}<|eot_id|>",
    "llama2": f"[INST] <<SYS>>\n{SYS}\n<</SYS>>\n\n{USER} [/INST] {BOT} </s>"
              f"[INST] {USER2} [/INST]",
    "gemma": f"<start_of_turn>user\n{SYS}\n\n{USER}<end_of_turn>\n"
             f"<start_of_turn>model\n{BOT}<end_of_turn>\n<start_of_turn>user\n{USER2}<end_of_turn>\n",
    "phi3": f"<|system|>\n{SYS}<|end|>\n<|user|>\n{USER}<|end|>\n<|assistant|>\n{BOT}<|end|>\n"
            f"<|user|>\n{USER2}<|end|>\n",
    "zephyr": f"<|system|>\n{SYS}</s>\n<|user|>\n{USER}</s>\n<|assistant|>\n{BOT}</s>\n"
              f"<|user|>\n{USER2}</s>\n",
    "plain": f"System: {SYS}\nUser: {USER}\nAssistant: {BOT}\nUser: {USER2}\n",
    "none": f"{SYS}{USER}{BOT}{USER2}",
}


def model(name, jinja):
    path = os.path.join(TMP, f"tmpl-{name}.gguf")
    args = [tap.tool("gist-model"), "make-tiny", path, "--seed", "7", "--no-space-prefix"]
    if jinja is not None:
        args += ["--chat-template", jinja]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return path


def converse(session):
    """The conversation's transcript, with the end-of-text token (id 2, whose text is the
    template's "</s>": the transcript leaves control tokens out of its text) written back."""
    for role, text in (("system", SYS), ("user", USER), ("assistant", BOT), ("user", USER2)):
        session.append(text, role=role)
    text, toks = session.transcript()
    if 2 in toks:  # the text between end-of-text tokens, joined by "</s>"
        out, last = "", 0
        for i, t in enumerate(toks + [2]):
            if t == 2:
                out += (session.transcript(last, i - last)[0] if i > last else "") + "</s>"
                last = i + 1
        text = out[:-len("</s>")]
    return text


def test_families_from_the_file():
    for family, jinja in JINJA.items():
        with gistc.Daemon(tap.tool("gistd"), model(family, jinja)) as d, \
                gistc.Client(d.endpoint) as c:
            s = c.open_session(no_bos=True)
            got = converse(s)
            assert got == WANT[family], (family, got, WANT[family])
            assert s.info()["chat_template"] == family


def test_named_template_wins():
    """A session that names a template gets it whatever the file says."""
    with gistc.Daemon(tap.tool("gistd"), model("chatml", JINJA["chatml"])) as d, \
            gistc.Client(d.endpoint) as c:
        for family in ("llama3", "gemma", "plain", "none"):
            got = converse(c.open_session(template=family, no_bos=True))
            assert got == WANT[family], (family, got)
        try:
            c.open_session(template="vicuna")
            raise AssertionError("an unknown template name was accepted")
        except gistc.GistdError as err:
            assert "unknown chat template 'vicuna'" in str(err) and "zephyr" in str(err)


def test_unknown_and_absent():
    path = model("unknown", "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}"
                            "{% endfor %}")
    proc = subprocess.Popen([tap.tool("gistd"), "--model", path, "--listen", "tcp://127.0.0.1:*",
                             "--log-level", "warn"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        endpoint = proc.stdout.readline().decode().strip()
        with gistc.Client(endpoint) as c:
            s = c.open_session(no_bos=True)
            assert converse(s) == WANT["plain"]
            assert s.info()["chat_template"] == "plain"
            c.open_session(no_bos=True)  # warned once, at load, not per session
    finally:
        proc.terminate()
        log = proc.communicate(timeout=30)[1].decode()
    lines = [ln for ln in log.splitlines() if "chat template" in ln]
    assert len(lines) == 1 and "plain" in lines[0] and "warn" in lines[0], log
    with gistc.Daemon(tap.tool("gistd"), model("absent", None)) as d, \
            gistc.Client(d.endpoint) as c:
        s = c.open_session(no_bos=True)
        assert converse(s) == WANT["none"]
        assert s.info()["chat_template"] == "none"


tap.main(globals())
