"""The request stream of a serving run, written for `vllm bench serve` to replay against a vLLM server.

One JSONL file per Poisson rate (round 0's stream, in arrival order), in the format of vLLM's
`custom` dataset (`vllm/benchmarks/datasets.py`, CustomDataset): one `{"prompt", "output_tokens"}`
object a line. What carries over and what does not:

- output lengths: exactly, with `--custom-output-len -1` (each line's `output_tokens`);
- prompt lengths: approximately: a prompt is `prompt_len` repetitions of " hello", one token in the
  Llama-3 and GPT-2 tokenizers (vLLM adds what its tokenizer and chat template add);
- arrival times: not replayed; vLLM draws its own Poisson arrivals from `--request-rate` and
  `--seed`, the same process at the same rate (`arrivals` in the manifest keeps ours for comparison);
- order: vLLM shuffles a custom dataset unless `--disable-shuffle` is given (a flag of recent vLLM).

manifest.json lists each file with the command to run it. Not tested against a vLLM install here.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from sabench.records.serving import ServingResults

WORD = " hello"


def vllm_command(path: Path, requests: int, rate: float, model: str = "<model>") -> str:
    return " ".join(["vllm", "bench", "serve", "--model", model, "--dataset-name", "custom", "--dataset-path",
                     shlex.quote(str(path)), "--custom-output-len", "-1", "--disable-shuffle", "--num-prompts",
                     str(requests), "--request-rate", f"{rate:g}", "--seed", "0", "--ignore-eos"])


def export_streams(results: ServingResults, out_dir: Path) -> list:
    """Write OUT_DIR/vllm/rate-<R>.jsonl per Poisson rate and a manifest; the files written."""
    streams = {}
    for run in results.runs:  # every variant of a round served the same stream: take the first
        if run.rate is not None and run.round == 0:
            streams.setdefault(run.rate, run.requests)
    if not streams:
        return []
    d = Path(out_dir) / "vllm"
    d.mkdir(parents=True, exist_ok=True)
    manifest, written = [], []
    for rate, reqs in sorted(streams.items()):
        path = d / f"rate-{rate:g}.jsonl"
        ordered = sorted(reqs, key=lambda r: r.arrival_s)
        path.write_text("".join(json.dumps({"prompt": (WORD * r.prompt_len).lstrip(), "output_tokens": r.output_len})
                                + "\n" for r in ordered), encoding="utf-8")
        manifest.append({"file": path.name, "rate": rate, "requests": len(ordered),
                         "arrivals_s": [r.arrival_s for r in ordered],
                         "command": vllm_command(path.name, len(ordered), rate)})
        written.append(path)
    (d / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return written + [d / "manifest.json"]
