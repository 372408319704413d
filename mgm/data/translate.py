"""A synthetic target language for the `translate` task, with exact references.

The lexicon is a bijection from every word of the synthetic corpus (all word
classes; their lexicons are disjoint) to a new word built from another sound
inventory (consonants "chjqwx", none of them in a corpus word, + vowels "aeiouy", so
a target word is never a source word); it is drawn from the corpus seed and the
corpus's word list, so it is stable across runs.

Word-order rule: within each sentence the words come in reverse order (the
corpus's subject-verb-object sentences read object-verb-subject); commas stay
where they were (after the k-th word), the first word is capitalised, the end mark
(. ! ?) stays at the end, and sentences stay in order. Reversal is an involution
and the lexicon a bijection, so `Translator.inverse` undoes `translate` exactly.
"""
import itertools
import re

import numpy as np

_CONSONANTS, _VOWELS = "chjqwx", "aeiouy"
_STREAM = 2000   # the lexicon's seed stream, distinct from the corpus's own
_SENTENCE = re.compile(r"[^.!?]*[.!?]")


class Translator:
  """word -> target word (and back) for one synthetic corpus."""

  def __init__(self, corpus):
    words = sorted(w for ws in corpus.lexicon.values() for w in ws)
    rng = np.random.default_rng([corpus.seed, _STREAM])
    made: set[str] = set()
    targets = []
    for word in words:
      for attempt in itertools.count():   # one syllable more after every 100 collisions
        syllables = 1 + len(word) // 2 + attempt // 100
        new = "".join(_CONSONANTS[rng.integers(len(_CONSONANTS))]
                      + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(syllables))
        if new not in made:
          made.add(new)
          targets.append(new)
          break
    self.forward = dict(zip(words, targets))
    self.backward = dict(zip(targets, words))

  def translate(self, text: str) -> str:
    """Space-separated sentences of corpus words -> the target language;
    KeyError for a word the corpus does not have."""
    return _apply(self.forward, text)

  def inverse(self, text: str) -> str:
    """A target-language text -> the source text it translates."""
    return _apply(self.backward, text)


def _apply(lexicon: dict, text: str) -> str:
  sentences = [s.strip() for s in _SENTENCE.findall(text)]
  if "".join(sentences).replace(" ", "") != text.replace(" ", ""):
    raise ValueError(f"not a sequence of sentences ending in . ! or ?: {text[:60]!r}")
  return " ".join(_sentence(lexicon, s) for s in sentences)


def _sentence(lexicon: dict, sentence: str) -> str:
  end, tokens = sentence[-1], sentence[:-1].split(" ")
  commas = [token.endswith(",") for token in tokens]
  words = [token[:-1] if comma else token for token, comma in zip(tokens, commas)]
  words = [lexicon[w[:1].lower() + w[1:]] for w in reversed(words)]
  out = [w + ("," if comma else "") for w, comma in zip(words, commas)]
  out[0] = out[0][:1].upper() + out[0][1:]
  return " ".join(out) + end
