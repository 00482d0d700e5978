"""Which tokens a perplexity scores, and with what context: the two window conventions.

A `Windows` holds model inputs [n, L] and, for every input position, the token that position
predicts (`targets`, IGNORE where that prediction is not scored). Perplexity is exp of the mean
NLL over the scored predictions.

- **Non-overlapping** (`stride=None`, the default): the tokens cut into windows of L; inside a
  window every token but the first is predicted from the ones before it. The first token of each
  window is never scored, and a token's context restarts at every window boundary.
- **Rolling** (`stride=S`, 1 <= S <= L), lm-eval-harness's `loglikelihood_rolling`
  (`get_rolling_token_windows(tokens[1:], prefix_token=tokens[0], max_seq_len=L,
  context_len=L - S + 1)` with `make_disjoint_window`): every token after the first is scored
  exactly once. The first window scores all its predictions; each later window scores the next
  (at most) S tokens, with the tokens just before them as context, as far back as fits in L (so
  a scored token sees at least L - S earlier tokens, the last window's as many as fit). S = L is
  lm-eval's own default (context_len=1): disjoint predictions, and unlike the non-overlapping
  convention no token is left unscored. The first token plays lm-eval's prefix token: with a
  tokenizer that adds BOS it is the BOS, as lm-eval's prefix is for such models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from sabench.errors import UserError

IGNORE = -100  # F.cross_entropy's ignore_index


@dataclass(frozen=True)
class Windows:
    inputs: torch.Tensor  # [n, L] token ids fed to the model
    targets: torch.Tensor  # [n, L] the token each position predicts, IGNORE where not scored
    stride: Optional[int]  # None: non-overlapping windows
    input_tokens: int  # tokens the windows were cut from (all of them, used or not)

    @property
    def count(self) -> int:
        return self.inputs.shape[0]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    @property
    def predictions(self) -> int:
        return int((self.targets != IGNORE).sum())

    @property
    def tokens(self) -> int:
        """Distinct input tokens the windows cover."""
        if self.stride is None:
            return self.inputs.numel()
        return self.predictions + 1

    def convention(self) -> str:
        """One sentence for reports."""
        n, L = self.count, self.seq_len
        if self.stride is None:
            return (f"{_plural(n, 'non-overlapping window')} of {L} tokens; within each window every "
                    f"token but the first is scored, with the window's earlier tokens as context")
        return (f"lm-eval-harness rolling windows: {_plural(n, 'window')} of at most {L} tokens, "
                f"stride {self.stride}; every token after the first is scored exactly once, with "
                f"at least {L - self.stride} earlier tokens of context where the text has them")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def non_overlapping(tokens: torch.Tensor, seq_len: int, max_windows: Optional[int] = None) -> Windows:
    """Windows [W, seq_len] cut end to end; a trailing partial window is dropped."""
    n = tokens.numel() // seq_len
    if n == 0:
        raise UserError(f"{tokens.numel()} tokens are fewer than one window of --seq-len {seq_len}")
    if max_windows is not None:
        n = min(n, max_windows)
    inputs = tokens[: n * seq_len].view(n, seq_len)
    targets = torch.full_like(inputs, IGNORE)
    targets[:, :-1] = inputs[:, 1:]
    return Windows(inputs, targets, None, tokens.numel())


def rolling_spans(n_tokens: int, seq_len: int, stride: int):
    """(start, end, first_scored) per window, in token indices: the window's inputs are
    tokens[start:end], input position i predicts tokens[start + i + 1], and positions
    >= first_scored are scored. lm-eval's get_rolling_token_windows, on tokens[1:] with
    tokens[0] as the prefix."""
    if not 1 <= stride <= seq_len:
        raise UserError(f"--stride must be in 1..--seq-len ({seq_len}), got {stride}")
    if n_tokens < 2:
        raise UserError(f"{n_tokens} token(s): a rolling perplexity needs at least 2")
    rest = n_tokens - 1  # lm-eval's token_list; tokens[0] is its prefix token
    first = min(seq_len, rest)
    spans = [(0, first, 0)]
    predicted = first
    while predicted < rest:
        pred = min(rest - predicted, stride)
        end = predicted + pred  # predictions of rest[end - pred: end] = tokens[end - pred + 1: end + 1]
        start = end - seq_len  # inputs rest[end - L - 1: end - 1] = tokens[end - L: end]
        spans.append((start, end, seq_len - pred))
        predicted = end
    return spans


def rolling(tokens: torch.Tensor, seq_len: int, stride: int, max_windows: Optional[int] = None) -> Windows:
    """lm-eval-harness rolling windows (see the module docstring). All windows have seq_len inputs
    except when the whole text is shorter: then there is one window of the text."""
    spans = rolling_spans(tokens.numel(), seq_len, stride)
    if max_windows is not None:
        spans = spans[:max_windows]
    length = spans[0][1] - spans[0][0]
    inputs = torch.stack([tokens[s:e] for s, e, _ in spans])
    targets = torch.stack([tokens[s + 1:e + 1] for s, e, _ in spans])
    for i, (_, _, first) in enumerate(spans):
        targets[i, :first] = IGNORE
    assert inputs.shape[1] == length
    return Windows(inputs, targets, stride, tokens.numel())


def make(tokens: torch.Tensor, seq_len: int, max_windows: Optional[int] = None,
         stride: Optional[int] = None) -> Windows:
    if stride is None:
        return non_overlapping(tokens, seq_len, max_windows)
    return rolling(tokens, seq_len, stride, max_windows)
