"""sabench.measure: stats, timing, memory, OOM classification, env capture.

CPU tests run everywhere; the CUDA tests (events, graphs, allocator, real NVML)
are skipped without a GPU and run on the GPU box.
"""
from __future__ import annotations

import math
import platform
import re
import subprocess
import time

import numpy as np
import pytest
import torch

from sabench.measure import (AllocatorTracker, CudaGraphStep, current_rss_bytes, is_oom_error,
                             peak_rss_bytes, reset_peak_rss, sync, time_fn, time_steps)
from sabench.stats import summarize
from sabench.measure.env import capture_env, git_state

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MIB = 1 << 20


# -- stats -----------------------------------------------------------------------------


def test_summarize_values():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    s = summarize(xs)
    assert s["median"] == 3.0
    assert s["p10"] == pytest.approx(np.percentile(xs, 10))
    assert s["p10"] == pytest.approx(1.4)  # linear interpolation
    assert s["p90"] == pytest.approx(4.6) and s["p99"] == pytest.approx(4.96)
    assert s["mean"] == 3.0 and s["min"] == 1.0 and s["max"] == 5.0
    assert s["std"] == pytest.approx(np.std(xs, ddof=1))
    assert s["samples"] == xs  # raw, in order
    assert all(type(v) is float for k, v in s.items() if k != "samples")
    assert set(s) == {"median", "p10", "p90", "p99", "mean", "std", "min", "max", "samples"}


def test_summarize_edge_cases():
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])
    one = summarize([2])
    assert one["median"] == one["p99"] == 2.0 and one["std"] == 0.0 and one["samples"] == [2.0]


# -- timing (CPU) ----------------------------------------------------------------------


@pytest.mark.parametrize("warmup,expected_untimed", [(0, 1), (1, 1), (3, 3)])
def test_time_fn_counts_calls(warmup, expected_untimed):
    calls = {"fn": 0, "setup": 0}

    def fn():
        calls["fn"] += 1

    def setup():
        calls["setup"] += 1

    out = time_fn(fn, warmup=warmup, repeats=7, device="cpu", setup=setup)
    assert len(out) == 7 and all(isinstance(x, float) and x >= 0 for x in out)
    assert calls["fn"] == 7 + expected_untimed  # the first call is never timed
    assert calls["setup"] == calls["fn"]


def test_time_fn_setup_not_timed_and_fn_is():
    out = time_fn(lambda: None, warmup=0, repeats=3, device="cpu", setup=lambda: time.sleep(0.05))
    assert max(out) < 25.0  # a timed 50 ms setup would show in every sample
    out = time_fn(lambda: time.sleep(0.02), warmup=0, repeats=2, device="cpu")
    assert min(out) >= 19.5  # sleep never returns early; ms units


def test_time_fn_first_call_excluded():
    state = {"n": 0}

    def fn():
        state["n"] += 1
        if state["n"] == 1:
            time.sleep(0.1)  # e.g. lazy init / compilation

    out = time_fn(fn, warmup=0, repeats=3, device="cpu")
    assert max(out) < 50.0


def test_time_fn_rejects_no_repeats():
    with pytest.raises(ValueError):
        time_fn(lambda: None, warmup=1, repeats=0, device="cpu")


def test_time_steps_cpu():
    seen, setups = [], []
    out = time_steps(lambda i: (seen.append(i), time.sleep(0.004)), 5, device="cpu",
                     setup=lambda: (setups.append(1), time.sleep(0.05)))
    assert seen == [0, 1, 2, 3, 4] and setups == [1]
    assert len(out) == 5
    assert min(out) >= 3.9  # each step's sleep is inside its own sample
    assert sum(out) < 5 * 4 + 40  # the 50 ms setup is not


def test_time_steps_rejects_zero():
    with pytest.raises(ValueError):
        time_steps(lambda i: None, 0, device="cpu")


def test_sync_cpu_is_noop_and_graph_needs_cuda():
    sync("cpu")
    sync(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="CUDA"):
        CudaGraphStep(lambda: None, device="cpu")



class _FakeCuda:
    """Stands in for torch.cuda to check the CUDA code path's order of operations on CPU."""

    def __init__(self):
        self.trace, self.clock = [], 0.0
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing
                self.t = None

            def record(self, stream=None):
                assert stream == "stream0"
                self.t = fake.clock
                fake.trace.append("record")

            def elapsed_time(self, end):
                assert "sync" in fake.trace and self.t is not None and end.t is not None
                return end.t - self.t

        self.Event = Event

    def synchronize(self, device=None):
        assert str(device) == "cuda:0"
        self.trace.append("sync")

    def current_stream(self, device=None):
        return "stream0"

    def device(self, dev):
        import contextlib

        return contextlib.nullcontext()

    def install(self, monkeypatch):
        for name in ("Event", "synchronize", "current_stream", "device"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))

    def work(self, ms, tag):
        def f(*_):
            self.clock += ms
            self.trace.append(tag)
        return f


def test_time_fn_cuda_path_order_with_fake_events(monkeypatch):
    fc = _FakeCuda()
    fc.install(monkeypatch)
    out = time_fn(fc.work(2.0, "fn"), warmup=2, repeats=3, device="cuda:0",
                  setup=fc.work(50.0, "setup"))
    assert out == [2.0, 2.0, 2.0]  # setup's 50 ms never inside an event pair
    timed = ["setup", "record", "fn", "record"] * 3
    assert fc.trace == ["setup", "fn"] * 2 + ["sync"] + timed + ["sync"]  # one sync, at the end


def test_time_steps_cuda_path_order_with_fake_events(monkeypatch):
    fc = _FakeCuda()
    fc.install(monkeypatch)
    out = time_steps(fc.work(3.0, "step"), 4, device="cuda:0", setup=fc.work(40.0, "setup"))
    assert out == [3.0] * 4
    assert fc.trace == ["setup", "sync", "record"] + ["step", "record"] * 4 + ["sync"]

# -- memory ----------------------------------------------------------------------------


def test_rss_functions():
    cur = current_rss_bytes()
    peak = peak_rss_bytes()
    assert isinstance(peak, int) and peak > 10 * MIB
    if cur is not None:  # Linux
        assert cur > 10 * MIB and peak >= cur - MIB
    reset_ok = reset_peak_rss()
    assert isinstance(reset_ok, bool)
    if reset_ok and cur is not None:
        before = current_rss_bytes()
        assert peak_rss_bytes() <= before + 32 * MIB  # the mark came down to ~current
        big = torch.ones(48 * MIB // 4)  # 48 MiB, touched
        assert peak_rss_bytes() >= before + 40 * MIB
        del big


def test_allocator_tracker_cpu_is_noop():
    t = AllocatorTracker("cpu")
    with t:
        torch.ones(1000)
    assert t.result == {} and t.stop() == {}


def test_is_oom_error():
    yes = [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
        RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be reported ..."),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
        RuntimeError("not enough memory: you tried to allocate 123 bytes"),
        MemoryError(),
    ]
    no = [RuntimeError("shape mismatch"), ValueError("bad"), KeyError("out"),
          RuntimeError("CUDA error: device-side assert triggered"), None]
    assert all(is_oom_error(e) for e in yes)
    assert not any(is_oom_error(e) for e in no)
    try:
        torch.empty(2 ** 62, dtype=torch.uint8)  # real host allocator failure
    except Exception as e:  # noqa: BLE001
        assert is_oom_error(e)
    else:
        pytest.skip("the host let us allocate 4 EiB")
    # explicitly chained from an OOM counts; merely raised while handling one does not
    try:
        try:
            raise MemoryError()
        except MemoryError as inner:
            raise RuntimeError("forward failed") from inner
    except RuntimeError as e:
        assert is_oom_error(e)
    try:
        try:
            raise MemoryError()
        except MemoryError:
            raise ValueError("unrelated bug in the handler")
    except ValueError as e:
        assert not is_oom_error(e)


# -- env -------------------------------------------------------------------------------

BASE_KEYS = {"sabench", "torch", "transformers", "python", "git_commit", "git_dirty", "host", "cpu",
             "cpu_count", "platform", "device"}


def test_capture_env_cpu():
    import json

    import sabench

    env = capture_env("cpu")
    assert BASE_KEYS <= set(env)
    assert not {"device_name", "driver", "cuda", "memory_total_bytes"} & set(env)
    assert env["device"] == "cpu"
    assert env["sabench"] == sabench.__version__
    assert env["torch"] == str(torch.__version__)
    assert env["python"] == platform.python_version()
    assert isinstance(env["cpu_count"], int) and env["cpu_count"] >= 1
    assert env["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", env["git_commit"])
    assert env["git_dirty"] in (None, True, False)
    json.dumps(env)  # results.json must be able to hold it


def test_capture_env_never_raises(monkeypatch):
    def boom(*a, **k):
        raise OSError("nope")

    monkeypatch.setattr(platform, "platform", boom)
    monkeypatch.setattr("socket.gethostname", boom)
    monkeypatch.setattr("sabench.measure.env.cpu_model", boom)
    env = capture_env("cpu")
    assert env["platform"] is None and env["host"] is None and env["cpu"] is None
    if not torch.cuda.is_available():
        env = capture_env("cuda")  # CPU-only torch: no GPU keys, still no exception
        assert BASE_KEYS <= set(env)


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)


def test_git_state(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_state(plain) == (None, None)
    repo = tmp_path / "repo"
    pkg = repo / "pkg"
    pkg.mkdir(parents=True)
    try:
        _git(repo, "init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not usable here")
    (pkg / "a.py").write_text("x = 1\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "init")
    commit, dirty = git_state(pkg)
    assert re.fullmatch(r"[0-9a-f]{40}", commit) and dirty is False
    (pkg / "a.py").write_text("x = 2\n")
    assert git_state(pkg)[1] is True
    # a package installed into an ignored venv inside some checkout is not that checkout's code
    (repo / ".gitignore").write_text("venv/\n")
    site = repo / "venv" / "site-packages" / "pkg"
    site.mkdir(parents=True)
    assert git_state(site) == (None, None)


# -- CUDA ------------------------------------------------------------------------------


def _sleep_cycles_for(ms: float) -> int:
    """GPU clock cycles that torch.cuda._sleep spins for roughly `ms` milliseconds."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    khz = getattr(props, "clock_rate", None) or 1_500_000  # kHz; absent on some builds
    return int(ms * khz)


@cuda
def test_time_fn_cuda_events():
    calls = {"n": 0}
    cycles = _sleep_cycles_for(1.0)

    def fn():
        calls["n"] += 1
        torch.cuda._sleep(cycles)

    out = time_fn(fn, warmup=0, repeats=5, device="cuda")
    assert len(out) == 5 and calls["n"] == 6
    assert min(out) > 0.3  # the GPU's time, not the microseconds the launch took on the host


@cuda
def test_time_fn_cuda_setup_gpu_work_not_timed():
    long_cycles = _sleep_cycles_for(20.0)
    short_cycles = _sleep_cycles_for(0.2)
    out = time_fn(lambda: torch.cuda._sleep(short_cycles), warmup=1, repeats=4, device="cuda",
                  setup=lambda: torch.cuda._sleep(long_cycles))
    assert max(out) < 10.0


@cuda
def test_time_steps_cuda():
    cycles = _sleep_cycles_for(0.5)
    seen = []
    t0 = time.perf_counter()
    out = time_steps(lambda i: (seen.append(i), torch.cuda._sleep(cycles)), 8, device="cuda")
    wall_ms = (time.perf_counter() - t0) * 1e3
    assert seen == list(range(8)) and len(out) == 8
    assert min(out) > 0.1 and sum(out) <= wall_ms + 1.0


@cuda
def test_cuda_graph_step_replays_with_new_inputs():
    x = torch.zeros(1024, device="cuda")
    g = CudaGraphStep(lambda: x * 2 + 1)
    for v in (1.0, 3.0):
        x.fill_(v)  # update the static input in place
        out = g.replay()
        sync("cuda")
        assert out is g.output
        assert torch.all(out == 2 * v + 1)
    samples = time_steps(lambda i: g.replay(), 4, device="cuda")
    assert len(samples) == 4 and all(s > 0 for s in samples)
    g.close()
    with pytest.raises(RuntimeError):
        g.replay()


@cuda
def test_allocator_tracker_cuda():
    keep = torch.empty(16 * MIB, dtype=torch.uint8, device="cuda")
    with AllocatorTracker("cuda") as t:
        tmp = torch.empty(64 * MIB, dtype=torch.uint8, device="cuda")
        del tmp
    r = t.result
    assert r["peak_allocated"] >= 80 * MIB  # live weights + the transient
    assert r["peak_reserved"] >= r["peak_allocated"]
    del keep


@cuda
def test_is_oom_error_real_cuda():
    try:
        torch.empty(1 << 50, dtype=torch.uint8, device="cuda")
    except Exception as e:  # noqa: BLE001
        assert is_oom_error(e)
    else:
        pytest.fail("allocating 1 PiB succeeded")


@cuda
def test_nvml_sampler_real_gpu():
    from sabench.measure.nvml import NvmlSampler

    if not NvmlSampler.available():
        pytest.skip(f"NVML unavailable: {NvmlSampler.available().reason}")
    dev = torch.cuda.current_device()
    torch.empty(1, device="cuda")  # context exists before the idle reading
    with NvmlSampler(dev) as s:
        x = torch.ones(1 << 30, dtype=torch.uint8, device="cuda")
        sync("cuda")
        time.sleep(0.1)
        del x
        torch.cuda.empty_cache()
    r = s.result
    assert r["device_mapping"] == "pci_bus_id", r["notes"]
    assert r["peak_minus_idle_bytes"] >= 0.9 * (1 << 30)
    assert r["achieved_hz"] >= 100
    assert r["peak_process_bytes"] is None or r["peak_process_bytes"] >= 1 << 30


@cuda
def test_capture_env_cuda():
    env = capture_env("cuda")
    assert BASE_KEYS <= set(env)
    assert env["device"] == f"cuda:{torch.cuda.current_device()}"
    assert env["device_name"] and env["cuda"] == torch.version.cuda
    assert env["memory_total_bytes"] > 0
    assert re.fullmatch(r"\d+\.\d+", env["compute_capability"])
    if "nvml_error" not in env:
        for k in ("driver", "sm_clock_max_mhz", "mem_clock_max_mhz", "power_limit_w"):
            assert k in env, (k, env)
        assert math.isfinite(env["power_limit_w"]) and env["power_limit_w"] > 0



def test_cuda_graph_step_logic_with_fakes(monkeypatch):
    import contextlib

    trace = []

    class Stream:
        def wait_stream(self, other):
            trace.append(("wait", self.name, other.name))

    side, main = Stream(), Stream()
    side.name, main.name = "side", "main"
    state = {"stream": main, "capturing": False}

    @contextlib.contextmanager
    def stream_ctx(s):
        prev, state["stream"] = state["stream"], s
        yield
        state["stream"] = prev

    class Graph:
        def replay(self):
            trace.append("replay")

        def reset(self):
            trace.append("reset")

    @contextlib.contextmanager
    def graph_ctx(g, pool=None):
        state["capturing"] = True
        yield
        state["capturing"] = False

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: side)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: state["stream"])
    monkeypatch.setattr(torch.cuda, "stream", stream_ctx)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", graph_ctx)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: trace.append("sync"))

    def fn():
        trace.append(("fn", "capture" if state["capturing"] else state["stream"].name))
        return "static-out"

    g = CudaGraphStep(fn, device="cuda:0", warmup_iters=3)
    assert trace == [("wait", "side", "main")] + [("fn", "side")] * 3 + \
        [("wait", "main", "side"), ("fn", "capture"), "sync"]
    assert g.output == "static-out" and g.replay() == "static-out" and trace[-1] == "replay"
    g.close()
    assert trace[-1] == "reset" and g.output is None
