import pytest


@pytest.fixture(autouse=True)
def _private_history(tmp_path_factory, monkeypatch):
    """Runs in tests record into a throwaway history, never into the repo's reports/."""
    monkeypatch.setenv("SABENCH_HISTORY", str(tmp_path_factory.mktemp("history") / "history.sqlite"))
