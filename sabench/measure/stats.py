"""Summary statistics of latency samples: moved to sabench.stats, re-exported here for old imports."""
from sabench.stats import summarize

__all__ = ["summarize"]
