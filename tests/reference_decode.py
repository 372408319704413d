"""Slow, obvious re-implementations of mgm/decode.py's rules for the tests: every
next-token distribution comes from a teacher-forced pass over the whole text, the
logits processing is written out in numpy from the definitions, and search is
either exhaustive or a plain list-of-hypotheses beam search."""
import jax
import jax.numpy as jnp
import numpy as np

from mgm.data.tokenizer import BOS, EOS, PAD


class TeacherForced:
  """Next-token logits of many texts at once: one jitted pass over a fixed
  [rows, seq_len] batch of PAD-padded texts (one compile per model)."""

  def __init__(self, model, params, seq_len: int, rows: int = 128):
    self.params, self.seq_len, self.rows = params, seq_len, rows
    self.apply = jax.jit(lambda p, t: model.apply({"params": p}, t))

  def __call__(self, texts):
    """texts: list of id lists -> float64 [len(texts), V], the logits after each text."""
    out = []
    for start in range(0, len(texts), self.rows):
      chunk = texts[start:start + self.rows]
      buf = np.full((self.rows, self.seq_len), PAD, np.int32)
      for r, t in enumerate(chunk):
        buf[r, :len(t)] = t
      logits = np.asarray(self.apply(self.params, jnp.asarray(buf)), np.float64)
      out += [logits[r, len(t)] for r, t in enumerate(chunk)]
    return np.stack(out)


def ngram_banned(text, n: int) -> set:
  """Ids that would complete an n-gram already in `text` (0: none)."""
  if not n or len(text) < n:
    return set()
  tail = list(text[len(text) - n + 1:])
  return {text[j + n - 1] for j in range(len(text) - n + 1) if list(text[j:j + n - 1]) == tail}


def log_probs(logits, text, i, settings):
  """log p(next | text) after every processing rule, for new-token index i; -inf
  for what may not be emitted. `text` is prompt + new tokens so far."""
  x = np.array(logits, np.float64)
  p = settings.repetition_penalty
  if p != 1.0:
    for v in set(text):
      x[v] = x[v] / p if x[v] > 0 else x[v] * p
  allowed = np.ones(x.shape, bool)
  allowed[list(ngram_banned(text, settings.no_repeat_ngram))] = False
  allowed[list(settings.banned) + [PAD, BOS]] = False
  if i < settings.min_new or not settings.stop_at_eos:
    allowed[EOS] = False
  if i < len(settings.forced):
    allowed[:] = False
    allowed[settings.forced[i]] = True
    x[settings.forced[i]] = 0.0
  x = np.where(allowed, x, -np.inf)
  return x - np.logaddexp.reduce(x[allowed])


def ends(text, token, i, settings) -> bool:
  """Does writing `token` (new-token index i; `text` already holds it) end the row?"""
  if i + 1 >= settings.max_new:
    return True
  if i + 1 < settings.min_new:
    return False
  if settings.stop_at_eos and token == EOS:
    return True
  return any(len(s) <= len(text) and tuple(text[-len(s):]) == tuple(s) for s in settings.stop)


def penalised(score, length, alpha):
  return score / ((5.0 + length) / 6.0) ** alpha


def exhaustive(tf, prompt, settings):
  """Every continuation the rules allow -> [(penalised score, new tokens)], best first."""
  live, done = [(list(prompt), 0.0)], []
  for i in range(settings.max_new):
    logits = tf([text for text, _ in live])
    nxt = []
    for (text, score), row in zip(live, logits):
      logp = log_probs(row, text, i, settings)
      for v in np.flatnonzero(np.isfinite(logp)):
        hyp = (text + [int(v)], score + logp[v])
        (done if ends(hyp[0], int(v), i, settings) else nxt).append(hyp)
    live = nxt
  ranked = [(penalised(s, len(t) - len(prompt), settings.length_penalty), t[len(prompt):])
            for t, s in done]
  return sorted(ranked, key=lambda r: -r[0])


def beam(tf, prompt, settings):
  """Beam search as mgm/decode.py defines it -> the new tokens of the best hypothesis."""
  beams = [(list(prompt), 0.0, False)]                 # text, sum of log-probs, finished
  for i in range(settings.max_new):
    live = [b for b in beams if not b[2]]
    if not live:
      break
    logits = dict(zip(range(len(live)), tf([t for t, _, _ in live])))
    cand, k = [], 0
    for text, score, finished in beams:
      if finished:
        cand.append((text, score, True))
        continue
      logp = log_probs(logits[k], text, i, settings)
      k += 1
      for v in np.flatnonzero(np.isfinite(logp)):
        new = text + [int(v)]
        cand.append((new, score + logp[v], ends(new, int(v), i, settings)))
    beams = sorted(cand, key=lambda c: -c[1])[:settings.beam_size]
  best = max(beams, key=lambda b: penalised(b[1], len(b[0]) - len(prompt), settings.length_penalty))
  return best[0][len(prompt):]
