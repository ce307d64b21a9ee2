"""OpenSSL is loaded only when TLS is used (supervisor.lazyssl), and TLS still works when it is.

The daemon's resident memory target (issue 3: no more than supervisord's) depends on it: libssl and libcrypto
are ~5 MiB of a ~23 MiB daemon. Each check runs in a fresh interpreter (pytest itself has ssl loaded).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest
from test_engine_start import free_port

from conftest import qasup
from enginehelp import PY, poll, stack, standin, together, together_alone, together_results, up  # noqa: F401  (fixtures)


def openssl_mapped(pid: int | str = "self") -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return any("libcrypto" in line or "libssl" in line or "/_ssl." in line for line in f)


def run_fresh(code: str) -> subprocess.CompletedProcess:
    prologue = textwrap.dedent("""
        import sys
        def openssl_mapped():
            with open("/proc/self/maps") as f:
                return any("libcrypto" in l or "libssl" in l or "/_ssl." in l for l in f)
    """)
    return subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60)


@together
def test_stand_in_keeps_openssl_out_until_tls_is_used():
    r = run_fresh("""
        from supervisor import lazyssl
        assert lazyssl.install()
        import anyio, anyio.streams.tls, anyio._core._sockets, anyio._backends._asyncio, asyncio, h11, httpx
        import ssl
        from ssl import SSLContext
        assert not openssl_mapped() and not lazyssl.loaded()
        import hashlib
        assert hashlib.sha256(b"x").hexdigest().startswith("2d711642") and hashlib.md5(b"").hexdigest()[:4] == "d41d"
        assert not isinstance(object(), SSLContext) and not issubclass(int, SSLContext)
        assert "not loaded" in repr(SSLContext)
        asyncio.run(asyncio.sleep(0))       # asyncio runs without its TLS support
        assert not openssl_mapped()
        ctx = ssl.create_default_context()  # first real use: loads the real module
        assert openssl_mapped() and lazyssl.loaded()
        real = sys.modules["ssl"]
        assert type(real).__name__ == "module" and real.SSLContext is ssl.SSLContext
        assert isinstance(ctx, SSLContext) and isinstance(ctx, ssl.SSLContext)
        assert issubclass(real.SSLContext, SSLContext)
        class Mine(SSLContext):             # subclassing the placeholder subclasses the real class
            pass
        assert issubclass(Mine, real.SSLContext)
        assert SSLContext(real.PROTOCOL_TLS_CLIENT).verify_mode == real.CERT_REQUIRED
        assert SSLContext.wrap_socket is real.SSLContext.wrap_socket  # attributes reach the real class
        assert ssl.OP_NO_SSLv3 == real.OP_NO_SSLv3 and ssl.__file__ == real.__file__
        import importlib
        assert importlib.import_module("ssl") is real
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@together
def test_placeholder_call_loads_the_real_class():
    r = run_fresh("""
        from supervisor import lazyssl
        lazyssl.install()
        import anyio
        from ssl import SSLContext
        assert not openssl_mapped()
        ctx = SSLContext(2)   # PROTOCOL_TLS_SERVER
        assert openssl_mapped() and type(ctx).__module__ == "ssl"
        lazyssl.load()        # idempotent
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@together
def test_install_is_a_no_op_when_ssl_or_asyncio_is_already_imported():
    r = run_fresh("""
        import asyncio
        from supervisor import lazyssl
        before = sys.modules.get("ssl")
        assert lazyssl.install() is False and sys.modules.get("ssl") is before and lazyssl.loaded()
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@together
def test_http_probe_client_does_not_load_openssl(tmp_path):
    port = free_port()
    srv = subprocess.Popen([PY, standin("svc_http.py"), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "listening"
        r = run_fresh(f"""
            from supervisor import lazyssl
            lazyssl.install()
            import anyio
            from supervisor.readiness.httpprobe import HttpProbe
            async def main():
                p = HttpProbe("http://127.0.0.1:{port}/models", "POST", "ok", 1.0)
                try:
                    return await p.once(), p.last_error
                finally:
                    await p.aclose()
            print(anyio.run(main), openssl_mapped())
        """)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "(True, None) False"
    finally:
        srv.kill()
        srv.wait()


@together
def test_daemon_runs_without_openssl_and_https_probes_still_work(stack, up, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-days", "1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    plain, tls = free_port(), free_port()
    stack.unit("marker", command=["sh", "-c", "echo up; exec sleep 100"], ready={"log": "^up"})
    stack.unit("web", command=[PY, standin("svc_http.py"), str(plain)],
               ready={"http": {"url": f"http://127.0.0.1:{plain}/"}, "timeout": "20s"})
    u = up().start()
    u.wait_out("services ready", timeout=20)
    assert not openssl_mapped(u.proc.pid), "the daemon loaded OpenSSL without any TLS in the stack"
    # an HTTPS probe loads OpenSSL on first use and runs the TLS handshake: the self-signed certificate is
    # refused, which is what proves the handshake ran (a broken ssl module would fail differently); the
    # probe's last error is in the "not ready within 3s" failure
    stack.unit("secure", command=[PY, standin("svc_http.py"), str(tls), "--tls", str(cert), str(key)],
               ready={"http": {"url": f"https://127.0.0.1:{tls}/"}, "timeout": "3s"}, restart={"policy": "never"})
    r = qasup("reload", cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout

    def refused():
        s = u.service_status("secure")
        return "CERTIFICATE_VERIFY_FAILED" in (s.get("last_error") or "") and s
    poll(refused, 20, lambda: f"the https probe's certificate error in {u.service_status('secure')}")
    assert openssl_mapped(u.proc.pid)
    assert u.stop() == 0
