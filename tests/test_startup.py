"""What a command or ``import blocks`` loads before it does anything: little, so they start fast.

Each check runs in a fresh interpreter, since this test process has long imported everything.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def _modules_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; return {"torch": bool, ...} of heavy modules it loaded."""
    probe = textwrap.dedent(code) + textwrap.dedent("""
        import json, sys
        print(json.dumps({name: name in sys.modules
                          for name in ("torch", "transformers", "nltk", "scipy", "matplotlib")}))
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_blocks_loads_no_torch():
    loaded = _modules_after("import blocks")
    assert not loaded["torch"] and not loaded["nltk"]


def test_help_loads_no_torch():
    loaded = _modules_after("""
        import contextlib, io
        from blocks.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["--help"])
            except SystemExit:
                pass
    """)
    assert not any(loaded.values()), loaded


def test_list_loads_neither_transformers_nor_nltk():
    loaded = _modules_after("""
        import contextlib, io
        from blocks.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(["list"])
        assert "BiLSTM" in out.getvalue() and "treebank" in out.getvalue()
    """)
    assert loaded["torch"]
    assert not loaded["transformers"] and not loaded["nltk"] and not loaded["matplotlib"]


def test_registries_hold_the_builtins_after_a_plain_import():
    """A user's script needs no loader call: the first look-up registers the built-in entries."""
    loaded = _modules_after("""
        import blocks
        from blocks.registry import BLOCKS, LOSSES, METRICS, TOKENIZERS
        assert "BiLSTM" in BLOCKS, BLOCKS.names()
        assert LOSSES.get("KD").registered_name == "KD"
        assert "accuracy" in METRICS.names() and "treebank" in TOKENIZERS
        assert blocks.Block.__name__ == "Block" and blocks.Spec.__name__ == "Spec"
    """)
    assert loaded["torch"]


def test_a_block_registered_first_still_sees_the_builtins():
    loaded = _modules_after("""
        from blocks import Block, register_block
        from blocks.registry import BLOCKS

        @register_block("MyIdentity")
        class MyIdentity(Block):
            def __init__(self, inputs):
                super().__init__()
                self.output_spec = inputs[0]

        assert "MyIdentity" in BLOCKS and "BiLSTM" in BLOCKS
        assert {"MyIdentity", "BiLSTM", "Linear"} <= set(BLOCKS.names())
    """)
    assert loaded["torch"]
