"""console.send_output_to_log: a child process's own lines reach the terminal, everything else lands in the log."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import logging, os, sys, warnings
    from rlad_megatron.console import say, send_output_to_log
    print("before redirect")
    send_output_to_log(sys.argv[1], tag="rank0")
    say("ours: progress")
    say("ours: table", stdout=True)
    print("library print")
    sys.stderr.write("library stderr\\n")
    os.write(2, b"[W1129 c++ warning]\\n")
    warnings.warn("a library warning")
    logging.getLogger("vllm.engine").info("engine INFO line")
    subprocess_code = "import sys; sys.stderr.write('child process line\\\\n')"
    import subprocess; subprocess.run([sys.executable, "-c", subprocess_code], check=True)
    raise RuntimeError("the run failed")
""")


def test_console_keeps_ours_and_the_error_log_gets_the_rest(tmp_path: Path) -> None:
    log = tmp_path / "out" / "train.log"
    done = subprocess.run([sys.executable, "-c", CHILD, str(log)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout.splitlines() == ["before redirect", "ours: table"]
    err = done.stderr
    assert err.startswith("ours: progress\n")
    assert "RuntimeError: the run failed" in err and f"(full log: {log})" in err  # errors reach the console
    for line in ("library print", "library stderr", "c++ warning", "a library warning", "engine INFO line",
                 "child process line"):
        assert line not in err and line not in done.stdout, line
    text = log.read_text()
    for line in ("library print", "library stderr", "[W1129 c++ warning]", "child process line",
                 "RuntimeError: the run failed"):
        assert line in text, line
    assert "rank0 WARNING py.warnings:" in text and "UserWarning: a library warning" in text
    assert "rank0 INFO vllm.engine: engine INFO line" in text
    assert "ours:" not in text


def test_without_redirection_console_is_stderr() -> None:
    from rlad_megatron.console import console_stream, log_path

    if log_path() is None:  # nothing in this pytest process redirected its output
        assert console_stream() is sys.stderr and console_stream(stdout=True) is sys.stdout
