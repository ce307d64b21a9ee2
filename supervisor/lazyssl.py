"""Load OpenSSL only when something actually uses TLS.

Importing :mod:`ssl` maps libssl and libcrypto: about 5 MiB of the daemon's resident memory (a sixth of it),
for a supervisor that in most stacks never speaks TLS: its control socket is a Unix socket and HTTP probes
usually target ``http://localhost``.  Yet both asyncio and anyio import ``ssl`` when they are imported.
:func:`install`, called by ``qasup up`` before either is imported, changes that for the daemon process:

- **asyncio** is imported while ``ssl`` is hidden.  asyncio supports that (it is how it runs on a Python
  built without OpenSSL): its own TLS transports, ``loop.create_connection(ssl=...)`` and
  ``loop.start_tls()``, then say "Python ssl module is not available".  qasup never uses them: HTTPS probes
  go through httpx → httpcore → anyio, whose ``TLSStream`` drives :mod:`ssl` itself.
- **hashlib** uses its built-in implementations (md5, sha1, sha2, sha3, blake2: everything qasup and its
  libraries hash with; httpx imports hashlib for digest authentication) instead of OpenSSL's: ``_hashlib``,
  the OpenSSL binding, is hidden for the life of the process.  What only OpenSSL provides
  (``hashlib.pbkdf2_hmac``, ``scrypt``, algorithms such as ``sm3``) is then absent, and :mod:`hmac` uses its
  pure-Python path.
- **anyio** (and anything else) gets a stand-in module for ``ssl``: ``import ssl`` and
  ``from ssl import SSLContext`` (anyio's import-time needs; it uses the name in annotations only) load
  nothing; the first use of any other attribute (``ssl.create_default_context``, ``ssl.MemoryBIO``, ...)
  imports the real module, after which the stand-in carries the real module's contents and
  ``sys.modules["ssl"]`` is the real module.  Until then ``SSLContext`` is a placeholder: calling it,
  subclassing it or reading an attribute of it loads the real class; ``isinstance`` / ``issubclass``
  against it are false (no instance or subclass of the real class can exist before its module is
  loaded) and delegate to the real class once it is.

:func:`load` loads the real module on purpose.  The test suite checks that a running daemon has no
libcrypto mapped and that HTTPS probes still work (tests/test_lazyssl.py).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _Placeholder:
    """Stands for ``ssl.SSLContext`` until the real module is loaded."""

    def __init__(self, stub: _SSLStub, name: str) -> None:
        self._stub = stub
        self._name = name

    def _real_class(self) -> type:
        return getattr(self._stub._load(), self._name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._real_class()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return getattr(self._real_class(), attr)

    def __mro_entries__(self, bases: tuple[type, ...]) -> tuple[type, ...]:
        return (self._real_class(),)

    def __instancecheck__(self, obj: Any) -> bool:
        real = self._stub.__dict__["_real"]
        return real is not None and isinstance(obj, getattr(real, self._name))

    def __subclasscheck__(self, cls: type) -> bool:
        real = self._stub.__dict__["_real"]
        return real is not None and issubclass(cls, getattr(real, self._name))

    def __repr__(self) -> str:
        return f"<ssl.{self._name}, not loaded yet>"


class _SSLStub(types.ModuleType):
    """``sys.modules["ssl"]`` until TLS is used; becomes a copy of the real module on first use."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(self._load(), name)

    def _load(self) -> types.ModuleType:
        real = self.__dict__["_real"]
        if real is None:
            import importlib

            if sys.modules.get("ssl") is self:
                del sys.modules["ssl"]
            try:
                real = importlib.import_module("ssl")
            except BaseException:
                sys.modules.setdefault("ssl", self)
                raise
            self.__dict__.update(real.__dict__)
            self.__dict__["_real"] = real
        return real


def install() -> bool:
    """Import asyncio without TLS support, hide OpenSSL's hashes and put the ``ssl`` stand-in in place.

    Does nothing (returns False) when ``ssl``, asyncio or ``_hashlib`` is already imported: then OpenSSL is
    loaded already and there is nothing to save.
    """
    if any(name in sys.modules for name in ("ssl", "asyncio", "_hashlib")):
        return False
    sys.modules["_hashlib"] = None  # type: ignore[assignment]  # hashlib falls back to its own code
    sys.modules["ssl"] = None  # type: ignore[assignment]  # import ssl -> ImportError, as without OpenSSL
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]
    stub = _SSLStub("ssl", "stand-in for the ssl module until TLS is used (supervisor.lazyssl)")
    stub.__dict__["_real"] = None
    stub.__dict__["SSLContext"] = _Placeholder(stub, "SSLContext")
    sys.modules["ssl"] = stub
    return True


def loaded() -> bool:
    """Whether the real ``ssl`` module (and with it OpenSSL) is loaded in this process."""
    mod = sys.modules.get("ssl")
    if isinstance(mod, _SSLStub):
        return mod.__dict__["_real"] is not None
    return mod is not None


def load() -> None:
    """Load the real ``ssl`` module now (nothing to do when it is loaded or the stand-in is not in place)."""
    mod = sys.modules.get("ssl")
    if isinstance(mod, _SSLStub):
        mod._load()
