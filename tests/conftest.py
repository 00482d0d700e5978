import copy

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_paths(tmp_path_factory):
    """Runs in tests record into a throwaway history, never into the repo's reports/ (which parallel
    workers would share), and keep their FLOP-count and compile caches out of the user's ~/.cache.
    Session-wide, so that module fixtures, set up before any test's own fixtures, are covered too."""
    base = tmp_path_factory.getbasetemp()  # one per worker
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SABENCH_HISTORY", str(base / "session-history.sqlite"))
        mp.setenv("SABENCH_CACHE_DIR", str(base / "sabench-cache"))
        yield


@pytest.fixture(autouse=True)
def _private_history(tmp_path_factory, monkeypatch):
    """Each test records into a history of its own."""
    monkeypatch.setenv("SABENCH_HISTORY", str(tmp_path_factory.mktemp("history") / "history.sqlite"))


@pytest.fixture(scope="session", autouse=True)
def _calibrate_once_a_session():
    """The roofline calibration of a run (a child process that imports torch and times a copy and a
    matmul: seconds on 2 cores) is measured once per device and dtype in this test process, for real,
    and every later run in it gets that measurement. The suite has dozens of runs; what a run does
    with its calibration is the same either way, and the calibration itself is tested on its own
    (tests/test_measure_calibrate.py). Runs in child processes (`sabench continuous`, the Popen
    tests) still calibrate themselves."""
    from sabench.harness import environment

    real, measured = environment.calibrate_in_subprocess, {}

    def once(device, dtype, workdir):
        key = (device, str(dtype))
        if key not in measured or "calibration_error" in measured[key]:
            measured[key] = real(device, dtype, workdir)
        return copy.deepcopy(measured[key])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(environment, "calibrate_in_subprocess", once)
        yield


@pytest.fixture(scope="session")
def inductor_cache(tmp_path_factory):
    """One Inductor cache for every compiled test of the session (a cold compile of the tiny
    model costs tens of seconds on 2 cores; later ones load the artefacts). Worker processes
    the runner starts inherit it through the environment, as in a real run."""
    import os

    path = tmp_path_factory.getbasetemp() / "inductor-cache"
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): one worker per core on a CPU-only machine, one worker where
    a GPU is visible: the CUDA tests time the device and read its whole memory, which a second
    worker's tests would share. PYTEST_XDIST_AUTO_NUM_WORKERS still decides where it is set."""
    import os

    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    import torch

    return 1 if torch.cuda.is_available() else None


# Test files whose whole run is longest (end-to-end runs in child processes): collected first, so
# that the workers (each file runs whole on one, --dist loadfile) start them early and finish
# together instead of one worker running the longest file alone at the end.
LONGEST_FIRST = ("test_continuous.py", "test_tp_run.py", "test_runner.py", "test_devices.py",
                 "test_robustness.py", "test_parallel.py", "test_compiled.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: the rest keep their order
