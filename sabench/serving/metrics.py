"""Per-request serving figures and the run's summary, with vLLM's definitions (`vllm bench serve`):

- queue wait: admitted (prefill starts) - arrival;
- TTFT: first output token available - arrival (queue wait + prefill);
- ITL: the gaps between consecutive output tokens, every one kept;
- TPOT: (end-to-end - TTFT) / (output tokens - 1), 0 for a one-token output (no gap to average);
- end-to-end: last token - arrival.

Per run: output tokens/s and requests/s over the run's span (first arrival to last token),
goodput = requests/s meeting every latency target, percentiles by linear interpolation
(numpy's default, as vLLM). Tokens/s per user = 1 / median TPOT: the decode speed one client sees.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from sabench.records.serving import RequestRecord
from sabench.stats import median, percentiles

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Targets:
    """Latency targets a request must all meet to count in goodput (None: no target)."""

    ttft_ms: Optional[float] = None
    tpot_ms: Optional[float] = None

    def met_by(self, r: RequestRecord) -> bool:
        return ((self.ttft_ms is None or r.ttft_s * 1e3 <= self.ttft_ms)
                and (self.tpot_ms is None or r.tpot_s * 1e3 <= self.tpot_ms))


@dataclass(frozen=True)
class RunSummary:
    requests: int
    duration_s: float
    output_tokens_per_s: float
    requests_per_s: float
    goodput_rps: float
    goodput_share: float  # met every target / all requests
    tokens_per_s_per_user: float
    ms: dict = field(default_factory=dict)  # figure -> {percentile: milliseconds}

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("requests", "duration_s", "output_tokens_per_s", "requests_per_s",
                                           "goodput_rps", "goodput_share", "tokens_per_s_per_user")}
        d["ms"] = {name: {str(p): v for p, v in ps.items()} for name, ps in self.ms.items()}
        return d


def summarize(records, targets: Targets = Targets()) -> RunSummary:
    if not records:
        raise ValueError("a run summary needs at least one finished request")
    start = min(r.arrival_s for r in records)
    duration = max(r.token_s[-1] for r in records) - start
    if not duration > 0:
        raise ValueError("a run summary needs a run that took time (its last token after its first arrival)")
    good = sum(targets.met_by(r) for r in records)
    tokens = sum(len(r.token_s) for r in records)
    tpots = [r.tpot_s for r in records if len(r.token_s) > 1]
    median_tpot = median(tpots) if tpots else float("nan")
    # {p: ms} per figure; NaN where the run has no such figure (no request with two tokens: no TPOT)
    ms = {"ttft": percentiles([r.ttft_s * 1e3 for r in records], PERCENTILES),
          "tpot": percentiles([t * 1e3 for t in tpots], PERCENTILES),
          "itl": percentiles([g * 1e3 for r in records for g in r.itl_s], PERCENTILES),
          "e2e": percentiles([r.e2e_s * 1e3 for r in records], PERCENTILES),
          "queue_wait": percentiles([r.queue_wait_s * 1e3 for r in records], PERCENTILES)}
    return RunSummary(requests=len(records), duration_s=duration, output_tokens_per_s=tokens / duration,
                      requests_per_s=len(records) / duration, goodput_rps=good / duration,
                      goodput_share=good / len(records),
                      tokens_per_s_per_user=1.0 / median_tpot if median_tpot > 0 else float("nan"), ms=ms)
