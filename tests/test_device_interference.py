"""benchmarks/device_interference.py, its pure parts: the busy/alone analysis from synthetic
per-round values (against scipy's Welch t on log times) and the argument checks. No run."""
import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as sps

from sabench.records import RoundSample

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "device_interference.py"
_spec = importlib.util.spec_from_file_location("device_interference", _PATH)
di = importlib.util.module_from_spec(_spec)
sys.modules["device_interference"] = di  # dataclasses look their module up there
_spec.loader.exec_module(di)


def _values(rng, n, scale=1.0):
    """phase -> statistic -> n lognormal per-round values around 10 ms (prefill) and 2 ms (decode)."""
    return {p: {s: list(base * scale * np.exp(rng.normal(0, 0.05, n))) for s in di.STATS}
            for p, base in (("prefill", 10.0), ("decode", 2.0))}


def _by(figures, phase, stat):
    return next(f for f in figures if f["phase"] == phase and f["statistic"] == stat)


def test_identical_conditions_are_not_distinguishable():
    rng = np.random.default_rng(1)
    alone = _values(rng, 9)
    figures = di.analyse(alone, alone)
    assert len(figures) == 4
    for f in figures:
        assert f["verdict"] == "not distinguishable"
        assert f["ratio"] == pytest.approx(1.0)
        assert f["low"] < 1 < f["high"]


def test_same_distribution_drawn_twice_is_not_distinguishable():
    rng = np.random.default_rng(2)
    figures = di.analyse(_values(rng, 9), _values(rng, 9))
    assert {f["verdict"] for f in figures} == {"not distinguishable"}


def test_one_and_a_half_times_slower_busy_condition_is_slower_with_welch_interval():
    rng = np.random.default_rng(3)
    alone, busy = _values(rng, 9), _values(rng, 9, scale=1.5)
    figures = di.analyse(alone, busy)
    for f in figures:
        assert f["verdict"] == "slower beside busy neighbours"
        a, b = np.log(alone[f["phase"]][f["statistic"]]), np.log(busy[f["phase"]][f["statistic"]])
        ref = sps.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)  # independent reference
        assert f["ratio"] == pytest.approx(math.exp(b.mean() - a.mean()))
        assert f["low"] == pytest.approx(math.exp(ref.low))
        assert f["high"] == pytest.approx(math.exp(ref.high))
        assert 1.3 < f["ratio"] < 1.7 and f["low"] > 1.05
        assert (f["n_alone"], f["n_busy"]) == (9, 9)


def test_a_small_slowdown_inside_the_threshold_is_not_called_slower():
    alone = {p: {s: [10.0, 10.1, 9.9, 10.05, 9.95] for s in di.STATS} for p in di.PHASES}
    busy = {p: {s: [x * 1.02 for x in alone[p][s]] for s in di.STATS} for p in di.PHASES}
    assert {f["verdict"] for f in di.analyse(alone, busy)} == {"not distinguishable"}


def test_per_round_takes_each_rounds_median_and_fastest_step_and_skips_failed_rounds():
    rounds = (RoundSample(0, 5.0, 3, (4.0, 5.0, 7.0)), RoundSample(1, None, 0, (), status="killed"),
              RoundSample(2, 6.0, 3, (6.0, 5.5, 9.0)))
    recs = [SimpleNamespace(phase="prefill", rounds=rounds),
            SimpleNamespace(phase="decode", rounds=(RoundSample(0, 2.0, 1, (2.0,)), RoundSample(1, 3.0, 0)))]
    got = di.per_round(SimpleNamespace(records=recs))
    assert got["prefill"] == {"median": [5.0, 6.0], "fastest": [4.0, 5.5]}
    assert got["decode"] == {"median": [2.0, 3.0], "fastest": [2.0, 3.0]}  # no samples: the median


def test_cpu_defaults_and_a_load_that_inherits_the_probe_point():
    cfg = di.parse_args(["--devices", "0", "--neighbours", "1,2", "--device", "cpu", "--load-batch", "4"])
    assert (cfg.probe, cfg.neighbours, cfg.device) == (0, (1, 2), "cpu")
    assert cfg.suite["model"] == "tiny" and cfg.suite["dtype"] == "float32" and cfg.suite["seq_len"] == 32
    assert cfg.load["batch"] == 4 and cfg.load["seq_len"] == 32 and cfg.load["rounds"] == 100
    assert cfg.load["repeats"] == 10 * cfg.suite["repeats"]  # the load outlasts the probe
    cuda = di.parse_args(["--neighbours", "1", "--device", "cuda"])
    assert (cuda.suite["model"], cuda.suite["dtype"], cuda.suite["seq_len"]) == ("llama-3.2-1b", "bfloat16", 512)


@pytest.mark.parametrize("argv, words", [
    (["--devices", "0", "--neighbours", "1,0"], "holds the probe device 0"),
    (["--devices", "0", "--neighbours", ""], "--neighbours is empty"),
    (["--devices", "0"], "required: --neighbours"),
    (["--devices", "0,1", "--neighbours", "2"], "names 2 devices"),
    (["--neighbours", "all"], "--neighbours all"),
    (["--neighbours", "1,1"], "given twice"),
    (["--neighbours", "1", "--pairs", "1", "--rounds", "2"], "at least 3"),
    (["--neighbours", "1", "--rounds", "0"], "--rounds is 0"),
    (["--neighbours", "1", "--load-rounds", "101"], "at most 100"),
])
def test_bad_arguments_exit_2_with_one_line(argv, words, capsys):
    assert di.main(argv + ["--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("device_interference: error: ")
    assert words in err
