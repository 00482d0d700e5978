"""Serving: the continuous-batching runtime, request streams, the scheduler and its metrics."""
