"""Every shipped ``[[on_log]]`` and ``[ready] log`` pattern (services.d/*.toml) against output of the real programs.

The samples lie in tests/integration/samples/:

* ``*.log`` are **real captures**: what the program printed, stdout and stderr in one pipe as qasup reads them.
  FastChat 0.2.36 (controller, model worker on the CPU with a tiny model, OpenAI API server; good starts and
  every failure below) by tests/integration/fastchat/capture_samples.py; Sanic 25 (``app.run()`` with 4 workers,
  as QAnything's sanic_api, rerank, OCR and LLM-relay servers start, and the ``sanic`` command) by
  samples/capture_sanic.py; tritonclient's gRPC error when Triton is down by samples/capture_tritonclient.py.
* ``*.src.log`` are **taken from the programs' source**, for what cannot run on a machine without a GPU or a
  model store: Triton's log lines (server ``src/grpc/grpc_server.cc``, ``src/http_server.cc``, ``src/main.cc``;
  core ``model_lifecycle.cc``, ``model_repository_manager.cc``, ``pinned_memory_manager.cc``, in Triton's own
  ``I1201 13:20:01.112233 PID file.cc:LINE]`` preamble), vLLM's KV-cache errors (``raise_if_cache_size_invalid``
  in 0.2-0.6, ``_check_enough_kv_cache_memory`` in vllm/v1/core/kv_cache_utils.py), PyTorch's CUDA
  out-of-memory and no-GPU errors, NCCL's error names, Transformers' model-file errors that need the Hub
  (utils/hub.py, tokenization_utils_base.py). Lines that would come through FastChat carry FastChat's real
  ``DATE | ERROR | stderr | `` prefix, as the captures show it.

For each family of units and each of its samples, ``EXPECT`` says how many lines each kind of rule matches;
every kind not listed must match nothing (the good starts are the negative samples: a normal run fires no rule).
Beyond that: every rule of every shipped unit has a known kind (a new rule needs samples), every rule matches a
line of its family's samples, and so does every top-level alternative of its pattern (no dead alternatives).
Matching is qasup's own: ``PatternSet`` + ``LineScanner`` from supervisor/logs/scan.py, with Hyperscan where it is
installed and RE2 alone, each checked against ``LinePattern.search`` line by line.
"""

from __future__ import annotations

import functools
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from supervisor.config.patterns import LinePattern, compile_line_pattern
from supervisor.logs.scan import LineScanner, PatternSet

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "services.d"
SAMPLES = ROOT / "tests" / "integration" / "samples"

# A rule's kind: the first whose marker is in its pattern (the [ready] log marker is kind "ready").
KINDS = [
    ("oom", "CUDA out of memory"),
    ("kv-cache", "KV cache"),
    ("nccl", "NCCL error"),
    ("port", "already in use"),
    ("model-files", "does not appear to have a file named"),
    ("triton-store", "Poll failed for model directory"),
    ("no-gpu", "no CUDA-capable device"),
    ("no-sglang", "No module named .?sglang"),
    ("module", "No module named .?(fastchat"),
    ("triton-unavailable", "StatusCode"),
    ("databases", "MilvusException"),
    ("traceback", "Traceback"),
]

GPU = ["cuda-oom.src.log", "cuda-no-gpu.src.log"]
FAMILIES: dict[str, tuple[list[str], list[str]]] = {
    "fastchat": (["fastchat-controller", "fastchat-openai-api", "hf-worker", "vllm-worker", "sglang-worker"],
                 sorted(p.name for p in SAMPLES.glob("fastchat-*.log"))
                 + GPU + ["nccl-error.src.log", "vllm-kv-cache.src.log", "transformers-model-files.src.log"]),
    "triton": (sorted(p.stem for p in UNITS.glob("triton*.toml")),
               sorted(p.name for p in SAMPLES.glob("triton-*.src.log")) + GPU),
    "sanic-app": (["rerank", "ocr", "llm-relay"],
                  sorted(p.name for p in SAMPLES.glob("sanic25-run-*.log"))
                  + ["tritonclient-grpc-unavailable.log", "cuda-oom.src.log"]),
    "sanic": (["sanic"], sorted(p.name for p in SAMPLES.glob("sanic25-*.log"))),
}

# (family, sample) -> lines matched per kind; every other kind: 0.
EXPECT: dict[tuple[str, str], dict[str, int]] = {
    # FastChat, real: good starts (the controller's log includes the worker registering, the API's a chat
    # completion served) fire nothing; the controller's failed bind does not end the process: only the rule does.
    ("fastchat", "fastchat-controller-start.log"): {},
    ("fastchat", "fastchat-worker-start.log"): {},
    ("fastchat", "fastchat-api-start.log"): {},
    ("fastchat", "fastchat-controller-port-taken.log"): {"port": 1},
    ("fastchat", "fastchat-worker-port-taken.log"): {"port": 1},
    ("fastchat", "fastchat-api-port-taken.log"): {"port": 1},
    # an empty folder fails in Transformers' tokenizer conversion with a generic AttributeError: no rule names it,
    # requires_paths (the folder's config.json) refuses it before the start instead
    ("fastchat", "fastchat-worker-empty-model.log"): {"traceback": 1},
    ("fastchat", "fastchat-worker-no-weights.log"): {"traceback": 1, "model-files": 1},
    ("fastchat", "fastchat-worker-no-tokenizer.log"): {"traceback": 1, "model-files": 2},   # the raise line too
    ("fastchat", "fastchat-worker-missing-folder.log"): {"traceback": 2, "model-files": 2},
    ("fastchat", "fastchat-worker-no-weights-unquantised.log"): {"traceback": 1, "model-files": 1},
    ("fastchat", "fastchat-worker-no-config-unquantised.log"): {"traceback": 1, "model-files": 1},
    ("fastchat", "fastchat-no-such-module.log"): {"module": 1},
    ("fastchat", "fastchat-not-installed.log"): {"module": 1},
    ("fastchat", "fastchat-vllm-worker-no-vllm.log"): {"traceback": 1, "module": 1},
    ("fastchat", "fastchat-sglang-worker-no-sglang.log"): {"traceback": 1, "no-sglang": 1},
    # FastChat, from source
    ("fastchat", "cuda-oom.src.log"): {"traceback": 1, "oom": 4},
    ("fastchat", "cuda-no-gpu.src.log"): {"no-gpu": 5},
    ("fastchat", "nccl-error.src.log"): {"nccl": 6},
    ("fastchat", "vllm-kv-cache.src.log"): {"kv-cache": 3},
    ("fastchat", "transformers-model-files.src.log"): {"model-files": 3},
    # Triton, from source
    ("triton", "triton-start.src.log"): {},
    ("triton", "triton-port-taken.src.log"): {"port": 2},
    ("triton", "triton-model-store.src.log"): {"triton-store": 4},
    ("triton", "triton-no-gpu.src.log"): {"no-gpu": 2},
    ("triton", "cuda-oom.src.log"): {"oom": 4},
    ("triton", "cuda-no-gpu.src.log"): {"no-gpu": 5},
    # rerank, OCR, LLM relay: Sanic apps started with app.run() (real Sanic 25), tritonclient (real)
    ("sanic-app", "sanic25-run-start-stop.log"): {},
    ("sanic-app", "sanic25-run-port-taken.log"): {"port": 1, "traceback": 1},
    ("sanic-app", "sanic25-run-startup-error.log"): {"traceback": 1},
    ("sanic-app", "sanic25-run-missing-module.log"): {"traceback": 1},
    ("sanic-app", "tritonclient-grpc-unavailable.log"): {"triton-unavailable": 2, "traceback": 1},
    ("sanic-app", "cuda-oom.src.log"): {"oom": 4},
    # QAnything's API (services.d/sanic.toml with its sanic.d/ drop-ins, helper E's unit): real Sanic 25, both ways
    # of starting it
    ("sanic", "sanic25-run-start-stop.log"): {"ready": 4},
    ("sanic", "sanic25-run-port-taken.log"): {"port": 1, "traceback": 1},
    ("sanic", "sanic25-run-startup-error.log"): {"traceback": 1},
    ("sanic", "sanic25-run-missing-module.log"): {"traceback": 1},
    ("sanic", "sanic25-cli-port-taken.log"): {"port": 1},
    ("sanic", "sanic25-cli-startup-error.log"): {"traceback": 1},
    ("sanic", "sanic25-cli-missing-module.log"): {"traceback": 1},
}


def kind_of(pattern: str) -> str | None:
    return next((kind for kind, marker in KINDS if marker in pattern), None)


def unit_patterns(name: str) -> list[tuple[str, str]]:
    """(kind, pattern) of a shipped unit's rules and ready marker, and of those its drop-ins
    (services.d/NAME.d/*.toml, conditional or not) set for the plans they apply in; kind "?" when it has none."""
    out: list[tuple[str, str]] = []
    for path in [UNITS / f"{name}.toml", *sorted((UNITS / f"{name}.d").glob("*.toml"))]:
        part = tomllib.loads(path.read_text())
        found = [(kind_of(rule["match"]) or "?", rule["match"]) for rule in part.get("on_log", [])]
        if "log" in part.get("ready", {}):
            found.append(("ready", part["ready"]["log"]))
        out += [f for f in found if f not in out]
    return out


def top_level_alternatives(pattern: str) -> list[str]:
    """``a|b(c|d)|e`` -> ``["a", "b(c|d)", "e"]`` (escapes and classes respected)."""
    alts, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]" or pattern[i - 1] == "["
        elif c == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "]" or pattern[i + 1:i + 3] == "^]":
                i += 1 + (pattern[i + 1] == "^")
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            alts.append(pattern[start:i])
            start = i + 1
        i += 1
    alts.append(pattern[start:])
    return alts


@functools.cache
def pattern_set(patterns: tuple[str, ...], engine: str) -> PatternSet:
    return PatternSet(patterns, engine=engine)


@functools.cache
def line_pattern(pattern: str) -> LinePattern:
    return compile_line_pattern(pattern)


@functools.cache
def sample_lines(name: str) -> tuple[bytes, list[bytes]]:
    """A sample's bytes and its lines (without the empty string after a final newline)."""
    data = (SAMPLES / name).read_bytes()
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return data, lines


def matched_lines(patterns: list[str], data: bytes, engine: str) -> list[list[bytes]]:
    """For each pattern, the lines of ``data`` it matches (in order, repeats kept), found by qasup's scanner."""
    pset = pattern_set(tuple(patterns), engine)
    hits: list[list[bytes]] = [[] for _ in patterns]
    scanner = LineScanner(pset, lambda pid, line, _ctx: hits[pid].append(line), context_lines=0)
    for i in range(0, len(data), 4096):   # in chunks, as a pipe delivers them
        scanner.feed(data[i:i + 4096])
    scanner.flush()
    return hits


def shipped_units() -> list[str]:
    return sorted(p.stem for p in UNITS.glob("*.toml"))


def test_every_shipped_unit_is_in_one_family_and_every_sample_is_used():
    members = [u for units, _ in FAMILIES.values() for u in units]
    assert sorted(members) == shipped_units(), "a shipped unit without samples: add it to FAMILIES"
    used = {s for _, samples in FAMILIES.values() for s in samples}
    on_disk = {p.name for p in SAMPLES.glob("*.log")}
    assert on_disk <= used, f"samples no test reads: {sorted(on_disk - used)}"
    missing = {s for s in used if not (SAMPLES / s).is_file()}
    assert not missing, f"samples named here but absent: {sorted(missing)}"
    listed = {(f, s) for f, (_, samples) in FAMILIES.items() for s in samples}
    assert listed == set(EXPECT), (f"samples without expectations: {sorted(listed - set(EXPECT))}; "
                                   f"expectations without samples: {sorted(set(EXPECT) - listed)}")


@pytest.mark.parametrize("unit", shipped_units())
def test_every_rule_has_a_known_kind(unit):
    unknown = [p for kind, p in unit_patterns(unit) if kind == "?"]
    assert not unknown, f"{unit}: rules of no known kind (add a kind and real samples): {unknown}"


def family_of(unit: str) -> str:
    return next(f for f, (units, _) in FAMILIES.items() if unit in units)


@pytest.mark.parametrize("engine", ["auto", "re2"])
@pytest.mark.parametrize("unit", shipped_units())
def test_patterns_match_their_samples_exactly(unit, engine):
    family = family_of(unit)
    rules = unit_patterns(unit)
    kinds = {kind for kind, _ in rules}
    problems = []
    for sample in FAMILIES[family][1]:
        data, lines = sample_lines(sample)
        hits = matched_lines([p for _, p in rules], data, engine)
        got: Counter[str] = Counter()
        for (kind, pattern), found in zip(rules, hits):
            reference = [line for line in lines if line_pattern(pattern).search(line)]
            assert found == reference, f"{unit}: the scanner and the line matcher disagree on {pattern!r}"
            got[kind] += len(found)
        want = {k: n for k, n in EXPECT[(family, sample)].items() if k in kinds}
        have = {k: n for k, n in got.items() if n}
        if have != want:
            problems.append(f"{sample}: expected {want}, matched {have}")
    assert not problems, f"{unit} ({engine}):\n" + "\n".join(problems)


# The sanic unit is helper E's (its real samples and the tests of its behaviour: integration/test_sanic.py): it
# is held to the exact counts above, not to this.
OWN_UNITS = [u for u in shipped_units() if family_of(u) != "sanic"]


@pytest.mark.parametrize("unit", OWN_UNITS)
def test_every_rule_and_every_alternative_matches_a_real_or_source_line(unit):
    lines = [line for s in FAMILIES[family_of(unit)][1] for line in sample_lines(s)[1]]
    dead = []
    for kind, pattern in unit_patterns(unit):
        for alt in top_level_alternatives(pattern):
            lp = compile_line_pattern(alt)
            if not any(lp.search(line) for line in lines):
                dead.append(f"{kind}: {alt!r} (of {pattern!r})")
    assert not dead, f"{unit}: pattern parts that no sample line matches:\n" + "\n".join(dead)


def test_fastchat_traceback_rule_fires_on_fastchat_output_where_the_old_one_did_not():
    """The issue's case: FastChat prints ``DATE | ERROR | stderr | Traceback ...``, so ``^Traceback`` never fired."""
    line = next(line for line in (SAMPLES / "fastchat-worker-no-weights.log").read_bytes().split(b"\n")
                if b"Traceback" in line)
    assert line.startswith(b"20") and b" | ERROR | stderr | Traceback (most recent call last):" in line
    shipped = next(p for kind, p in unit_patterns("hf-worker") if kind == "traceback")
    assert compile_line_pattern(shipped).search(line)
    assert not compile_line_pattern(r"^Traceback \(most recent call last\):").search(line)


def test_top_level_alternatives_splitter():
    assert top_level_alternatives(r"a|b(c|d)|e") == ["a", "b(c|d)", "e"]
    assert top_level_alternatives(r"x\|y|[|]|(?:p|q)") == [r"x\|y", "[|]", "(?:p|q)"]
    assert top_level_alternatives(r"[]|]z|w") == ["[]|]z", "w"]
