"""gist-model info on a GGUF file this build cannot run (here a gpt2-architecture file, written
with the project's own GGUF writer) prints what the file holds — its metadata and its tensors
by type — and then what is unsupported, exiting 2, instead of refusing outright."""
import os
import subprocess
import sys

import numpy as np

import tap

sys.path.insert(0, os.path.join(tap.ROOT, "train"))
import gguf_writer as gw  # noqa: E402


def test_info_on_an_unsupported_file():
    path = os.path.join(tap.tmpdir(), "gpt2.gguf")
    w = gw.GGUFWriter()
    w.add_string("general.architecture", "gpt2")
    w.add_string("general.name", "a small gpt2")
    w.add_u32("gpt2.context_length", 128)
    w.add_u32("gpt2.block_count", 1)
    w.add_array("tokenizer.ggml.tokens", gw.STRING, ["a", "b", "c"])
    w.add_tensor("token_embd.weight", np.zeros((3, 8), np.float32))
    w.add_tensor("blk.0.attn_qkv.weight", np.zeros((24, 8), np.float32), gw.GGML_F16)
    w.write(path)
    p = subprocess.run([tap.tool("gist-model"), "info", path], capture_output=True, timeout=60)
    out, err = p.stdout.decode(), p.stderr.decode()
    assert p.returncode == 2, (p.returncode, out, err)
    assert "architecture:    gpt2" in out and '"a small gpt2"' in out, out
    assert "gpt2.context_length" in out and "128" in out, out
    assert "[3 x string]" in out, out
    assert "f32" in out and "f16" in out and "2 tensors" not in err, out
    unsupported = [ln for ln in out.splitlines() if ln.startswith("unsupported:")]
    assert unsupported and "gpt2" in unsupported[0], out
    assert "cannot be run here" in err, err


def test_info_on_a_file_that_is_no_gguf():
    path = os.path.join(tap.tmpdir(), "junk.gguf")
    with open(path, "wb") as f:
        f.write(b"junk" * 100)
    p = subprocess.run([tap.tool("gist-model"), "info", path], capture_output=True, timeout=60)
    assert p.returncode == 2 and p.stdout == b"" and path.encode() in p.stderr


tap.main(globals())
