import re

import pytest

from report_fixtures import make_results, scale_timings, write_results
from sabench.report import ResultsError, compare_runs
from sabench.cli import main


def _two_runs(tmp_path, drop=None):
    a = make_results(seed=1)
    b = scale_timings(make_results(seed=1, host="bench-02", device_name="NVIDIA H200"), 0.5)
    b["env"]["cuda"] = "12.9"
    if drop:
        b["records"] = [r for r in b["records"] if not drop(r)]
        b["suite"]["seq_lens"] = sorted({r["seq_len"] for r in b["records"]})
    return write_results(a, tmp_path / "h100"), write_results(b, tmp_path / "h200")


def test_compare_env_differences_first_and_ratios(tmp_path):
    ra, rb = _two_runs(tmp_path)
    path = compare_runs([ra, rb], tmp_path / "out")
    md = path.read_text()
    assert path == tmp_path / "out" / "compare.md"
    sections = re.findall(r"^## (.+)$", md, flags=re.M)
    assert sections[0] == "Environment differences"
    env = md.split("## Environment differences")[1].split("## ")[0]
    assert "| host " in env and "bench-02" in env and "NVIDIA H200" in env and "12.9" in env
    assert "torch" not in env  # same value in both runs: not a difference
    assert "H200 / H100 80GB HBM3" in md  # named by the device, not by the directories
    prefill = md.split("## Prefill median latency (ms)")[1].split("## ")[0]
    assert "0.50×" in prefill
    assert "takes **0.50× [0.50, 0.50]†** the time of H100 80GB HBM3" in md
    # one round per point: the ratio is an estimate, never called faster
    assert "an estimate only (one round per point: no verdict" in md and "within-process only" in md
    assert "as fast" not in md and "as slow" not in md
    energy = md.split("## Decode energy per token (J)")[1].split("## ")[0]
    assert re.search(r"\|\s*cla:2\s*\|\s*1\s*\|\s*128\s*\|\s*[\d.]+\s*\|\s*[\d.]+\s*\|\s*\d\.\d\d×", energy)
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (path.parent / name).stat().st_size > 10_000
    # failed points read as their status, not as numbers
    oom_row = [line for line in prefill.splitlines() if re.match(r"\|\s*baseline\s*\|\s*4\s*\|\s*2048\s*\|", line)]
    assert len(oom_row) == 1 and re.search(r"\|\s*OOM\s*\|\s*OOM\s*\|\s*—\s*\|", oom_row[0])


def test_compare_mismatched_suites_lists_left_out_points(tmp_path):
    ra, rb = _two_runs(tmp_path, drop=lambda r: r["seq_len"] == 2048)
    md = compare_runs([ra, rb], tmp_path / "out").read_text()
    assert "seq_lens" in md.split("## Summary")[0]  # suite difference listed up front
    left = md.split("### Points left out")[1].split("## ")[0]
    assert "**H100 80GB HBM3**: 12 point(s)" in left
    assert "prefill cla:2 b=1 s=2048 (not in H200)" in left
    tables = md.split("## Prefill median latency")[1]
    seq_cells = {line.split("|")[3].strip() for line in tables.splitlines() if line.startswith("| ")}
    assert "2048" not in seq_cells and "512" in seq_cells


def test_compare_memory_ratio_only_between_like_sources(tmp_path):
    a = make_results(seed=1)
    b = make_results(seed=1, host="bench-02")
    for r in b["records"]:  # the second run's driver gives no per-process figure
        if r.get("memory_source"):
            r["memory_source"] = "nvml-device"
    ra, rb = write_results(a, tmp_path / "gpu"), write_results(b, tmp_path / "cpu")
    md = compare_runs([ra, rb], tmp_path / "out").read_text()
    mem = md.split("## Device peak memory")[1]
    rows = [line for line in mem.splitlines() if re.match(r"\|\s*baseline\s*\|\s*1\s*\|", line)]
    assert rows and all("— (nvml-device vs nvml-process)" in line for line in rows)
    assert "×" not in "".join(rows)
    # like sources: a ratio
    md = compare_runs([ra, write_results(make_results(seed=1, host="bench-03"), tmp_path / "c")],
                      tmp_path / "out2").read_text()
    mem = md.split("## Device peak memory")[1]
    assert re.search(r"\|\s*cla:2\s*\|\s*1\s*\|\s*128\s*\|.*1\.00×", mem)


def _labels_of(tmp_path, *results):
    runs = [write_results(r, tmp_path / name) for r, name in zip(results, ("tmp", "a", "b"))]
    md = compare_runs(runs, tmp_path / "out").read_text()
    return re.search(r"^Runs, named by what differs between them: (.*)\. Ratios", md, re.M).group(1)


def test_compare_names_runs_by_what_differs(tmp_path):
    base = dict(seed=1, batch_sizes=(1,), seq_lens=(128,), oom=False, error=False)
    # only the device differs
    line = _labels_of(tmp_path / "dev", make_results(**base), make_results(**base, device_name="NVIDIA H200"))
    assert line.startswith("**H100 80GB HBM3** = `") and "**H200** = `" in line
    # only the torch version differs (the device is the same)
    b = make_results(**base)
    b["env"]["torch"] = "2.11.0+cu130"
    line = _labels_of(tmp_path / "sw", make_results(**base), b)
    assert "**torch 2.13.0** = `" in line and "**torch 2.11.0+cu130** = `" in line
    # only the commit differs
    line = _labels_of(tmp_path / "git", make_results(**base, commit="1111111111aa"),
                      make_results(**base, commit="2222222222bb"))
    assert "**11111111** = `" in line and "**22222222** = `" in line
    # nothing differs: numbered, never the directory names
    line = _labels_of(tmp_path / "same", make_results(**base), make_results(**base))
    assert "**run 1** = `" in line and "**run 2** = `" in line
    # three runs, two on one device: the device, then what tells those two apart
    c = make_results(**base)
    c["env"]["torch"] = "2.11.0+cu130"
    line = _labels_of(tmp_path / "three", make_results(**base), c, make_results(**base, device_name="NVIDIA H200"))
    assert "**H100 80GB HBM3 · torch 2.13.0**" in line and "**H100 80GB HBM3 · torch 2.11.0+cu130**" in line
    assert "**H200** = `" in line
    # the same machine and commit, eager against compiled: named by the execution mode
    e, c = make_results(**base), make_results(**base)
    e["suite"]["execution"], c["suite"]["execution"] = "eager", "compiled"
    line = _labels_of(tmp_path / "exec", e, c)
    assert "**eager** = `" in line and "**compiled** = `" in line
    # a run without a commit says so, never "?"
    line = _labels_of(tmp_path / "nocommit", make_results(**base), make_results(**base, commit=None))
    assert "**a1b2c3d4** = `" in line and "**commit unknown** = `" in line and "?" not in line


def test_compare_default_out_dir(tmp_path, monkeypatch):
    from sabench import paths

    ra, rb = _two_runs(tmp_path)
    # an installed package (no checkout around it) writes under the working directory
    monkeypatch.setattr(paths, "PACKAGE_DIR", tmp_path / "site-packages" / "sabench")
    monkeypatch.chdir(tmp_path)
    path = compare_runs([ra, rb])
    assert path.resolve().parent.parent == (tmp_path / "reports" / "compare").resolve()
    assert path.name == "compare.md"


def test_compare_bad_inputs(tmp_path):
    ra, _ = _two_runs(tmp_path)
    with pytest.raises(ResultsError, match="at least two"):
        compare_runs([ra], tmp_path / "o")
    other = write_results(make_results(variants=("cla:4",)), tmp_path / "other")
    with pytest.raises(ResultsError, match="share no"):
        compare_runs([ra, other], tmp_path / "o")


def test_cli_compare(tmp_path, capsys):
    ra, rb = _two_runs(tmp_path)
    assert main(["compare", str(ra), str(rb), "--out", str(tmp_path / "c")]) == 0
    md = (tmp_path / "c" / "compare.md").read_text()  # the runs in the order given: the first is the reference
    assert "takes **0.50× [0.50, 0.50]†** the time of H100 80GB HBM3" in md
    assert main(["compare", str(ra), str(tmp_path / "nope")]) == 2
    assert "sabench: error:" in capsys.readouterr().err


def test_compare_latency_marks_the_points_a_run_could_not_measure(tmp_path, monkeypatch):
    from sabench.report import plots_compare as plots

    marked = []
    real = plots.mark_failures
    monkeypatch.setattr(plots, "mark_failures", lambda ax, xs, *a: (marked.extend(xs), real(ax, xs, *a)))
    ok = make_results(seed=1, oom=False, error=False)
    failing = make_results(seed=2, oom=True, error=False)  # baseline at the largest batch and length: OOM
    runs = [write_results(ok, tmp_path / "a"), write_results(failing, tmp_path / "b")]
    md = compare_runs(runs, tmp_path / "out").read_text()
    assert "compare_decode_latency.png" in md
    longest = max(r["seq_len"] for r in failing["records"])
    assert marked and set(marked) == {longest}  # the OOM point, in the figures of both phases
