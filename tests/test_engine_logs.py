"""``qasup up`` capturing output: a 94 MB burst byte for byte, rotation under load, last lines of a
fast-exiting process, echo on stdout; a log file deleted under it, a line longer than max_bytes, the state
folder's modes under umask 000 (issue 11)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

from enginehelp import PY, poll, stack, standin, together, together_alone, together_results, up  # noqa: F401  (fixtures)


def expected_lines(count: int, size: int) -> bytes:
    out = []
    for i in range(count):
        head = b"line %09d " % i
        out.append(head + b"x" * (size - len(head) - 1) + b"\n")
    return b"".join(out)


@together
def test_94mb_burst_arrives_byte_identical(stack, up, tmp_path):
    data = expected_lines(1_000_000, 94)
    assert len(data) == 94_000_000
    src = tmp_path / "burst.txt"
    src.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    del data
    stack.stack(echo=False)
    stack.unit("burst", command=["sh", "-c", f'cat "{src}"; exec sleep 100'], log={"max_bytes": 0})
    u = up().start()
    log = tmp_path / "logs" / "burst.log"
    poll(lambda: log.exists() and log.stat().st_size >= 94_000_000, 30, "the whole burst in the log", 0.05)
    assert hashlib.sha256(log.read_bytes()).hexdigest() == want
    assert u.stop() == 0
    assert log.stat().st_size == 94_000_000


@together
def test_rotation_under_load_loses_nothing(stack, up, tmp_path):
    stack.stack(echo=False)
    stack.unit("chatty", command=[PY, standin("svc_lines.py"), "100000", "100"],
               log={"max_bytes": "256KiB", "backups": 60}, ready={"log": "^done$"})
    u = up().start()
    u.wait_state("chatty", "ready", timeout=20)
    assert u.stop() == 0
    log = tmp_path / "logs" / "chatty.log"
    backups = sorted(log.parent.glob("chatty.log.*"), key=lambda p: int(p.suffix[1:]), reverse=True)
    assert len(backups) >= 30
    assert all(p.stat().st_size <= 256 * 1024 for p in backups)
    whole = b"".join(p.read_bytes() for p in backups) + log.read_bytes()
    assert whole == expected_lines(100_000, 100) + b"done\n"


@together
def test_last_lines_of_a_fast_exiting_process_are_kept(stack, up, tmp_path):
    stack.unit("quick", command=["sh", "-c", 'i=0; while [ $i -lt 2000 ]; do echo "quick line $i"; i=$((i+1)); '
                                 'done; printf "the very last words"'], restart={"policy": "never"})
    stack.unit("lines", command=[PY, standin("svc_lines.py"), "20000", "50", "--exit"], restart={"policy": "never"})
    u = up().start()
    u.wait_state("quick", "stopped")
    u.wait_state("lines", "stopped")
    quick = u.log("quick")
    assert quick == b"".join(b"quick line %d\n" % i for i in range(2000)) + b"the very last words"
    assert u.log("lines") == expected_lines(20000, 50) + b"done\n"
    u.wait_out("quick | the very last words")
    u.wait_out("lines | done")
    assert u.stop() == 0


@together
def test_echo_prefixes_each_line_with_the_service_name(stack, up, tmp_path):
    stack.unit("alpha", command=["sh", "-c", "echo one; echo two >&2; printf 'three\\nfo'; sleep 0.1; echo ur; exec sleep 100"])
    stack.unit("beta.svc", command=["sh", "-c", "echo hello from beta; exec sleep 100"])
    u = up().start()
    u.wait_out("alpha | four")
    u.wait_out("beta.svc | hello from beta")
    lines = u.out.splitlines()
    for want in ("alpha | one", "alpha | two", "alpha | three"):
        assert want in lines
    assert u.stop() == 0
    # --no-echo: the log has it all, stdout none of it
    u = up().start("--no-echo")
    u.wait_out("services ready")
    poll(lambda: u.log("beta.svc").count(b"hello from beta") == 2, 5, "beta's second run in its log")
    poll(lambda: u.log("alpha").count(b"one\ntwo\nthree\nfour\n") == 2, 5, "alpha's second run in its log")
    assert "hello from beta" not in u.out and "alpha |" not in u.out
    assert u.stop() == 0


@together
def test_a_deleted_log_file_is_created_again_and_logs_shows_it(stack, up, tmp_path):
    stack.stack(echo=False)
    stack.unit("ticker", command=["sh", "-c", 'i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 0.02; done'],
               log={"max_bytes": "1MiB", "backups": 2})
    u = up().start()
    log = tmp_path / "logs" / "ticker.log"
    poll(lambda: log.exists() and b"tick 5\n" in log.read_bytes(), 10, "ticks in the log")
    log.unlink()
    # within a bound (one check a second at a write), the file is there again, and gets new lines
    poll(lambda: log.exists() and log.read_bytes().count(b"tick ") >= 3, 5, "the log file created again")
    assert log.read_bytes().startswith(b"tick "), "a new file, from a line start"
    u.wait_out("ticker: log ")
    assert u.out.count("was deleted") == 1, u.out
    assert f"log {log} was deleted: writing to a new ticker.log from now on" in u.out
    first_new = int(log.read_bytes().split(b"\n")[0].split()[1])
    r = subprocess.run([PY, "-m", "supervisor", "logs", "ticker", "-n", "5"], cwd=tmp_path, capture_output=True,
                       timeout=20, env={k: v for k, v in os.environ.items() if k != "QASUP_SOCKET"})
    assert r.returncode == 0, r.stderr
    shown = [line for line in r.stdout.splitlines() if line.startswith(b"tick ")]
    assert len(shown) >= 3 and all(int(line.split()[1]) >= first_new for line in shown), r.stdout
    assert u.stop() == 0


@together
def test_a_line_three_times_max_bytes_is_kept_whole_in_one_file(stack, up, tmp_path):
    long_line = "L" * 2999
    script = ("import sys, time\n"
              "w = sys.stdout.buffer\n"
              "for i in range(60): w.write(b'normal %03d ...............\\n' % i)\n"   # 27 bytes each
              "w.write(b'" + long_line[:1000] + "'); w.flush(); time.sleep(0.05)\n"   # arrives in two pieces
              "w.write(b'" + long_line[1000:] + "\\n')\n"
              "for i in range(60, 120): w.write(b'normal %03d ...............\\n' % i)\n"
              "w.write(b'done\\n'); w.flush(); time.sleep(100)\n")
    stack.stack(echo=False)
    stack.unit("long", command=[PY, "-c", script], log={"max_bytes": 1000, "backups": 20}, ready={"log": "^done$"})
    u = up().start()
    u.wait_state("long", "ready", timeout=15)
    assert u.stop() == 0
    log = tmp_path / "logs" / "long.log"
    files = sorted(log.parent.glob("long.log.*"), key=lambda p: -int(p.suffix[1:])) + [log]
    parts = [p.read_bytes() for p in files]
    normal = [b"normal %03d ...............\n" % i for i in range(120)]
    want = b"".join(normal[:60]) + long_line.encode() + b"\n" + b"".join(normal[60:]) + b"done\n"
    assert b"".join(parts) == want, "the backups in order are the exact byte stream"
    assert all(p.endswith(b"\n") for p in parts), "no line spans two files"
    assert [p for p in parts if b"L" in p] == [long_line.encode() + b"\n"], "the long line has a file of its own"
    assert all(len(p) <= 1000 for p in parts if b"L" not in p)


@together
def test_state_folder_is_0700_and_its_files_0600_under_umask_000(stack, up, tmp_path):
    state = tmp_path / ".qasup"
    state.mkdir()
    os.chmod(state, 0o777)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("one")
    stack.unit("svc", command=["sh", "-c", "echo started; exec sleep 100"], ready={"log": "^started$"},
               prepare={"command": ["true"], "when_changed": ["src"]})
    u = up().start(wrap=["sh", "-c", 'umask 000; exec "$@"', "sh"])
    u.wait_out("services ready", 15)
    assert "Umask:\t0000" in open(f"/proc/{u.proc.pid}/status").read(), "qasup runs under umask 000"
    poll(lambda: (state / "prepare" / "svc.hash").exists(), 5, "the prepare hash")
    assert f"state folder {state} had mode 0777; now 0700" in u.out

    def modes() -> dict[str, int]:
        found = {".": stat.S_IMODE(os.lstat(state).st_mode)}
        for folder, dirs, names in os.walk(state):
            for n in dirs + names:
                p = os.path.join(folder, n)
                found[os.path.relpath(p, state)] = stat.S_IMODE(os.lstat(p).st_mode)
        return found

    got = modes()
    assert {"events.jsonl", "qasup.sock", "prepare", "prepare/svc.hash"} <= set(got), got
    assert stat.S_ISSOCK(os.lstat(state / "qasup.sock").st_mode)
    dirs = {".", "prepare"}
    assert {k: v for k, v in got.items() if k in dirs} == dict.fromkeys(dirs, 0o700), got
    assert {k: v for k, v in got.items() if k not in dirs} == {k: 0o600 for k in got if k not in dirs}, got
    assert u.stop() == 0
