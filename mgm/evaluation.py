"""Evaluation of a model's parameters on held-out data: the loss on the fixed
evaluation batches (bits/byte, perplexity), and BLEU/chrF/ROUGE of greedy
continuations of held-out text (eval.*)."""
import jax

from mgm import decode
from mgm.data import pipeline
from mgm.data.tokenizer import decode as detokenize
from mgm.errors import ConfigError
from mgm.metrics import bits_per_byte, perplexity, text_scores


def held_out_loss(setup, params, batches) -> dict:
  """eval_loss (nats per token), eval_bpb and eval_ppl over `batches` (this
  process's rows of each; `setup`'s eval step sums over the global batch). A task
  mixture's {task: batches} (mgm/batches.py eval_set): also eval_loss_<task> and
  eval_bpb_<task> per task; the plain keys are over every task's tokens."""
  if isinstance(batches, dict):
    return _per_task_loss(setup, params, batches)
  total, count = _sums(setup, params, batches)
  nats = total / max(count, 1.0)
  return {"eval_loss": nats, "eval_bpb": bits_per_byte(nats), "eval_ppl": perplexity(nats)}


def _sums(setup, params, batches) -> tuple[float, float]:
  total, count = 0.0, 0.0
  for batch in batches:
    s, c = setup.eval_step(params, setup.placement.global_batch(batch))
    total, count = total + float(s), count + float(c)
  return total, count


def _per_task_loss(setup, params, tasks: dict) -> dict:
  result, total, count = {}, 0.0, 0.0
  for name, batches in tasks.items():
    s, c = _sums(setup, params, batches)
    nats = s / max(c, 1.0)
    result.update({f"eval_loss_{name}": nats, f"eval_bpb_{name}": bits_per_byte(nats)})
    total, count = total + s, count + c
  nats = total / max(count, 1.0)
  return {"eval_loss": nats, "eval_bpb": bits_per_byte(nats), "eval_ppl": perplexity(nats),
          **result}


def continuation_scores(config, model, params) -> dict:
  """BLEU, chrF and ROUGE of greedy continuations of held-out text (eval.*): the
  first prompt_tokens of each validation sequence are the prompt, the next
  new_tokens the reference. Every process continues the same sequences."""
  cfg = config.eval
  if not cfg.continuations:
    return {}
  length = cfg.prompt_tokens + cfg.new_tokens
  rows = pipeline.held_out_rows(
      config.data, length=length, limit=cfg.continuations,
      max_rows=config.train.batch_size * config.train.eval_batches)
  if not rows:
    raise ConfigError("eval.continuations", "no validation sequence holds "
                      f"{length} real tokens; lower eval.prompt_tokens/new_tokens")
  settings = decode.DecodeSettings(strategy="greedy", max_new=cfg.new_tokens, stop_at_eos=False)
  tokens, lengths = decode.pack_tokens([r[:cfg.prompt_tokens] for r in rows], settings,
                                       model, config.data.seq_len)
  out, _ = decode.generate(model, params, tokens, lengths, jax.random.key(0), settings)
  references = [detokenize(r[cfg.prompt_tokens:length]) for r in rows]
  return text_scores(decode.new_text(out, lengths, detokenize), references)
