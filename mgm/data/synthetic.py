"""A generated hierarchical text corpus whose exact entropy rate is known.

Why: a trained model's bits/byte means little on its own; on this corpus it
can be held against `stats()['entropy_floor_bpb']`, the best any model can do.

The process (documents i.i.d.): topic -> title line `= Name =` -> a number of
paragraphs (split by a blank line) -> a number of sentences each (split by one
space) -> per sentence a template (a sequence of word classes, maybe with
commas), a word per class drawn from a topic-dependent Zipf law over that
class's lexicon, the first word capitalised, and an end mark `.`, `!` or `?`.

Everything is one to one: lexicons are disjoint and lowercase, templates are
distinct, and every separator is visible, so `parse` recovers every choice
from the text alone. Hence H(doc) = E[-log2 p(choices)], and with documents
i.i.d. and each followed by one EOS token, the stream's entropy rate per token
is E[-log2 p(doc)] / (E[bytes] + 1) (renewal-reward). `stats()` computes all
expectations analytically (counts are independent of contents, so the
expectations factor); the tests check them against Monte Carlo.
"""
import bisect
import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

SPLITS = {"train": 0, "validation": 1, "test": 2}
_LEXICON_STREAM = 1000  # in the split slot of the seed: never a split id

# Word class -> (default lexicon size, syllables per word: min, max).
WORD_CLASSES = {
    "DET": (12, (1, 2)), "PREP": (24, (1, 2)), "ADV": (150, (2, 3)),
    "ADJ": (300, (1, 3)), "VERB": (500, (1, 3)), "NOUN": (800, (1, 3)),
}
# A "," follows the word before it.
DEFAULT_TEMPLATES = (
    "DET NOUN VERB",
    "DET ADJ NOUN VERB",
    "DET NOUN VERB ADV",
    "DET NOUN VERB DET NOUN",
    "DET ADJ NOUN VERB DET NOUN",
    "DET NOUN VERB DET ADJ NOUN",
    "DET NOUN VERB PREP DET NOUN",
    "DET ADJ NOUN VERB PREP DET ADJ NOUN",
    "ADV , DET NOUN VERB",
    "PREP DET NOUN , DET NOUN VERB",
    "PREP DET ADJ NOUN , DET NOUN VERB ADV",
    "DET NOUN VERB , ADV",
    "NOUN VERB NOUN",
    "ADJ NOUN VERB ADV",
    "DET NOUN ADV VERB DET NOUN",
    "DET NOUN PREP DET NOUN VERB ADV",
)
END_MARKS = (".", "!", "?")
_CONSONANTS, _VOWELS, _CODAS = "bdfgklmnprstvz", "aeiou", "nrs"
_DIRICHLET = 2.0  # concentration of the seed-drawn categorical weights
EOS = 128  # the separator's symbol id in unigram counts (bytes are 0..127)


@dataclasses.dataclass(frozen=True)
class Sentence:
  template: int
  words: tuple[int, ...]  # index into the lexicon of each slot's class
  end_mark: int


@dataclasses.dataclass(frozen=True)
class DocumentChoices:
  """Every random choice behind one document."""
  topic: int
  paragraphs: tuple[tuple[Sentence, ...], ...]


def _entropy(p: np.ndarray) -> float:
  p = p[p > 0]
  return float(-(p * np.log2(p)).sum())


def _cdf(p: np.ndarray) -> list[float]:
  """Cumulative weights as a list with last entry exactly 1, for bisect."""
  cdf = np.cumsum(p).tolist()
  cdf[-1] = 1.0
  return cdf


def _parse_template(template: str) -> tuple[tuple[str, bool], ...]:
  """'ADV , DET NOUN' -> (('ADV', True), ('DET', False), ('NOUN', False))."""
  slots = []
  for token in template.split():
    if token == ",":
      if not slots or slots[-1][1]:
        raise ValueError(f"template {template!r}: ',' must follow a word class")
      slots[-1] = (slots[-1][0], True)
    elif token in WORD_CLASSES:
      slots.append((token, False))
    else:
      raise ValueError(f"template {template!r}: unknown word class {token!r}")
  if not slots or slots[-1][1]:
    raise ValueError(f"template {template!r}: empty or ends with ','")
  return tuple(slots)


class SyntheticCorpus:
  """The corpus for one seed; `document(i, split)` is random access."""

  def __init__(self, seed: int = 0, num_topics: int = 8,
               class_sizes: Mapping[str, int] | None = None,
               templates: Sequence[str] = DEFAULT_TEMPLATES,
               max_paragraphs: int = 4, max_sentences: int = 6,
               zipf_exponent: float = 1.0,
               end_mark_probs: Sequence[float] = (0.8, 0.1, 0.1)):
    sizes = {c: size for c, (size, _) in WORD_CLASSES.items()}
    sizes.update(class_sizes or {})
    if set(sizes) != set(WORD_CLASSES) or min(sizes.values()) < 1:
      raise ValueError(f"class_sizes: classes are {sorted(WORD_CLASSES)}, sizes >= 1")
    if min(num_topics, max_paragraphs, max_sentences) < 1:
      raise ValueError("num_topics, max_paragraphs, max_sentences must be >= 1")
    self.templates = tuple(_parse_template(t) for t in templates)
    if len(set(self.templates)) != len(self.templates):
      raise ValueError("templates must be distinct")
    self.seed = seed
    rng = np.random.default_rng([seed, _LEXICON_STREAM])

    used: set[str] = set()
    def new_word(syllables: tuple[int, int]) -> str:
      """Consonant-vowel syllables, a fifth of them closed by a coda."""
      while True:
        word = ""
        for _ in range(rng.integers(syllables[0], syllables[1] + 1)):
          onset, vowel, coda = rng.integers([len(_CONSONANTS), len(_VOWELS), 5 * len(_CODAS)])
          word += _CONSONANTS[onset] + _VOWELS[vowel] + (_CODAS[coda] if coda < len(_CODAS) else "")
        if word not in used:
          used.add(word)
          return word

    self.topic_names = [new_word((2, 3)).capitalize() for _ in range(num_topics)]
    self.lexicon = {c: [new_word(WORD_CLASSES[c][1]) for _ in range(sizes[c])]
                    for c in WORD_CLASSES}
    self._word_index = {w: (c, i) for c, words in self.lexicon.items()
                        for i, w in enumerate(words)}
    self._topic_of_title = {f"= {name} =": t for t, name in enumerate(self.topic_names)}
    self._template_of_slots = {slots: i for i, slots in enumerate(self.templates)}

    dirichlet = lambda n: rng.dirichlet(np.full(n, _DIRICHLET))
    self.topic_probs = dirichlet(num_topics)
    self.paragraph_count_probs = dirichlet(max_paragraphs)  # entry n-1: n paragraphs
    self.sentence_count_probs = dirichlet(max_sentences)
    self.template_probs = dirichlet(len(self.templates))
    self.end_mark_probs = np.asarray(end_mark_probs, float)
    if (self.end_mark_probs.shape != (3,) or self.end_mark_probs.min() <= 0
        or abs(self.end_mark_probs.sum() - 1) > 1e-9):
      raise ValueError("end_mark_probs: three positive probabilities for '.', '!', '?'")
    # Each topic ranks each class's words by its own permutation: topics differ.
    self.word_probs = {}
    for c, words in self.lexicon.items():
      zipf = 1.0 / np.arange(1, len(words) + 1) ** zipf_exponent
      zipf /= zipf.sum()
      self.word_probs[c] = np.stack([zipf[rng.permutation(len(words))]
                                     for _ in range(num_topics)])  # (topic, word)

    # Sampling tables as lists: per-draw numpy calls would dominate the cost.
    self._cdfs = {name: _cdf(getattr(self, name)) for name in (
        "topic_probs", "paragraph_count_probs", "sentence_count_probs",
        "template_probs", "end_mark_probs")}
    self._log2_probs = {name: np.log2(getattr(self, name)).tolist() for name in self._cdfs}
    self._word_cdfs = {c: [_cdf(p) for p in probs] for c, probs in self.word_probs.items()}
    self._word_log2_probs = {c: np.log2(probs).tolist() for c, probs in self.word_probs.items()}

  # -- generation ---------------------------------------------------------------

  def sample_document(self, rng: np.random.Generator) -> tuple[str, float]:
    """A document and its exact log2-probability, tracked as it is drawn."""
    log2p = 0.0
    def draw(name: str) -> int:
      nonlocal log2p
      i = bisect.bisect_right(self._cdfs[name], rng.random())
      log2p += self._log2_probs[name][i]
      return i
    topic = draw("topic_probs")
    paragraphs = []
    for _ in range(draw("paragraph_count_probs") + 1):
      sentences = []
      for _ in range(draw("sentence_count_probs") + 1):
        template = draw("template_probs")
        words = []
        for (c, _), u in zip(self.templates[template], rng.random(len(self.templates[template]))):
          w = bisect.bisect_right(self._word_cdfs[c][topic], u)
          log2p += self._word_log2_probs[c][topic][w]
          words.append(w)
        sentences.append(Sentence(template, tuple(words), draw("end_mark_probs")))
      paragraphs.append(tuple(sentences))
    return self.render(DocumentChoices(topic, tuple(paragraphs))), log2p

  def document(self, index: int, split: str = "train") -> str:
    """Document `index` of `split`: a pure function of (seed, split, index)."""
    if split not in SPLITS or index < 0:
      raise ValueError(f"split must be one of {list(SPLITS)} and index >= 0, got {split!r}, {index}")
    return self.sample_document(np.random.default_rng([self.seed, SPLITS[split], int(index)]))[0]

  def render(self, choices: DocumentChoices) -> str:
    """The text of a document: the one place that formats choices as bytes."""
    def sentence(s: Sentence) -> str:
      words = []
      for (c, comma), w in zip(self.templates[s.template], s.words):
        words.append(self.lexicon[c][w] + ("," if comma else ""))
      words[0] = words[0][0].upper() + words[0][1:]
      return " ".join(words) + END_MARKS[s.end_mark]
    body = "\n\n".join(" ".join(sentence(s) for s in p) for p in choices.paragraphs)
    return f"= {self.topic_names[choices.topic]} =\n\n" + body

  # -- parsing --------------------------------------------------------------------

  def parse(self, text: str) -> DocumentChoices:
    """Recover every choice from the text; ValueError if the grammar can't make it.

    Parsing is lenient, then the choices are rendered again and must give the
    text back byte for byte: that makes the text <-> choices map one to one.
    """
    title, _, body = text.partition("\n\n")
    if title not in self._topic_of_title:
      raise ValueError(f"not a topic title: {title[:40]!r}")
    paragraphs = tuple(self._parse_paragraph(p) for p in body.split("\n\n"))
    if len(paragraphs) > len(self.paragraph_count_probs):
      raise ValueError(f"{len(paragraphs)} paragraphs: more than the maximum")
    choices = DocumentChoices(self._topic_of_title[title], paragraphs)
    if self.render(choices) != text:
      raise ValueError("text differs from the grammar's rendering of its own parse")
    return choices

  def _parse_paragraph(self, paragraph: str) -> tuple[Sentence, ...]:
    sentences, tokens = [], []
    for token in paragraph.split(" "):
      tokens.append(token)
      if token[-1:] in END_MARKS:
        sentences.append(self._parse_sentence(tokens))
        tokens = []
    if tokens or not sentences:
      raise ValueError(f"paragraph does not end a sentence: {paragraph[-40:]!r}")
    if len(sentences) > len(self.sentence_count_probs):
      raise ValueError(f"{len(sentences)} sentences: more than the maximum")
    return tuple(sentences)

  def _parse_sentence(self, tokens: list[str]) -> Sentence:
    end_mark = END_MARKS.index(tokens[-1][-1])
    tokens = tokens[:-1] + [tokens[-1][:-1]]
    tokens[0] = tokens[0][:1].lower() + tokens[0][1:]
    slots, words = [], []
    for token in tokens:
      comma = token.endswith(",")
      word = token[:-1] if comma else token
      if word not in self._word_index:
        raise ValueError(f"unknown word {word!r}")
      c, w = self._word_index[word]
      slots.append((c, comma))
      words.append(w)
    template = self._template_of_slots.get(tuple(slots))
    if template is None:
      raise ValueError(f"no template has the word classes {slots}")
    return Sentence(template, tuple(words), end_mark)

  def log2_prob(self, text: str) -> float:
    """Exact log2-probability of a document, from its text alone."""
    choices = self.parse(text)
    t = choices.topic
    log2p = (math.log2(self.topic_probs[t])
             + math.log2(self.paragraph_count_probs[len(choices.paragraphs) - 1]))
    for paragraph in choices.paragraphs:
      log2p += math.log2(self.sentence_count_probs[len(paragraph) - 1])
      for s in paragraph:
        log2p += math.log2(self.template_probs[s.template]) + math.log2(self.end_mark_probs[s.end_mark])
        for (c, _), w in zip(self.templates[s.template], s.words):
          log2p += math.log2(self.word_probs[c][t, w])
    return log2p

  # -- exact statistics ---------------------------------------------------------

  def _mean_counts(self) -> tuple[float, float]:
    """E[paragraphs per document], E[sentences per paragraph]."""
    return tuple(float(p @ np.arange(1, len(p) + 1))
                 for p in (self.paragraph_count_probs, self.sentence_count_probs))

  def expected_symbol_counts(self) -> np.ndarray:
    """E[count of each byte 0..127 in a document], plus 1 for EOS at index 128.

    Counts of paragraphs, sentences and templates are independent of the topic
    and the words, so each expectation is a product of simpler ones.
    """
    def histogram(text: str) -> np.ndarray:
      return np.bincount(np.frombuffer(text.encode("ascii"), np.uint8), minlength=EOS + 1)
    paragraphs, sentences_each = self._mean_counts()
    counts = sum(p * histogram(f"= {name} =\n\n") for p, name in zip(self.topic_probs, self.topic_names))
    counts = counts + (paragraphs - 1) * histogram("\n\n") + paragraphs * (sentences_each - 1) * histogram(" ")
    # Expected letters of a word of each class: (as is, capitalised).
    word_letters = {}
    for c, words in self.lexicon.items():
      probs = self.topic_probs @ self.word_probs[c]  # marginal over topics
      letters = probs @ np.stack([histogram(w) for w in words])
      first = probs @ np.stack([histogram(w[0]) for w in words])
      word_letters[c] = (letters, letters - first + np.roll(first, -32))  # 'a' - 32 == 'A'
    sentence = self.end_mark_probs @ np.stack([histogram(m) for m in END_MARKS])
    for p, slots in zip(self.template_probs, self.templates):
      sentence = sentence + p * ((len(slots) - 1) * histogram(" ")
                                 + sum(comma for _, comma in slots) * histogram(",")
                                 + sum(word_letters[c][i == 0] for i, (c, _) in enumerate(slots)))
    counts = counts + paragraphs * sentences_each * sentence
    counts[EOS] = 1.0
    return counts

  def stats(self) -> dict:
    """Exact (analytic) entropy and length figures of one document and the stream."""
    paragraphs, sentences_each = self._mean_counts()
    word_entropy = {c: self.topic_probs @ [_entropy(p) for p in probs]
                    for c, probs in self.word_probs.items()}
    sentence_entropy = (_entropy(self.template_probs) + _entropy(self.end_mark_probs)
                        + sum(p * sum(word_entropy[c] for c, _ in slots)
                              for p, slots in zip(self.template_probs, self.templates)))
    doc_entropy = (_entropy(self.topic_probs) + _entropy(self.paragraph_count_probs)
                   + paragraphs * (_entropy(self.sentence_count_probs)
                                   + sentences_each * sentence_entropy))
    counts = self.expected_symbol_counts()
    doc_bytes = counts[:EOS].sum()
    return {
        "entropy_floor_bpb": float(doc_entropy / (doc_bytes + 1)),
        "text_entropy_bits_per_byte": float(doc_entropy / doc_bytes),
        "unigram_bpb": _entropy(counts / (doc_bytes + 1)),
        "expected_doc_bytes": float(doc_bytes),
        "doc_entropy_bits": float(doc_entropy),
    }


class SyntheticSource:
  """Grain random-access source: item i is `corpus.document(i, split)`."""

  def __init__(self, corpus: SyntheticCorpus, split: str = "train"):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    self.corpus, self.split = corpus, split

  def __len__(self) -> int:
    return 2**31 - 1  # the corpus streams any amount

  def __getitem__(self, index: int) -> str:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(index)
    return self.corpus.document(index, self.split)

  def __repr__(self) -> str:
    return f"SyntheticSource(seed={self.corpus.seed}, split={self.split!r})"
