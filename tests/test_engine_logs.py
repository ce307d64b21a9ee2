"""``qasup up`` capturing output: a 94 MB burst byte for byte, rotation under load, last lines of a
fast-exiting process, echo on stdout."""

from __future__ import annotations

import hashlib

from enginehelp import PY, poll, stack, standin, up  # noqa: F401  (fixtures)


def expected_lines(count: int, size: int) -> bytes:
    out = []
    for i in range(count):
        head = b"line %09d " % i
        out.append(head + b"x" * (size - len(head) - 1) + b"\n")
    return b"".join(out)


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
