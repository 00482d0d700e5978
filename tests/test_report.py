import json
import re

import pytest

from report_fixtures import with_rounds, big_results, make_results, write_results
from sabench.report import ResultsError, load_results, write_report
from sabench.cli import build_parser, main
from sabench.report.results import human_bytes, human_flops, status_text
from sabench.records import SCHEMA, SCHEMA_V1, PhaseRecord


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    run = write_results(make_results(), tmp_path_factory.mktemp("run"))
    path = write_report(run)
    return run, path, path.read_text()


# ---------------------------------------------------------------- load_results

def test_load_results_accepts_dir_and_file(tmp_path):
    run = write_results(make_results(), tmp_path / "r")
    assert load_results(run).schema == SCHEMA
    assert len(load_results(run / "results.json").records) == 36


@pytest.mark.parametrize("content,needle", [
    (None, "no such file"),
    ("{not json", "not valid JSON"),
    (json.dumps({"schema": "other/9", "records": []}), "has schema 'other/9'"),
    (json.dumps([1, 2]), "not a sabench results file"),
    (json.dumps({"schema": SCHEMA, "records": [{"variant": "baseline"}]}), "batch_size is missing"),
])
def test_load_results_errors_are_one_line(tmp_path, content, needle):
    p = tmp_path / "results.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(ResultsError) as e:
        load_results(p)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_load_results_dir_without_results(tmp_path):
    with pytest.raises(ResultsError, match="no results.json in"):
        load_results(tmp_path)


def test_human_formats():
    assert human_bytes(1.5 * 2 ** 20) == "1.5 MiB"
    assert human_bytes(512) == "512 B"
    assert human_flops(3.2e9) == "3.2 GFLOP"
    assert human_flops(1.25e12) == "1.25 TFLOP"
    def rec(status, error=None):
        return PhaseRecord("baseline", 1, 128, "prefill", status, error=error)

    assert status_text(rec("oom")) == "OOM"
    assert status_text(rec("skipped_after_oom")) == "skipped (after OOM)"
    assert status_text(rec("error", "x" * 100), 20).startswith("error: xxxx")
    assert len(status_text(rec("error", "x" * 100), 20)) == len("error: ") + 20


# ---------------------------------------------------------------- report.md

def test_report_files_and_relative_links(small_report):
    run, path, md = small_report
    assert path == run / "report.md"
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 8
    for link in links:
        assert "/" not in link and link.endswith(".png")
        assert (run / link).stat().st_size > 10_000
    for section in ("## Setup", "## What this run says", "## Figures", "## Prefill", "## Decode"):
        assert section in md


def test_report_setup_table(small_report):
    _, _, md = small_report
    setup = md.split("## Setup")[1].split("##")[0]
    for text in ("NVIDIA H100 80GB HBM3", "570.86.15 / 12.8", "torch 2.13.0", "transformers 5.23.0",
                 "a1b2c3d4e5f6", "bench-01", "700 TFLOP/s, 3 TB/s (measured)", "llama-tiny-12l",
                 "bfloat16", "baseline, cla:2, sa:6-11", "{1, 4}", "{128, 512, 2048}", "| 16 ",
                 "2 / 12"):
        assert text in setup, text


def _rows(md, phase):
    table = md.split(f"\n## {phase}\n")[1].strip().split("\n\n")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_report_tables_status_rows_and_speedups(small_report):
    _, _, md = small_report
    prefill = {(r[0], r[1], r[2]): r for r in _rows(md, "Prefill")}
    decode = {(r[0], r[1], r[2]): r for r in _rows(md, "Decode")}
    assert len(prefill) == 18 and len(decode) == 18
    oom = prefill[("baseline", "4", "2048")]
    assert oom[3] == "OOM" and "0" not in (oom[4], oom[5])
    assert decode[("baseline", "4", "2048")][3] == "skipped (after OOM)"
    err = decode[("sa:6-11", "1", "128")][3]
    assert err.startswith("error: RuntimeError: CUDA error") and err.endswith("…")
    assert prefill[("baseline", "1", "128")][6] == "—"
    assert re.fullmatch(r"\d\.\d\d× \[\d\.\d\d, \d\.\d\d\]†", prefill[("cla:2", "1", "128")][6])
    assert prefill[("cla:2", "4", "2048")][6] == "— (base OOM)"
    # KV cache human readable, halved by CLA-2
    assert prefill[("baseline", "1", "128")][7] == "5.06 MiB"
    assert prefill[("cla:2", "1", "128")][7] == "2.53 MiB"
    assert "device peak (nvml-process)" in md and "MFU" in md and "MBU" in md and "J/token" in md
    assert re.fullmatch(r"\d+(\.\d+)? (GiB|MiB)", prefill[("cla:2", "1", "512")][8])
    j = float(decode[("cla:2", "4", "512")][12])
    rec = load_results(small_report[0]).index()[("cla:2", 4, 512, "decode")]
    assert j == pytest.approx(rec.joules_per_token, rel=5e-3)
    assert re.fullmatch(r"\d+\.\d%", prefill[("cla:2", "1", "512")][11])
    assert prefill[("cla:2", "1", "512")][9].endswith("GFLOP")


def test_report_findings_are_computed(small_report):
    _, _, md = small_report
    says = md.split("## What this run says")[1].split("## Figures")[0]
    assert "`cla:2` keeps **0.50×** the baseline's KV cache" in says
    assert "`sa:6-11` keeps **0.75×**" in says
    assert "**Out of memory** at 1 point(s): `baseline` b=4 s=2048" in says
    assert "Baseline ran out of memory where sharing variants fit: b=4 s=2048 (`cla:2`, `sa:6-11`)" in says
    assert "**Errors** at 1 point(s): `sa:6-11` b=1 s=128 decode" in says
    assert "roofline floor" in says


def test_a_one_round_run_states_estimates_and_never_a_verdict(small_report):
    """Ratios from the steps of one process are estimates: no faster / slower / 'the data supports'."""
    _, _, md = small_report
    says = md.split("## What this run says")[1].split("## Figures")[0]
    speed = next(line for line in says.splitlines() if "Speed: estimates only, no verdict" in line)
    assert "measured in one round" in speed and "--rounds 3 --resume" in speed
    for word in ("faster", "slower", "supports", "not distinguishable"):
        assert word not in says, word


def test_report_findings_with_rounds_name_the_largest_supported_speedup(tmp_path):
    from sabench.stats import paired_round_minima
    from sabench.stats import ratio_interval, verdict

    run = write_results(with_rounds(make_results(), 5, factors={"cla:2": 0.7}, seed=4,
                                    drift_sd=0.05, round_sd=0.01, step_sd=0.01), tmp_path / "run")
    md = write_report(run).read_text()
    idx = load_results(run).index()
    ests = []
    for (v, b, s, ph), r in idx.items():
        base = idx.get(("baseline", b, s, ph))
        if ph == "decode" and v != "baseline" and r.ok and base is not None and base.ok:
            sp = ratio_interval(*paired_round_minima(base, r), paired=True).inverted()
            if verdict(sp.inverted()).label == "slower" or verdict(sp.inverted()).label == "faster":
                ests.append((sp, v, b, s))
    faster = [e for e in ests if verdict(e[0].inverted()).label == "faster"]
    sp, v, b, s = max(faster, key=lambda e: e[0].ratio)
    says = md.split("## What this run says")[1].split("## Figures")[0]
    assert (f"**Decode**: the largest speedup over baseline that the data supports is **{sp}**, "
            f"`{v}` at batch {b}, seq_len {s}") in says
    assert "estimates only" not in says and "5 rounds" in says


def test_report_cpu_run_without_baseline_or_peaks(tmp_path):
    res = make_results(variants=("cla:2", "cla:4"), gpu=False, oom=False, error=False,
                       batch_sizes=(1,), seq_lens=(64, 128))
    for k in ("peak_bandwidth_bytes_per_s", "peak_flops_per_s"):
        res["env"].pop(k, None)
    for r in res["records"]:
        r.pop("mfu", None)
        r.pop("mbu", None)
    run = write_results(res, tmp_path / "cpu")
    md = write_report(run).read_text()
    assert "No `baseline` variant" in md
    assert "device peak (rss)" in md and "J/token" not in md
    assert "rss = peak resident memory" in md
    assert "unknown (no MFU/MBU)" in md
    assert "No point ran out of memory." in md
    assert not (run / "speedup_prefill.png").exists()
    assert (run / "prefill_latency.png").exists()


def test_report_prefill_only_and_all_failed(tmp_path):
    res = make_results(batch_sizes=(2,), seq_lens=(256,), oom=False, error=False)
    res["records"] = [r for r in res["records"] if r["phase"] == "prefill"]
    for r in res["records"]:
        if r["variant"] == "sa:6-11":
            r.clear()
            r.update(variant="sa:6-11", batch_size=2, seq_len=256, phase="prefill", status="error",
                     error="boom")
    md = write_report(write_results(res, tmp_path / "p")).read_text()
    assert "## Decode" not in md
    assert "error: boom" in md


def test_cli_report_and_error(tmp_path, capsys):
    run = write_results(make_results(batch_sizes=(1,), seq_lens=(128, 256)), tmp_path / "r")
    assert main(["report", str(run)]) == 0
    assert str(run / "report.md") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "sabench: error:" in capsys.readouterr().err


def test_register_adds_subcommands(tmp_path, capsys):
    """Each subcommand the parser registers, called through its parsed `func`, does its own work."""
    res = make_results(batch_sizes=(1,), seq_lens=(128,), oom=False, error=False)
    a, b = write_results(res, tmp_path / "a"), write_results(res, tmp_path / "b")
    parser = build_parser()

    def call(*argv):
        args = parser.parse_args(list(argv))
        return args.func(args)

    assert call("report", str(a)) == 0
    assert (a / "report.md").read_text().startswith("# sabench report: synthetic\n")
    assert call("compare", str(a), str(b), "--out", str(tmp_path / "c")) == 0
    assert "cla:2" in (tmp_path / "c" / "compare.md").read_text()
    capsys.readouterr()
    assert call("check", str(a), str(b)) == 0
    assert capsys.readouterr().out.startswith("PASS")
    db = tmp_path / "h.sqlite"
    assert call("history", "--db", str(db), "--import", str(a)) == 0
    assert "1 run(s) added" in capsys.readouterr().out
    assert call("history", "--db", str(db), "--suite", "synthetic") == 0
    assert "baseline" in capsys.readouterr().out


def _table_rows(md: str, heading: str) -> list:
    section = md.split(f"\n{heading}\n")[1].split("\n## ")[0]
    table = next(b.strip() for b in section.split("\n\n") if b.strip().startswith("|"))
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_report_on_1000_records(tmp_path):
    res = big_results()
    assert len(res["records"]) == 1000
    run = write_results(res, tmp_path / "big")
    md = write_report(run).read_text()  # its speed is measured by benchmarks/report_speed.py, not asserted here
    assert md.startswith("# sabench report: synthetic\n\n1000 measurements (997 ok)")
    for phase, heading in (("prefill", "## Prefill"), ("decode", "## Decode")):
        rows = _table_rows(md, heading)
        recs = [r for r in load_results(run).records if r.phase == phase]
        assert len(rows) == len(recs) == 500  # one row per point, in the sweep's order
        for row, r in zip(rows, recs):
            assert (row[0], int(row[1]), int(row[2])) == (r.variant, r.batch_size, r.seq_len)
            if r.status == "ok":
                assert float(row[3]) == pytest.approx(r.latency_ms.median, rel=6e-3)  # 3 digits
            else:
                assert status_text(r, width=200).startswith(row[3].rstrip("…")), row  # cut to the column
    prefill = {(r[0], r[1], r[2]): r[3] for r in _table_rows(md, "## Prefill")}
    decode = {(r[0], r[1], r[2]): r[3] for r in _table_rows(md, "## Decode")}
    assert prefill[("baseline", "128", "65536")] == "OOM"
    assert decode[("baseline", "128", "65536")] == "skipped (after OOM)"
    assert decode[("cla:2+sa:6-11", "1", "128")].startswith("error")


def test_report_memory_saving_measured_beside_predicted(tmp_path):
    res = make_results(batch_sizes=(1, 4), seq_lens=(128, 512), oom=False, error=False, predicted=True)
    md = write_report(write_results(res, tmp_path / "pred")).read_text()
    says = md.split("## What this run says")[1].split("## Figures")[0]
    idx = {(r["variant"], r["batch_size"], r["seq_len"], r["phase"]): r for r in res["records"]}
    mine, base = idx[("cla:2", 4, 512, "decode")], idx[("baseline", 4, 512, "decode")]
    saved = base["memory_bytes"]["device_peak"] - mine["memory_bytes"]["device_peak"]
    pred = base["memory_predicted_bytes"]["total"] - mine["memory_predicted_bytes"]["total"]
    line = next(x for x in says.splitlines() if x.startswith("- `cla:2` at the largest point"))
    assert "(decode b=4 s=512)" in line
    assert f"saves {human_bytes(saved)}" in line and f"predicted" in line and f"saves {human_bytes(pred)}" in line
    assert "nvml-process" in line
    assert "**Energy per decode token** (timed calls only; one reading per point, so no interval): `cla:2`" in says
    # the breakdown table: the parts of each variant's largest point, and its prediction
    table = md.split("## Memory at each variant's largest point")[1].split("\n## ")[0]
    row = next(x for x in table.splitlines() if x.startswith("| cla:2"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    bd = mine["memory_breakdown"]
    assert cells[1] == "decode b=4 s=512" and cells[2] == human_bytes(mine["memory_bytes"]["device_peak"])
    assert cells[3:7] == [human_bytes(bd[k]) for k in ("weights", "kv_cache", "activations", "context")]
    assert cells[7] == human_bytes(mine["memory_predicted_bytes"]["total"]) and cells[9] == "nvml-process"
    assert cells[8] == human_bytes(mine["memory_bytes"]["phase_rise"])

    res = make_results(batch_sizes=(1,), seq_lens=(128,), oom=False, error=False)
    md = write_report(write_results(res, tmp_path / "nopred")).read_text()
    assert "; no prediction." in md


def test_report_reads_results_from_before_device_peak(tmp_path):
    # older (v1) files: peak_nvml was the phase's rise, peak_nvml_process the footprint
    res = make_results(batch_sizes=(1,), seq_lens=(128, 512), oom=False, error=False)
    res["schema"] = SCHEMA_V1
    for r in res["records"]:
        if r["status"] == "ok":
            mem = r["memory_bytes"]
            r["memory_bytes"] = {"peak_nvml": mem["phase_rise"], "peak_nvml_process": mem["device_peak"],
                                 "peak_allocated": mem["peak_allocated"]}
            for k in ("memory_source", "memory_breakdown", "energy_j", "joules_per_token", "energy_source"):
                r.pop(k)
    md = write_report(write_results(res, tmp_path / "old")).read_text()
    assert "device peak (nvml-process)" in md and "## Memory at each" not in md
    idx = {(r["variant"], r["batch_size"], r["seq_len"], r["phase"]): r for r in res["records"]}
    rows = {(r[0], r[1], r[2]): r for r in _rows(md, "Decode")}
    assert rows[("cla:2", "1", "512")][8] == human_bytes(idx[("cla:2", 1, 512, "decode")]["memory_bytes"]
                                                         ["peak_nvml_process"])


def test_ratio_ticks_stay_few_and_cover_large_ratios():
    from sabench.report.plots import ratio_ticks

    for lo, hi, most in [(0.4, 236, 9), (0.25, 4, 7), (0.8, 1.25, 7), (0.6, 6, 9), (0.01, 5000, 9)]:
        ticks = ratio_ticks(lo, hi, most)
        assert 1.0 in ticks and len(ticks) <= most and all(lo <= t <= hi for t in ticks)
        assert max(ticks) * 10 >= hi  # the top decade of the axis is labelled
    assert ratio_ticks(0.8, 1.25, 7) == [0.8, 0.9, 1.0, 1.1, 1.25]  # fine steps near 1x
    assert ratio_ticks(0.25, 4, 7) == [0.25, 0.5, 1.0, 2.0, 4.0]  # mirrored around 1x
    assert ratio_ticks(0.4, 236)[-1] == 128  # a 236x ratio sits on a labelled axis (the list stopped at 10x)
