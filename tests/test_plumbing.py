"""plumbing across processes: printing into pipes, stderr whose reader is gone (atomic files and folders: 01a_plumbing)."""
import os
import pytest


# ----------------------------------------------------------------------------- console output

def test_stderr_reader_gone_drops_output_not_the_command():
    import subprocess, sys
    code = ("import sys, time; from dsd_nb.plumbing import console_setup, print_stdout; console_setup(); time.sleep(0.5)\n"
            "for i in range(2000): sys.stderr.write('progress ' * 50 + '\\n'); sys.stderr.flush()\n"
            "open(sys.argv[1], 'w').write('finished')")
    import tempfile, pathlib
    done = pathlib.Path(tempfile.mkdtemp()) / "done.txt"
    p = subprocess.Popen([sys.executable, "-c", code, str(done)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    p.stderr.close()  # like `2>&1 | head -0`
    p.wait(timeout=120)
    assert p.returncode == 0 and done.read_text() == "finished"


def test_print_stdout_into_a_closed_pipe_exits_quietly(tmp_path):
    "`dsd-score ... | head -1`: the reader goes away; the command ends with status 141 and no traceback."
    import subprocess, sys
    code = "import time; from dsd_nb.plumbing import print_stdout; time.sleep(0.5); print_stdout('rank ' * 100000); print('never')"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader leaves before anything is printed
    err = p.stderr.read().decode(); p.wait(timeout=120)
    assert p.returncode == 141 and err == "", (p.returncode, err)
    ok = subprocess.run([sys.executable, "-c", "from dsd_nb.plumbing import print_stdout; print_stdout('a red circle')"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == "a red circle\n"
    from pathlib import Path
    if os.path.exists("/dev/full"):  # a full disk: one line that names the command, status 1 (the command's name used to be missing)
        with open("/dev/full", "w") as full:
            r = subprocess.run([str(Path(sys.executable).parent / "dsd-scene"), "--out", str(Path(tmp_path) / "s.png")], stdout=full, stderr=subprocess.PIPE, text=True)
        assert r.returncode == 1 and r.stderr == "dsd-scene: error: cannot write to standard output: No space left on device\n", (r.returncode, r.stderr)
    # started with stdout closed (`dsd-scene ... >&-`): it used to exit 0 with the captions silently dropped
    import shlex
    exe, png = shlex.quote(str(Path(sys.executable).parent / "dsd-scene")), shlex.quote(str(Path(tmp_path) / "s2.png"))
    r = subprocess.run(["bash", "-c", f"{exe} --out {png} >&-"], stderr=subprocess.PIPE, text=True)
    assert r.returncode == 1 and r.stderr.endswith("dsd-scene: error: cannot write to standard output: it is closed\n"), (r.returncode, r.stderr)

