"""``@dataclass`` without the start-up cost: the same classes as :func:`dataclasses.dataclass`, built in microseconds.

The standard decorator writes the source of ``__init__``, ``__repr__``, ``__eq__``, ``__hash__``,
``__setattr__`` and ``__delattr__`` for every class and compiles it (``exec``), about 1 ms per frozen class,
and asks :mod:`inspect` for a signature when the class has no docstring. qasup defines ~70 dataclasses on the
way to its first spawn, so that was the largest part of its import time. Here the methods are written once,
in this file (so they come from its ``.pyc``), and a class gets them bound to its field tables.

What a class gets is what ``dataclasses.dataclass`` gives it, for the options qasup uses (``init``, ``repr``,
``eq``, ``order``, ``frozen``, ``slots``; ``field(default=..., default_factory=..., init=..., repr=...,
compare=..., hash=...)``, ``__post_init__``, inheritance from another such class): the same ``__init__``
arguments and errors, ``repr``, equality, hash, ordering, :class:`dataclasses.FrozenInstanceError`,
``__match_args__``, and real :class:`dataclasses.Field` objects in ``__dataclass_fields__``, so that
:func:`dataclasses.fields`, :func:`dataclasses.replace`, :func:`dataclasses.asdict` and
:func:`dataclasses.is_dataclass` work on them. A method the class writes itself is kept, as there.
``tests/test_records.py`` checks each of these against the standard decorator.
"""

from __future__ import annotations

import dataclasses
from _thread import get_ident
from collections.abc import Callable
from dataclasses import MISSING, Field, FrozenInstanceError
from operator import attrgetter
from typing import Any, ClassVar, TypeVar, dataclass_transform, get_origin, overload

__all__ = ["dataclass"]

T = TypeVar("T")

_FIELD = getattr(dataclasses, "_FIELD", None)          # the marker of a real field (not ClassVar/InitVar)
_Params = getattr(dataclasses, "_DataclassParams", None)
_NO_ARGS: tuple[()] = ()


def _is_classvar(annotation: object) -> bool:
    if isinstance(annotation, str):
        return annotation.lstrip().startswith(("ClassVar", "typing.ClassVar"))
    return get_origin(annotation) is ClassVar


def _own_fields(cls: type) -> list[Field[Any]]:
    out = []
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if _is_classvar(annotation):
            continue
        value = cls.__dict__.get(name, MISSING)
        if isinstance(value, Field):
            f = value
        else:
            f = dataclasses.field(default=value)
        f.name = name
        f.type = annotation
        if _FIELD is not None:
            f._field_type = _FIELD            # type: ignore[attr-defined]
        if getattr(f, "kw_only", False) is MISSING:
            f.kw_only = False
        out.append(f)
        # as dataclasses does: a plain default stays a class attribute, a Field object does not
        if isinstance(value, Field):
            if f.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
    return out


def _set(cls: type, name: str, value: object) -> None:
    if name not in cls.__dict__:
        setattr(cls, name, value)


def _make_init(cls_name: str, fields: list[Field[Any]], frozen: bool, post_init: bool) -> Callable[..., None]:
    init = tuple(f for f in fields if f.init)
    names = tuple(f.name for f in init)
    known = frozenset(names)
    n = len(names)
    # per init field: (name, default, factory); MISSING when there is none
    table = tuple((f.name, f.default, f.default_factory) for f in init)
    # fields outside __init__ that still get a value there: those with a default factory
    later = tuple((f.name, f.default_factory) for f in fields if not f.init and f.default_factory is not MISSING)
    required = sum(1 for _, d, fa in table if d is MISSING and fa is MISSING)
    takes = f"{n + 1}" if required == n else f"from {required + 1} to {n + 1}"
    setter = object.__setattr__ if frozen else setattr   # frozen: step around its own __setattr__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        given = len(args)
        if given == n and not kwargs:     # every argument given by position (most messages)
            for key, given_value in zip(names, args):
                setter(self, key, given_value)
            for key, make in later:
                setter(self, key, make())
            if post_init:
                self.__post_init__()
            return
        if given > n:
            raise TypeError(f"{cls_name}.__init__() takes {takes} positional arguments but {given + 1} were given")
        if kwargs:
            for k in kwargs:
                if k not in known:
                    raise TypeError(f"{cls_name}.__init__() got an unexpected keyword argument {k!r}")
        i = 0
        for name, default, factory in table:
            if i < given:
                if kwargs and name in kwargs:
                    raise TypeError(f"{cls_name}.__init__() got multiple values for argument {name!r}")
                value = args[i]
            elif name in kwargs:
                value = kwargs[name]
            elif default is not MISSING:
                value = default
            elif factory is not MISSING:
                value = factory()
            else:
                missing = [nm for nm, d, fa in table[i:] if nm not in kwargs and d is MISSING and fa is MISSING]
                s = "s" if len(missing) > 1 else ""
                quoted = [repr(x) for x in missing]
                listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
                raise TypeError(f"{cls_name}.__init__() missing {len(missing)} required positional argument{s}: "
                                f"{listed}")
            setter(self, name, value)
            i += 1
        for name, factory in later:
            setter(self, name, factory())
        if post_init:
            self.__post_init__()

    return __init__


def _make_repr(fields: list[Field[Any]]) -> Callable[[Any], str]:
    names = tuple(f.name for f in fields if f.repr)
    active: set[tuple[int, int]] = set()

    def __repr__(self: Any) -> str:
        key = (id(self), get_ident())
        if key in active:
            return "..."
        active.add(key)
        try:
            body = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        finally:
            active.discard(key)
        return f"{self.__class__.__qualname__}({body})"

    return __repr__


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if not names:
        return lambda _o: _NO_ARGS
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda o: (one(o),)
    return attrgetter(*names)


def _make_eq(key: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any, Any], Any]:
    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return key(self) == key(other)
        return NotImplemented

    return __eq__


def _make_order(key: Callable[[Any], tuple[Any, ...]]) -> dict[str, Callable[[Any, Any], Any]]:
    def __lt__(self: Any, other: Any) -> Any:
        return key(self) < key(other) if other.__class__ is self.__class__ else NotImplemented

    def __le__(self: Any, other: Any) -> Any:
        return key(self) <= key(other) if other.__class__ is self.__class__ else NotImplemented

    def __gt__(self: Any, other: Any) -> Any:
        return key(self) > key(other) if other.__class__ is self.__class__ else NotImplemented

    def __ge__(self: Any, other: Any) -> Any:
        return key(self) >= key(other) if other.__class__ is self.__class__ else NotImplemented

    return {"__lt__": __lt__, "__le__": __le__, "__gt__": __gt__, "__ge__": __ge__}


def _make_hash(key: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any], int]:
    def __hash__(self: Any) -> int:
        return hash(key(self))

    return __hash__


def _make_frozen(cls: Any, names: frozenset[str]) -> tuple[Callable[..., None], Callable[..., None]]:
    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)

    return __setattr__, __delattr__


def _put_frozen(cls: Any, names: frozenset[str]) -> None:
    setter, deleter = _make_frozen(cls, names)
    cls.__setattr__ = setter
    cls.__delattr__ = deleter


def _getstate(self: Any) -> list[Any]:
    return [getattr(self, f) for f in self.__dataclass_fields__]


def _setstate(self: Any, state: list[Any]) -> None:
    for name, value in zip(self.__dataclass_fields__, state):
        object.__setattr__(self, name, value)


def _with_slots(cls: type, fields: list[Field[Any]], frozen: bool) -> type:
    body = dict(cls.__dict__)
    inherited: set[str] = set()
    for base in cls.__mro__[1:-1]:
        inherited.update(getattr(base, "__slots__", ()) or ())
        inherited.update(getattr(base, "__dataclass_fields__", {}))
    body["__slots__"] = tuple(f.name for f in fields if f.name not in inherited)
    for f in fields:
        body.pop(f.name, None)
    body.pop("__dict__", None)
    body.pop("__weakref__", None)
    qualname = getattr(cls, "__qualname__", None)
    new: Any = type(cls)(cls.__name__, cls.__bases__, body)
    if qualname is not None:
        new.__qualname__ = qualname
    if frozen:
        if "__getstate__" not in body:
            new.__getstate__ = _getstate
        if "__setstate__" not in body:
            new.__setstate__ = _setstate
    return new


def _process(cls: Any, init: bool, repr: bool, eq: bool, order: bool, frozen: bool, slots: bool) -> type:
    fields: dict[str, Field[Any]] = {}
    for base in cls.__mro__[-1:0:-1]:
        fields.update(getattr(base, "__dataclass_fields__", None) or {})
    for f in _own_fields(cls):
        fields[f.name] = f
    listed = list(fields.values())
    own_hash = cls.__dict__.get("__hash__", MISSING)
    explicit_hash = not (own_hash is MISSING or (own_hash is None and "__eq__" in cls.__dict__))
    cls.__dataclass_fields__ = fields
    if _Params is not None:
        try:
            cls.__dataclass_params__ = _Params(init, repr, eq, order, False, frozen)
        except TypeError:       # another Python's private signature: the params are informative only
            pass
    names = frozenset(fields)
    compare = _getter(tuple(f.name for f in listed if f.compare))
    if init:
        _set(cls, "__init__", _make_init(cls.__qualname__, listed, frozen, hasattr(cls, "__post_init__")))
    if repr:
        _set(cls, "__repr__", _make_repr(listed))
    if eq:
        _set(cls, "__eq__", _make_eq(compare))
    if order:
        for name, fn in _make_order(compare).items():
            if name in cls.__dict__:
                raise TypeError(f"Cannot overwrite attribute {name} in class {cls.__name__}. "
                                f"Consider using functools.total_ordering")
            setattr(cls, name, fn)
    if frozen:
        for name in ("__setattr__", "__delattr__"):
            if name in cls.__dict__:
                raise TypeError(f"Cannot overwrite attribute {name} in class {cls.__name__}")
        _put_frozen(cls, names)
    # __hash__ as dataclasses decides it with unsafe_hash=False
    if eq and frozen and not explicit_hash:
        hashed = _getter(tuple(f.name for f in listed if (f.compare if f.hash is None else f.hash)))
        cls.__hash__ = _make_hash(hashed)
    elif eq and not frozen and not explicit_hash:
        cls.__hash__ = None
    if "__doc__" not in cls.__dict__ or cls.__dict__["__doc__"] is None:
        cls.__doc__ = f"{cls.__name__}({', '.join(f.name for f in listed if f.init)})"
    _set(cls, "__match_args__", tuple(f.name for f in listed if f.init and not getattr(f, "kw_only", False)))
    if slots:
        new = _with_slots(cls, listed, frozen)
        if frozen:
            _put_frozen(new, names)
        cls = new
    if getattr(cls, "__abstractmethods__", None):
        import abc
        abc.update_abstractmethods(cls)
    return cls


@overload
def dataclass(cls: type[T], /) -> type[T]: ...


@overload
def dataclass(*, init: bool = True, repr: bool = True, eq: bool = True, order: bool = False,
              frozen: bool = False, slots: bool = False) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(field_specifiers=(dataclasses.field, Field))
def dataclass(cls: type[T] | None = None, /, *, init: bool = True, repr: bool = True, eq: bool = True,
              order: bool = False, frozen: bool = False, slots: bool = False) -> Any:
    """:func:`dataclasses.dataclass` for the options above (see the module's text)."""
    def wrap(c: type[T]) -> type[T]:
        return _process(c, init, repr, eq, order, frozen, slots)

    return wrap if cls is None else wrap(cls)

