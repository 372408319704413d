"""The synthetic corpus: its analytic entropy figures are exact, and text <-> choices is one to one."""
import itertools
import math
import re

import numpy as np
import pytest

from mgm.data.synthetic import (EOS, DocumentChoices, Sentence, SyntheticCorpus,
                                SyntheticSource)

NUM_SAMPLES = 3000
SIGMAS = 4.0  # Monte Carlo tolerance in standard errors


@pytest.fixture(scope="module")
def corpus():
  return SyntheticCorpus(seed=0)


@pytest.fixture(scope="module")
def samples(corpus):
  """(texts, log2-probabilities tracked while sampling) from a fixed seed."""
  rng = np.random.default_rng(1234)
  texts, log2ps = zip(*(corpus.sample_document(rng) for _ in range(NUM_SAMPLES)))
  return list(texts), np.array(log2ps)


def test_analytic_figures_match_monte_carlo(corpus, samples):
  texts, log2ps = samples
  stats = corpus.stats()
  bits, lengths = -log2ps, np.array([len(t) for t in texts], float)
  n = len(texts)
  for analytic, values in ((stats["doc_entropy_bits"], bits), (stats["expected_doc_bytes"], lengths)):
    assert abs(values.mean() - analytic) < SIGMAS * values.std() / math.sqrt(n)
  # Ratio of sums: standard error by the delta method.
  tokens = lengths + 1
  ratio = bits.sum() / tokens.sum()
  ratio_se = (bits - ratio * tokens).std() / (tokens.mean() * math.sqrt(n))
  assert abs(ratio - stats["entropy_floor_bpb"]) < SIGMAS * ratio_se
  assert stats["entropy_floor_bpb"] < stats["text_entropy_bits_per_byte"]
  assert 1.0 < stats["entropy_floor_bpb"] < 2.0


def test_tiny_corpus_enumerated_exactly():
  """Every document of a tiny corpus: probabilities sum to 1, texts are distinct, figures exact."""
  corpus = SyntheticCorpus(seed=3, num_topics=2, class_sizes={"DET": 2, "NOUN": 2},
                           templates=("DET NOUN", "NOUN , DET"), max_paragraphs=2, max_sentences=1)
  sentences = [Sentence(t, (a, b), m) for t in range(2) for a in range(2) for b in range(2)
               for m in range(3)]
  docs = [corpus.render(DocumentChoices(topic, tuple((s,) for s in paragraphs)))
          for topic in range(2) for count in (1, 2)
          for paragraphs in itertools.product(sentences, repeat=count)]
  probs = np.exp2([corpus.log2_prob(text) for text in docs])
  lengths = np.array([len(text) for text in docs])
  assert len(set(docs)) == len(docs) == 2 * (24 + 24**2)
  assert probs.sum() == pytest.approx(1.0, abs=1e-12)
  stats = corpus.stats()
  assert stats["doc_entropy_bits"] == pytest.approx(-(probs * np.log2(probs)).sum(), abs=1e-9)
  assert stats["expected_doc_bytes"] == pytest.approx(probs @ lengths, abs=1e-9)
  counts = sum(p * np.bincount(np.frombuffer(t.encode(), np.uint8), minlength=EOS + 1)
               for p, t in zip(probs, docs))
  counts[EOS] = 1
  np.testing.assert_allclose(corpus.expected_symbol_counts(), counts, atol=1e-9)


def test_parse_recovers_the_sampled_log_prob(corpus, samples):
  texts, log2ps = samples
  for text, log2p in zip(texts[:500], log2ps[:500]):
    assert corpus.log2_prob(text) == pytest.approx(log2p, abs=1e-9)
    assert corpus.render(corpus.parse(text)) == text


def _in_body(edit):
  """Apply `edit` to the text after the title, so the mutation reaches the body."""
  def mutate(text):
    title, body = text.split("\n\n", 1)
    return title + "\n\n" + edit(body)
  return mutate


@pytest.mark.parametrize("mutate", [
    lambda t: "=" + t,                                        # malformed title
    lambda t: "= Qqq =" + t[t.index("\n"):],                  # unknown topic
    _in_body(lambda b: b.replace(" ", " qqq ", 1)),           # unknown word
    _in_body(lambda b: b.replace(" ", "  ", 1)),              # double space
    _in_body(lambda b: b.replace("\n\n", "\n\n\n", 1)),      # extra newline
    _in_body(lambda b: b.lower()),                            # not capitalised
    _in_body(lambda b: b.split(" ", 1)[0] + " " + b.lower()),  # repeated class: no template has one
    _in_body(lambda b: "\n\n".join([b] * 5)),                 # too many paragraphs
    lambda t: t[:-1],                                         # no end mark
    lambda t: t + "\n",                                       # trailing newline
    lambda t: "",
])
def test_text_outside_the_grammar_is_rejected(corpus, samples, mutate):
  text = next(t for t in samples[0] if t.count("\n\n") >= 2)
  with pytest.raises(ValueError):
    corpus.log2_prob(mutate(text))


def test_documents_have_the_stated_structure(corpus, samples):
  lexicon = set(itertools.chain.from_iterable(corpus.lexicon.values()))
  assert len(lexicon) == sum(map(len, corpus.lexicon.values()))  # classes disjoint
  assert all(re.fullmatch("[a-z]+", w) for w in lexicon)
  assert len(set(corpus.templates)) == len(corpus.templates)
  sentence = re.compile(r"([A-Z][a-z]*,?(?: [a-z]+,?)*[.!?])(?: |$)")
  for text in samples[0][:300]:
    title, *paragraphs = text.split("\n\n")
    assert re.fullmatch(r"= ([A-Z][a-z]+) =", title).group(1) in corpus.topic_names
    assert 1 <= len(paragraphs) <= len(corpus.paragraph_count_probs)
    for paragraph in paragraphs:
      sentences = sentence.findall(paragraph)
      assert " ".join(sentences) == paragraph
      assert 1 <= len(sentences) <= len(corpus.sentence_count_probs)
      for s in sentences:
        assert {w.lower() for w in re.findall("[A-Za-z]+", s)} <= lexicon


def test_documents_are_deterministic_and_streams_disjoint(corpus):
  again, other = SyntheticCorpus(seed=0), SyntheticCorpus(seed=1)
  assert [corpus.document(i) for i in range(5)] == [again.document(i) for i in range(5)]
  assert corpus.document(0) != other.document(0)
  train, validation, test = ({corpus.document(i, split) for i in range(50)}
                             for split in ("train", "validation", "test"))
  assert not (train & validation) and not (train & test) and not (validation & test)
  source = SyntheticSource(corpus, "validation")
  assert len(source) == 2**31 - 1
  assert [source[i] for i in (0, 7, np.int64(2**31 - 2))] == [
      corpus.document(i, "validation") for i in (0, 7, 2**31 - 2)]
  with pytest.raises(IndexError):
    source[-1]
  with pytest.raises(ValueError):
    corpus.document(0, "dev")


def test_unigram_entropy_matches_the_sample(corpus, samples):
  texts, _ = samples
  stats = corpus.stats()
  counts = np.bincount(np.frombuffer("".join(texts).encode(), np.uint8), minlength=EOS + 1)
  counts[EOS] = len(texts)
  freqs = counts[counts > 0] / counts.sum()
  assert -(freqs * np.log2(freqs)).sum() == pytest.approx(stats["unigram_bpb"], abs=0.01)
  expected = corpus.expected_symbol_counts()
  assert expected.sum() == pytest.approx(stats["expected_doc_bytes"] + 1)
  assert stats["unigram_bpb"] > stats["entropy_floor_bpb"] + 2
