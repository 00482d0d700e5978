import pytest


@pytest.fixture(autouse=True)
def _private_history(tmp_path_factory, monkeypatch):
    """Runs in tests record into a throwaway history, never into the repo's reports/."""
    monkeypatch.setenv("SABENCH_HISTORY", str(tmp_path_factory.mktemp("history") / "history.sqlite"))
    # and keep their FLOP-count and compile caches out of the user's ~/.cache
    monkeypatch.setenv("SABENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sabench-cache"))


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
