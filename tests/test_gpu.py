"""GPU inventory (supervisor.plan.gpu): declared inventories, NVML, and "no GPUs" without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from supervisor.plan.gpu import GpuInfo, GpuSpecError, load_inventory, parse_gpus_spec, read_nvml

RTX = {"index": 0, "name": "NVIDIA GeForce RTX 3090", "memory_total_mib": 24576, "memory_free_mib": 24000,
       "compute_capability": "8.6"}


def run_python(code: str, tmp_path: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (the repository importable), no QASUP_GPUS."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if extra_path is not None:
        env["PYTHONPATH"] = f"{extra_path}:{env['PYTHONPATH']}"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60,
    )


# ------------------------------------------------------------------------------------------------
# Declared inventory


def test_inline_json() -> None:
    two = [RTX, {"index": 1, "name": "Tesla T4", "memory_total_mib": 15360, "compute_capability": "7.5"}]
    gpus = parse_gpus_spec(json.dumps(two))
    assert gpus == [
        GpuInfo(0, "NVIDIA GeForce RTX 3090", 24576, 24000, "8.6"),
        GpuInfo(1, "Tesla T4", 15360, 15360, "7.5"),  # free defaults to total
    ]
    assert gpus[0].capability == (8, 6) and gpus[0].to_json() == RTX
    assert gpus[0].label() == "GPU 0 (NVIDIA GeForce RTX 3090, 24576 MiB)"


def test_file_and_none(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps([{**RTX, "index": 3}, RTX]))
    assert [g.index for g in parse_gpus_spec(str(path))] == [0, 3]  # sorted by index
    assert parse_gpus_spec("none") == [] and parse_gpus_spec(" NONE ") == []
    assert parse_gpus_spec("[]") == []


def test_capability_compares_as_numbers() -> None:
    blackwell = parse_gpus_spec(json.dumps([{**RTX, "compute_capability": "12.0"}]))[0]
    assert blackwell.capability > (8, 6)
    numeric = parse_gpus_spec(json.dumps([{**RTX, "compute_capability": 7.5}]))[0]
    assert numeric.compute_capability == "7.5"


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ("", None, "empty"),
        ("/no/such/gpus.json", None, "neither \"none\", inline JSON nor an existing file"),
        ("[{]", None, "is not valid JSON"),
        ('{"index": 0}', None, "must be a JSON list"),
        ("[1]", None, "GPU entry #0 must be a JSON object"),
        (json.dumps([{k: v for k, v in RTX.items() if k != "name"}]), "name", "missing field 'name'"),
        (json.dumps([{**RTX, "memory": 1}]), "memory", "unknown field 'memory'"),
        (json.dumps([{**RTX, "index": -1}]), "index", '"index" must be a whole number >= 0'),
        (json.dumps([{**RTX, "index": True}]), "index", '"index" must be a whole number'),
        (json.dumps([{**RTX, "name": " "}]), "name", '"name" must be a non-empty string'),
        (json.dumps([{**RTX, "memory_total_mib": "24GB"}]), "memory_total_mib", "GPU 0: \"memory_total_mib\" must be"),
        (json.dumps([{**RTX, "memory_total_mib": 0}]), "memory_total_mib", "must be a whole number of MiB > 0"),
        (json.dumps([{**RTX, "memory_free_mib": 30000}]), "memory_free_mib", "between 0 and memory_total_mib (24576)"),
        (json.dumps([{**RTX, "compute_capability": "sm_86"}]), "compute_capability", 'a string like "8.6"'),
        (json.dumps([RTX, RTX]), "index", "GPU index 0 is declared twice"),
    ],
)
def test_bad_specs(spec: str, field: str | None, message: str) -> None:
    with pytest.raises(GpuSpecError) as caught:
        parse_gpus_spec(spec, "QASUP_GPUS")
    assert caught.value.field == field
    assert message in str(caught.value)
    assert str(caught.value).startswith("QASUP_GPUS: ")


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GpuSpecError, match="cannot read"):
        parse_gpus_spec(str(tmp_path))  # a folder


def test_precedence() -> None:
    env = {"QASUP_GPUS": json.dumps([{**RTX, "index": 5}])}
    flag = load_inventory(json.dumps([RTX]), env)
    assert (flag.source, [g.index for g in flag.gpus]) == ("--gpus", [0])
    declared = load_inventory(None, env)
    assert (declared.source, [g.index for g in declared.gpus], declared.reason) == ("QASUP_GPUS", [5], None)
    assert load_inventory("none", env).gpus == ()
    assert load_inventory(None, {"QASUP_GPUS": "  "}).source == "nvml"  # empty = unset
    with pytest.raises(GpuSpecError, match="^--gpus: "):
        load_inventory("[1]", env)


# ------------------------------------------------------------------------------------------------
# NVML: no library / no driver / broken library = no GPUs with a reason, never a traceback


def test_without_nvml_package(tmp_path: Path) -> None:
    result = run_python(
        """
        import sys
        sys.modules["pynvml"] = None  # the import fails as if nvidia-ml-py were not installed
        from supervisor.plan.gpu import load_inventory
        inv = load_inventory(None, {})
        print(len(inv.gpus), inv.source)
        print(inv.reason)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == "0 nvml"
    assert "nvidia-ml-py" in lines[1] and lines[1].startswith("no GPUs")


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        ("raise OSError('libnvidia-ml.so.1: cannot open shared object file')", "OSError: libnvidia-ml.so.1"),
        ("raise NVMLError('Driver Not Loaded')", "NVMLError: Driver Not Loaded"),
    ],
)
def test_nvml_library_that_fails_to_load(tmp_path: Path, failure: str, expected: str) -> None:
    # A real module named pynvml whose init fails, found first on PYTHONPATH of a real interpreter.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "pynvml.py").write_text(
        "class NVMLError(Exception):\n    pass\n"
        f"def nvmlInit():\n    {failure}\n"
        "def nvmlShutdown():\n    raise AssertionError('shutdown without init')\n"
    )
    result = run_python(
        "from supervisor.plan.gpu import read_nvml\ngpus, reason = read_nvml()\nprint(len(gpus)); print(reason)\n",
        tmp_path,
        extra_path=fake,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    count, reason = result.stdout.splitlines()
    assert count == "0" and reason.startswith("no GPUs: NVML is not available") and expected in reason


def test_one_unreadable_gpu_does_not_hide_the_others(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "pynvml.py").write_text(textwrap.dedent(
        """
        class NVMLError(Exception):
            pass
        class Mem:
            total = 24576 * 1024 * 1024
            free = 1000 * 1024 * 1024 + 12345
        def nvmlInit(): pass
        def nvmlShutdown(): pass
        def nvmlDeviceGetCount(): return 2
        def nvmlDeviceGetHandleByIndex(i):
            if i == 1:
                raise NVMLError("GPU is lost")
            return i
        def nvmlDeviceGetName(h): return b"NVIDIA GeForce RTX 3090"
        def nvmlDeviceGetMemoryInfo(h): return Mem()
        def nvmlDeviceGetCudaComputeCapability(h): return (8, 6)
        """
    ))
    result = run_python(
        "from supervisor.plan.gpu import read_nvml\ngpus, reason = read_nvml()\nprint(gpus); print(reason)\n",
        tmp_path,
        extra_path=fake,
    )
    assert result.returncode == 0, result.stderr
    gpus_line, reason = result.stdout.splitlines()
    assert "GpuInfo(index=0, name='NVIDIA GeForce RTX 3090', memory_total_mib=24576, memory_free_mib=1000, compute_capability='8.6')" in gpus_line
    assert reason == "GPU 1 could not be read (NVMLError: GPU is lost)"


def test_this_machine_never_raises(tmp_path: Path) -> None:
    result = run_python(
        "from supervisor.plan.gpu import read_nvml\ngpus, reason = read_nvml()\nprint(len(gpus)); print(reason)\n",
        tmp_path,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    count, reason = result.stdout.splitlines()
    assert int(count) > 0 or reason.startswith("no GPUs")


def test_real_nvml() -> None:
    gpus, reason = read_nvml()
    if not gpus:
        pytest.skip(f"NVML does not work on this machine: {reason}")
    assert [g.index for g in gpus] == list(range(len(gpus)))
    for g in gpus:
        assert g.name and 0 < g.memory_total_mib and 0 <= g.memory_free_mib <= g.memory_total_mib
        assert g.capability >= (3, 0)
    inventory = load_inventory(None, {})
    assert inventory.source == "nvml" and [g.name for g in inventory.gpus] == [g.name for g in gpus]


def test_nvml_is_read_only_when_the_stack_uses_a_gpu(tmp_path: Path) -> None:
    """A stack without QAnything's rules and without `vram_mib` never imports pynvml (~3 MiB of the daemon)."""
    fake = tmp_path / "fake"
    fake.mkdir()
    seen = tmp_path / "nvml-imported"
    (fake / "pynvml.py").write_text(textwrap.dedent(f"""
        open({str(seen)!r}, "a").write("imported\\n")
        class NVMLError(Exception):
            pass
        class Mem:
            total = 24576 * 1024 * 1024
            free = 20000 * 1024 * 1024
        def nvmlInit(): pass
        def nvmlShutdown(): pass
        def nvmlDeviceGetCount(): return 1
        def nvmlDeviceGetHandleByIndex(i): return i
        def nvmlDeviceGetName(h): return "NVIDIA GeForce RTX 3090"
        def nvmlDeviceGetMemoryInfo(h): return Mem()
        def nvmlDeviceGetCudaComputeCapability(h): return (8, 6)
        """))
    stack = tmp_path / "stack"
    (stack / "services.d").mkdir(parents=True)
    (stack / "services.d" / "web.toml").write_text('command = ["sleep", "1"]\n')
    plan = "import sys\nfrom supervisor.cli.main import main\nsys.exit(main(['--config', 'qasup.toml', 'plan', '--json']))\n"
    (stack / "qasup.toml").write_text('[stack]\nname = "s"\n')
    r = run_python(plan, stack, extra_path=fake)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["gpus"] == [] and not seen.exists()

    (stack / "services.d" / "llm.toml").write_text('command = ["sleep", "1"]\nvram_mib = 9000\n')
    r = run_python(plan, stack, extra_path=fake)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert seen.read_text() == "imported\n"
    assert [g["memory_free_mib"] for g in doc["gpus"]] == [20000]
