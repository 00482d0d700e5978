"""Readers of results.json: report, compare, check (CI regressions) and the history's trends.

`import sabench.report` is light: matplotlib and scipy load only when a figure is
drawn or a timing is tested.
"""
from sabench.records import ResultsError, load_results

__all__ = ["ResultsError", "load_results", "write_report", "compare_runs", "CheckResult",
           "parse_threshold", "query_trend"]
# The regression gate is `sabench.report.check.check(...)`: the submodule `check` shadows
# any package-level function of that name, so it is not re-exported here.


def __getattr__(name):  # lazy: keep `import sabench.report` cheap for the CLI
    if name == "write_report":
        from sabench.report.report import write_report
        return write_report
    if name == "compare_runs":
        from sabench.report.compare import compare_runs
        return compare_runs
    if name in ("CheckResult", "parse_threshold"):
        import sabench.report.check as _check
        return getattr(_check, name)
    if name == "query_trend":
        from sabench.report.history import query_trend
        return query_trend
    raise AttributeError(f"module 'sabench.report' has no attribute {name!r}")
