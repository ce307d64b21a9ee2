"""The project's configuration error: every problem of a run, reported at once as ``FILE: KEY: message``."""

from __future__ import annotations

from supervisor.records import dataclass

__all__ = ["ConfigError", "Problem", "Problems", "first_error"]


@dataclass(frozen=True, order=True)
class Problem:
    """One problem in one file; ``key`` is a dotted path such as ``restart.max_delay`` (``-`` for the whole file).
    A problem with a place in the file (a TOML syntax error) has its ``line`` and ``column`` and reads
    ``FILE:LINE:COLUMN: message``, as compilers write it."""

    file: str
    key: str
    message: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}: {self.message}"
        return f"{self.file}: {self.key}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found, never for a single one when more are known."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class Problems:
    """A collector: loaders add to it and raise once at the end."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, file: object, key: str, message: str, line: int = 0, column: int = 0) -> None:
        self.items.append(Problem(str(file), key or "-", message, line, column))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def first_error(exc: BaseException) -> str:
    """``Type: message`` of the first exception that is not a group (a task group raises groups), for a log line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {str(exc)[:300]}"
