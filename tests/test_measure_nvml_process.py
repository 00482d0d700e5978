"""NvmlSampler, its windows and its helper process against tests/fake_nvml.py (no GPU needed).

The fake is scripted through $SABENCH_FAKE_NVML, which the helper inherits; the helper
imports it as "tests.fake_nvml:make_fake" (the sampler puts the repository root on the
helper's PYTHONPATH).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import sabench.measure.nvml as nvml_mod
from sabench.measure.nvml import NvmlSampler
from sabench.measure.nvml_readings import NvmlUnavailable, parse_pci_bus_id, used_bytes_by_bus
from fake_nvml import FAKE_ENV, SPEC, device, script  # tests/ is on sys.path under pytest

MY_PID = os.getpid()
BUS0 = "00000000:19:00.0"
BUS1 = "00000000:3B:00.0"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process tests")


@pytest.fixture
def fake(monkeypatch):
    """fake(devices..., **script_kw) scripts the helper's NVML; returns nothing."""

    def set_script(*devices, **kw):
        monkeypatch.setenv(FAKE_ENV, script(devices, **kw))

    return set_script


def _gone(pid: int) -> bool:
    """No such process, or a zombie (its new parent may not reap it at once)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return False


def test_peak_idle_subtraction_and_process_memory(fake):
    fake(device(BUS0, readings=[100, 200, 500, 300], procs=[(MY_PID, 64), (MY_PID + 1, 1 << 30)]))
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001)
    assert s.mapping == "pci_bus_id" and s.notes == []
    assert s._probe.ready["torch_imported"] is False  # the helper stays light
    s.start()
    time.sleep(0.1)
    r = s.stop()
    s.close()
    assert r["idle_used_bytes"] == 100  # read by the helper at start(), before sampling
    assert r["peak_used_bytes"] == 500
    assert r["peak_minus_idle_bytes"] == 400
    assert r["peak_process_bytes"] == 64  # the parent's pid, not the helper's
    assert r["n_samples"] >= 3 and r["interval_s"] == 0.001
    assert r["device_mapping"] == "pci_bus_id"
    assert r["notes"] == []
    assert set(r) == {"peak_used_bytes", "idle_used_bytes", "peak_minus_idle_bytes", "peak_process_bytes",
                      "power_samples", "n_samples", "interval_s", "achieved_hz", "duration_s",
                      "device_mapping", "notes"}
    assert r["power_samples"] is None  # the fake has no power reading (and no energy counter)


def test_read_idle_reuse_across_windows_misuse_and_context_manager(fake):
    fake(device(BUS0, readings=[5, 50, 20]))
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001, track_process=False)
    child = s.child_pid
    with pytest.raises(RuntimeError, match="not running"):
        s.stop()
    assert s.read_idle() == 5
    s.start()  # keeps the explicit idle reading
    with pytest.raises(RuntimeError, match="already running"):
        s.start()
    time.sleep(0.05)
    r = s.stop()
    assert r["idle_used_bytes"] == 5 and r["peak_minus_idle_bytes"] == 45
    s.start()  # second window, same helper: fresh idle and peak (the script stays at 20)
    r2 = s.stop()
    assert s.child_pid == child
    assert r2["idle_used_bytes"] == 20 and r2["peak_used_bytes"] == 20 and r2["n_samples"] >= 1
    s.close()
    assert _wait_gone(child, 2.0)  # close() ends the helper
    s.close()  # idempotent
    for call in (s.start, s.read_idle, s.energy_mj):
        with pytest.raises(RuntimeError, match="after close"):
            call()

    with NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001) as s2:
        child = s2.child_pid
        time.sleep(0.02)
    assert s2.result["peak_used_bytes"] == 50 and s2.result["idle_used_bytes"] == 5
    assert _wait_gone(child, 2.0)


def test_read_idle_failure_returns_none_with_a_note_in_its_window_only(fake):
    fake(device(BUS0, readings=[999, 100, 300], errors_at=[0]))
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001, track_process=False)
    assert s.read_idle() is None  # no NVML error raised into the caller
    s.start()  # takes the idle reading again
    time.sleep(0.02)
    r = s.stop()
    assert r["idle_used_bytes"] == 100 and r["peak_used_bytes"] == 300
    assert any("read_idle" in n and "Unknown Error at reading 0" in n for n in r["notes"]), r["notes"]
    s.start()
    assert s.stop()["notes"] == []  # the note belonged to that window only
    s.close()


def test_peak_below_idle_is_clamped_to_zero_with_note(fake):
    # device-wide "used": another process freed memory after the idle reading
    fake(device(BUS0, readings=[500, 300, 200], procs=[(MY_PID, 64)]))
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001)
    s.start()
    time.sleep(0.02)
    r = s.stop()
    s.close()
    assert r["idle_used_bytes"] == 500 and r["peak_used_bytes"] == 300
    assert r["peak_minus_idle_bytes"] == 0 and r["peak_process_bytes"] == 64
    assert any("clamped to 0" in n for n in r["notes"]), r["notes"]


def test_achieved_rate_at_least_100hz_and_prompt_stop(fake):
    fake(device(BUS0, readings=[1], procs=[(MY_PID, 1)]))
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0)  # default 5 ms = 200 Hz
    assert s.interval_s <= 0.01
    s.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    r = s.stop()
    assert time.perf_counter() - t0 < 10.0  # liveness: it must not hang
    assert r["achieved_hz"] >= 100, r
    assert r["n_samples"] >= 30
    s.close()
    # a 30 s interval must not delay stop(): the helper waits on its command pipe
    s2 = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=30.0)
    s2.start()
    time.sleep(0.02)
    t0 = time.perf_counter()
    r = s2.stop()
    assert time.perf_counter() - t0 < 10.0 and r["n_samples"] >= 1  # a third of the 30 s interval
    s2.close()


def test_per_process_notes_empty_and_foreign(fake):
    fake(device(BUS0, readings=[1, 2, 3], procs=[]))
    with NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001) as s:
        time.sleep(0.02)
    assert s.result["peak_process_bytes"] is None
    assert any("no compute process" in n for n in s.result["notes"])

    fake(device(BUS0, readings=[1, 2, 3], procs=[(MY_PID + 1, 10 << 20), (1, 5 << 20)]))
    with NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001) as s:
        time.sleep(0.02)
    r = s.result
    assert r["peak_process_bytes"] is None
    assert any(str(MY_PID) in n and "host" in n for n in r["notes"])  # our pid, not the helper's

    fake(device(BUS0, readings=[1, 9, 3], procs_error="Not Supported"))
    with NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001) as s:
        time.sleep(0.02)
    assert s.result["peak_used_bytes"] == 9 and s.result["peak_process_bytes"] is None
    assert any("Not Supported" in n for n in s.result["notes"])


def test_nvml_error_mid_window_is_a_note(fake):
    fake(device(BUS0, readings=[100, 150, 999, 400, 200], errors_at={2}), noisy=True)
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001, track_process=False)
    s.start()
    time.sleep(0.05)
    r = s.stop()  # must not raise; stray stdout of the NVML binding must not break the protocol
    s.close()
    assert r["idle_used_bytes"] == 100 and r["peak_used_bytes"] == 400  # 999 skipped, not invented
    assert any("NVML error" in n and "Unknown Error" in n for n in r["notes"])


def test_helper_killed_mid_window_then_restarted(fake):
    fake(device(BUS0, readings=[10, 30]))
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001)
    s.start()
    time.sleep(0.02)
    child = s.child_pid
    os.kill(child, signal.SIGKILL)
    t0 = time.perf_counter()
    r = s.stop()  # must neither raise nor hang
    assert time.perf_counter() - t0 < 10.0
    assert r["peak_used_bytes"] is None and r["peak_minus_idle_bytes"] is None
    assert r["idle_used_bytes"] == 10 and r["n_samples"] == 0
    assert any("SIGKILL" in n for n in r["notes"]), r["notes"]
    s.start()  # the next window gets a new helper
    time.sleep(0.02)
    r2 = s.stop()
    assert s.child_pid not in (None, child)
    assert r2["peak_used_bytes"] == 30 and any("restarted" in n for n in r2["notes"])
    s.close()


def test_helper_hung_in_nvml_call_costs_a_bounded_wait(fake, monkeypatch):
    monkeypatch.setattr(nvml_mod, "REPLY_TIMEOUT_S", 0.3)
    fake(device(BUS0, readings=[10, 20], hang_at=3))
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0, interval_s=0.001)
    s.start()
    time.sleep(0.05)  # the helper is now stuck inside nvmlDeviceGetMemoryInfo
    child = s.child_pid
    t0 = time.perf_counter()
    r = s.stop()  # the helper never answers: only the reply timeout ends the wait
    assert time.perf_counter() - t0 < 10.0
    assert r["peak_used_bytes"] is None and any("no answer" in n for n in r["notes"])
    assert _wait_gone(child, 2.0)  # the stuck helper was killed
    s.close()


def test_helper_crash_on_first_reading_is_a_note(fake):
    fake(device(BUS0, readings=[1], exit_at=0))
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0)
    assert s.read_idle() is None  # process mode does not raise
    s.start()
    r = s.stop()
    s.close()
    assert r["peak_used_bytes"] is None
    assert any("exit code 3" in n for n in r["notes"]), r["notes"]


def test_constructor_errors(fake):
    fake(device(BUS0), init_error="Driver Not Loaded")
    with pytest.raises(NvmlUnavailable, match="Driver Not Loaded"):
        NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0)
    with pytest.raises(NvmlUnavailable, match="no_such_module"):
        NvmlSampler(0, nvml="no_such_module:make", pci_bus_id=BUS0)
    with pytest.raises(ValueError, match="module:attribute"):
        NvmlSampler(0, nvml=object())  # the helper process cannot be handed an object
    with pytest.raises(ValueError):
        NvmlSampler(0, nvml=SPEC, interval_s=0)


def test_device_resolution_in_helper(fake, monkeypatch):
    fake(device(BUS0, readings=[111]), device(BUS1, readings=[222]))
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id="0000:3b:00.0")  # torch 0 is NVML 1
    assert s.mapping == "pci_bus_id" and s.read_idle() == 222
    assert parse_pci_bus_id(s.nvml_pci_bus_id) == parse_pci_bus_id(BUS1)
    s.close()
    # torch knows no bus id (CPU-only torch; faked so that a GPU box behaves the same): index
    # fallback, with the multi-GPU warning
    monkeypatch.setattr(nvml_mod, "torch_pci_bus_id", lambda index: None)
    monkeypatch.setattr(nvml_mod, "torch_uuid", lambda index: None)
    s = NvmlSampler(1, nvml=SPEC)
    assert s.mapping == "index" and s.read_idle() == 222
    assert any("by index" in n for n in s.notes)
    s.close()


def test_energy_counter_read_in_and_out_of_windows(fake):
    # the counter answers the helper's support check (0), then every energy_mj() in turn
    fake(device(BUS0, readings=[1 << 30], energy_mj=[0, 1_000, 4_000, 9_000]))
    s = NvmlSampler(0, nvml=SPEC, pci_bus_id=BUS0)
    assert s.energy_error is None and not s.power_sampling  # a counter: no power sampling
    assert s.energy_mj() == 1_000
    s.start()
    assert s.energy_mj() == 4_000  # read inside a window too
    r = s.stop()
    assert r["peak_used_bytes"] == 1 << 30 and r["power_samples"] is None
    s.close()
    with pytest.raises(RuntimeError):
        s.energy_mj()


def test_used_bytes_by_bus_reads_every_device(fake):
    fake(device(BUS0, readings=[111]), device(BUS1, readings=[222]))
    levels = used_bytes_by_bus(SPEC)
    assert levels == {parse_pci_bus_id(BUS0): 111, parse_pci_bus_id(BUS1): 222}
    fake(device(BUS0), init_error="Driver Not Loaded")
    with pytest.raises(NvmlUnavailable, match="Driver Not Loaded"):
        used_bytes_by_bus(SPEC)


# A parent process that imports the sampler without torch (stand-ins for the package modules)
_LIGHT_PARENT = textwrap.dedent("""
    import json, os, sys, time, types
    root = sys.argv[1]
    for name, path in (("sabench", root + "/sabench"), ("sabench.measure", root + "/sabench/measure")):
        m = types.ModuleType(name); m.__path__ = [path]; sys.modules[name] = m  # skip torch
    from sabench.measure.nvml import NvmlSampler
""")

_PARENT = _LIGHT_PARENT + textwrap.dedent("""
    s = NvmlSampler(0, nvml="tests.fake_nvml:make_fake", pci_bus_id="00000000:19:00.0")
    s.start()
    copy = 0
    if sys.argv[2] == "fork":  # a copy of this process keeps the helper's pipes open: no EOF
        copy = os.fork()
        if copy == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            time.sleep(30)
            os._exit(0)
    print(s.child_pid, copy, flush=True)
    os._exit(0)  # no close(), no atexit: the helper must notice by itself
""")


@pytest.mark.parametrize("how", ["plain", "fork"])
def test_helper_dies_with_its_parent(fake, how):
    fake(device(BUS0, readings=[1]))
    out = subprocess.run([sys.executable, "-c", _PARENT, str(ROOT), how], capture_output=True,
                         text=True, timeout=20, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    child, copy = (int(x) for x in out.stdout.split())
    try:
        # "plain": EOF on its pipe; "fork": only PR_SET_PDEATHSIG (or the parent-pid check)
        assert _wait_gone(child, 5.0), f"helper {child} outlived its parent ({how})"
    finally:
        for pid in (child, copy):
            if pid and not _gone(pid):
                os.kill(pid, signal.SIGKILL)


_FORK_CHILD_EXITS = _LIGHT_PARENT + textwrap.dedent("""
    s = NvmlSampler(0, nvml="tests.fake_nvml:make_fake", pci_bus_id="00000000:19:00.0",
                    interval_s=0.001, track_process=False)
    s.start()
    codes = []
    for explicit in (False, True):
        kid = os.fork()
        if kid == 0:
            if explicit:  # start/read_idle/stop refuse in a child (and must not touch the pipe)
                raised = 0
                for call in (s.read_idle, s.stop, s.start):
                    try:
                        call()
                    except RuntimeError:
                        raised += 1
                sys.exit(0 if raised == 3 and not s.running else 1)
            sys.exit(0)  # a normal exit: atexit runs _close_all() -> close() on the child's copy
        codes.append(os.waitstatus_to_exitcode(os.waitpid(kid, 0)[1]))
    r = s.stop()  # the parent's window must still be there
    s.close()
    print(json.dumps({"child_exits": codes, "result": r}), flush=True)
""")


def test_forked_child_exit_does_not_take_the_parents_window(fake):
    # A forked child's atexit used to stop() its copy of the sampler: it sent "stop" down the
    # parent's pipe and took the reply, so the parent's window ended with no readings.
    fake(device(BUS0, readings=[100, 500]))
    out = subprocess.run([sys.executable, "-c", _FORK_CHILD_EXITS, str(ROOT)], capture_output=True,
                         text=True, timeout=60, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    msg = json.loads(out.stdout.strip().splitlines()[-1])
    r = msg["result"]
    assert msg["child_exits"] == [0, 0]
    assert r["peak_used_bytes"] == 500 and r["idle_used_bytes"] == 100, r
    assert r["peak_minus_idle_bytes"] == 400 and r["notes"] == [], r["notes"]

