"""plumbing: atomic files and folders, printing into pipes, stderr whose reader is gone."""
import os
import pytest


# ----------------------------------------------------------------------------- files and console output

def test_write_atomic_replaces_whole_files(tmp_path):
    from dsd_nb.plumbing import write_atomic
    f = write_atomic(tmp_path / "a.txt", "first, longer")
    assert write_atomic(f, b"2nd").read_bytes() == b"2nd"
    assert write_atomic(tmp_path / "u.txt", "ünïcode").read_bytes() == "ünïcode".encode("utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "u.txt"]
    with pytest.raises(FileNotFoundError, match="cannot write"): write_atomic(tmp_path / "missing" / "b.txt", "x")
    for bad in (5, True, [104, 105], None):
        with pytest.raises(TypeError, match="bytes or str"): write_atomic(tmp_path / "a.txt", bad)
    assert f.read_bytes() == b"2nd" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "u.txt"]  # failures leave nothing behind


def test_write_atomic_follows_links_writes_into_devices_and_keeps_modes(tmp_path):
    import os, stat, threading
    from dsd_nb.plumbing import write_atomic
    target = tmp_path / "target.txt"; target.write_text("old")
    (tmp_path / "link.txt").symlink_to(target)
    write_atomic(tmp_path / "link.txt", "new")
    assert (tmp_path / "link.txt").is_symlink() and target.read_text() == "new"
    os.chmod(target, 0o640); write_atomic(target, "newer")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    write_atomic(os.devnull, "into the void")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)  # still the device, not a file that replaced it
    fifo = tmp_path / "pipe"; os.mkfifo(fifo); got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read())); reader.start()
    write_atomic(fifo, "through the pipe"); reader.join(timeout=30)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    write_atomic(tmp_path / ("n" * 250 + ".png"), b"x")  # a long but valid name: the temporary file's name stays short
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["target.txt", "link.txt", "pipe", "n" * 250 + ".png"])


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


def test_atomic_folder_gives_the_usual_modes(tmp_path):
    "Folders made with mkdtemp are private (0700); what atomic_folder puts in place has the modes mkdir/open would give."
    import os, stat
    from dsd_nb.plumbing import atomic_folder
    umask = os.umask(0); os.umask(umask)
    with atomic_folder(tmp_path / "made") as t:
        (t / "sub").mkdir(mode=0o700); (t / "sub" / "w.bin").write_bytes(b"1"); os.chmod(t / "sub" / "w.bin", 0o600)
    d = tmp_path / "made"
    assert [stat.S_IMODE(p.stat().st_mode) for p in (d, d / "sub", d / "sub" / "w.bin")] == [0o777 & ~umask, 0o777 & ~umask, 0o666 & ~umask]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made"]
