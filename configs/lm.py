"""Byte-level language models on the embedded synthetic corpus (or your text).

Presets, chosen by the argument after the colon: a size (the flat model), or
`model=NAME,size=SIZE` big_vision-style, with NAME one of MODELS (see
`model_levels`) and SIZE one of:

  tiny   tests: 2 layers, width 64, sequence 64; seconds on a CPU.
         python launch.py --config=configs/lm.py:tiny --workdir=runs/tiny
  demo   the README job: 4 layers, width 128, 200 steps of 16 x 256 bytes,
         1.4 to 4.3 minutes on 2 CPU cores, reaching 2.39 bits/byte (unigram
         4.45, entropy floor 1.13).
         python launch.py --config=configs/lm.py:demo --workdir=runs/demo
         python launch.py --config=configs/lm.py:model=mgm3,size=demo --workdir=runs/mgm3
  small  8 layers, width 512, sequence 1024: ~26M parameters; an hour on
         one accelerator (days on a CPU).
         python launch.py --config=configs/lm.py:small --workdir=runs/small
  base   14 layers, width 768, sequence 8192: ~100M parameters, bfloat16;
         an accelerator run: batch 64 on 8 GPUs (8 sequences each, 28 GiB
         per GPU; --config.model.remat=True for 4.7 GiB), 0.21 s a step at
         36% MFU on an H200 (benchmarks/results/mfu.md), about 3 hours for
         50k steps; on one GPU, --config.train.grad_accum=8 (8x as long).
         python launch.py --config=configs/lm.py:base --workdir=runs/base

Any field can be overridden: --config.train.steps=100 --config.data.seq_len=512
--config.model.levels[0].depth=6 --config.data.source=text
--config.data.files='~/books/*.txt'.
"""
import ml_collections as mlc

from mgm import adversarial

from mgm.data.tokenizer import VOCAB_SIZE
from mgm.model.spec import LevelSpec, field_defaults

SIZES = ("tiny", "demo", "small", "base")
MODELS = ("flat", "megabyte", "hourglass", "spacebyte", "mgm3", "megabyte_lstm", "mgm3_gru")

# size -> (width, heads, depth of the flat model, sequence length)
SHAPES = {"tiny": (64, 2, 2, 64), "demo": (128, 2, 4, 256),
          "small": (512, 8, 8, 1024), "base": (768, 12, 14, 8192)}

# Logical axis (mgm/nn, mgm/model) -> mesh axes, highest priority first: a mesh
# axis shards at most one dimension of an array, so activations [batch, length,
# embed] split the batch over data*fsdp and keep embed whole, while parameters
# [embed, mlp] shard embed over fsdp and mlp over tensor; the [depth] axis of
# scanned blocks (model.scan_layers) stays whole.
MESH_RULES = (("batch", ("data", "fsdp")), ("length", None), ("embed", "fsdp"),
              ("mlp", "tensor"), ("heads", "tensor"), ("kv", None), ("vocab", "tensor"),
              ("layers", None))


def level(width, depth, heads, span="full", **coarse):
  """One level; any level takes mixer, coarse levels also units, max_len, max_units,
  pool, pre_layers, upsample, aux_loss, aux_weight (see mgm/model/spec.py LevelSpec). Every field is present,
  with its default, so any can be overridden: --config.model.levels[0].pool=mean."""
  given = dict(width=width, depth=depth, heads=heads, span=span, **coarse)
  return mlc.ConfigDict({**field_defaults(LevelSpec), **given})


def model_levels(model, size):
  """The level list of each model family at each size: coarsest first, tokens last.

  flat       one level: a decoder-only Transformer.
  megabyte   MEGABYTE (Yu et al. 2023): a global model over fixed 8-byte patches
             (concatenated embeddings), a local model within each patch.
  hourglass  Hourglass (Nawrot et al. 2022): token layers before and after a
             shortened (fixed 4) level, attentive pooling.
  spacebyte  SpaceByte (Slagle 2024): global blocks at word boundaries, local
             byte layers with window attention before and after.
  mgm3       byte -> word -> sentence, attentive pooling, bytes attend within
             their word, a bag-of-bytes auxiliary loss at the sentence level.
  megabyte_lstm  MEGABYTE whose local model is an LSTM restarted at each patch
             (mixer=lstm, span=parent): does the local model need attention?
  mgm3_gru   mgm3 whose byte level is a GRU restarted at each word.
  """
  width, heads, depth, seq = SHAPES[size]
  half, quarter = max(depth // 2, 1), max(depth // 4, 1)
  if model == "flat":
    return [level(width, depth, heads)]
  if model in ("megabyte", "megabyte_lstm"):
    mixer = "lstm" if model == "megabyte_lstm" else "attention"
    return [level(width, depth, heads, units="fixed:8", pool="concat"),
            level(width, half, heads, span="parent", mixer=mixer)]
  if model == "hourglass":
    return [level(width, depth, heads, units="fixed:4", pool="attention"),
            level(width, quarter, heads, pre_layers=quarter)]
  if model == "spacebyte":
    return [level(width, depth, heads, units="word", max_len=16, max_units=seq // 2,
                  pool="last"),
            level(width, quarter, heads, span="window:32", pre_layers=quarter)]
  if model in ("mgm3", "mgm3_gru"):
    mixer = "gru" if model == "mgm3_gru" else "attention"
    return [level(width, half, heads, units="sentence", max_len=256, max_units=seq // 8,
                  pool="attention", aux_loss="bag", aux_weight=0.1),
            level(width, half, heads, units="word", max_len=16, max_units=seq // 2,
                  pool="attention"),
            level(width, quarter, heads, span="parent", mixer=mixer)]
  raise ValueError(f"configs/lm.py: unknown model {model!r}; one of {MODELS}")


def base_config():
  c = mlc.ConfigDict()
  c.seed = 0

  c.model = mlc.ConfigDict()
  c.model.vocab_size = VOCAB_SIZE
  c.model.levels = model_levels("flat", "demo")   # coarsest first; tokens last
  c.model.mlp_ratio = 4
  c.model.rope_base = 10_000.0
  c.model.qk_norm = False
  c.model.remat = False                 # recompute activations in the backward pass
  c.model.remat_policy = "full"         # full | save_dots (keep matmul outputs)
  c.model.scan_layers = False           # each stack's blocks as one nn.scan: one block compiled,
                                        # not depth (params blocks/block/*, leading [depth] axis;
                                        # checkpoint.init_from converts either layout)
  c.model.dtype = "float32"             # compute dtype; parameters stay float32
  c.model.attention_impl = "auto"       # auto (cuDNN flash on GPU in bf16/fp16, blockwise on CPU) | xla | cudnn | blockwise
  c.model.loss_chunk = 0                # >0: the train loss's logits this many positions at a time
  c.model.encoders = []                 # conditioning (configs/caption.py, configs/seq2seq.py):
                                        # ConfigDicts of mgm/nn/encoders.py EncoderSpec
  c.model.fusion = ""                   # '' (one encoder) | concat | gated | attention:K
  c.model.memory_width = 0              # fused memory width (0: the widest encoder's)
  c.model.num_tasks = 0                 # task mixtures: learned task embeddings, one per
                                        # data.tasks entry (configs/multitask.py); 0 = none

  c.data = mlc.ConfigDict()
  c.data.source = "synthetic"           # synthetic | text | tfds; paired tasks (one example
                                        # a row, mgm/data/paired.py): shapes | translate |
                                        # summarize | copy | reverse | autoencode | pairs |
                                        # tfds with a tfds_*_field set
  c.data.seq_len = SHAPES["demo"][3]
  c.data.corpus_seed = 0                # the synthetic corpus's identity
  c.data.packing = "document_mask"      # document_mask (packed documents do not see each
                                        # other) | none (a row is one stream); README
  c.data.synthetic = mlc.ConfigDict()   # extra SyntheticCorpus arguments
  c.data.files = ""                     # text: glob(s), comma-separated
  c.data.text_doc_bytes = 65536
  c.data.val_fraction = 0.05
  c.data.tfds_name = ""
  c.data.tfds_text_field = "text"
  c.data.tfds_train_split = "train"
  c.data.tfds_eval_split = "validation"
  c.data.tfds_data_dir = ""
  c.data.tfds_source_field = ""         # paired tfds: the source text feature ("" = none)
  c.data.tfds_target_field = ""         # paired tfds: the target text(s), e.g. captions/text
  c.data.tfds_image_field = ""          # paired tfds: the image feature ("" = none)
  c.data.source_len = 128               # paired: source bytes + EOS per row (longer: cut)
  c.data.image_size = 32                # paired: images are [image_size, image_size, C]
  c.data.image_channels = 3             # paired: 3 (RGB) or 1 (grey)
  c.data.blind_inputs = False           # paired: zero images / empty sources (a blind arm)
  c.data.val_examples = 1000            # generated paired tasks: validation set size
  # autoencode's noise (mgm/data/noise.py): span (T5/ByT5 span corruption) | bytes | both
  c.data.noise = "span"
  c.data.noise_density = 0.15           # span: fraction of bytes masked (T5: 0.15)
  c.data.noise_mean_span = 20.0         # span: mean masked span, bytes (ByT5: 20; >= 1)
  c.data.noise_delete = 0.05            # bytes: P(a byte is deleted)
  c.data.noise_replace = 0.05           # bytes: P(a byte is replaced by another)
  c.data.noise_insert = 0.05            # bytes: P(a random byte is inserted before a byte)
  c.data.noise_seed = 0                 # the noise's identity (with split and example index)
  c.data.tasks = []                     # a task mixture (configs/multitask.py): ConfigDicts
                                        # {name, source, rate, weight, data.* overrides};
                                        # mgm/data/mixture.py. [] = the one task above

  c.train = mlc.ConfigDict()
  c.train.steps = 200
  c.train.batch_size = 16               # global batch, in sequences
  c.train.grad_accum = 1                # micro-batches per step (activation memory / this)
  c.train.lr = 3e-3
  c.train.warmup_steps = 20
  c.train.min_lr_ratio = 0.1
  c.train.weight_decay = 0.1
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.grad_clip = 1.0
  c.train.label_smoothing = 0.0         # of the training loss (0 = off); eval is plain CE
  c.train.log_every = 10
  c.train.eval_every = 50
  c.train.eval_batches = 8
  c.train.max_nonfinite_in_a_row = 5    # non-finite loss/grad steps are skipped; more stop the run

  c.eval = mlc.ConfigDict()             # generation metrics (BLEU, chrF, ROUGE) after training
  c.eval.continuations = 0              # held-out sequences continued greedily (0 = off)
  c.eval.prompt_tokens = 64             # each one's first tokens are the prompt,
  c.eval.new_tokens = 32                # the next ones the reference
  c.eval.examples = 0                   # conditioned models: held-out examples generated from
                                        # their image/source and scored (exact match, BLEU,
                                        # chrF, CIDEr, ROUGE; outputs/ in the workdir); 0 = off
  c.eval.beam_size = 1                  # their decoding: greedy (1) or beam search

  c.checkpoint = mlc.ConfigDict()       # also saved at the end and on SIGTERM/SIGINT
  c.checkpoint.every_steps = 100
  c.checkpoint.every_minutes = 0.0      # also save this often (0 = off)
  c.checkpoint.keep = 3                 # the newest N steps
  c.checkpoint.keep_best = False        # and the one of lowest eval_bpb
  c.checkpoint.init_from = ""           # a workdir/checkpoint: its parameters, fresh optimizer

  c.distill = mlc.ConfigDict()          # distillation from a teacher ensemble (mgm/distill.py)
  c.distill.teachers = ""               # trained runs' workdirs (or checkpoint dirs), comma-
                                        # separated; '' = off. Any preset, the same vocab_size
  c.distill.alpha = 0.5                 # loss (1-alpha) CE + alpha tau^2 KL(teachers || student)
  c.distill.temperature = 2.0           # tau: both distributions are softmax(logits / tau)

  c.sample = mlc.ConfigDict()           # --mode=sample, and samples after training
  c.sample.strategy = "sample"          # greedy | sample | beam
  c.sample.prompt = ""                  # "": the data source's ("= ", or a held-out line)
  c.sample.prompt_file = ""             # or one prompt per line of a UTF-8 file
  c.sample.image = ""                   # a PNG/JPEG file or a folder of them, to caption (needs
                                        # an image encoder; mgm/data/images.py reads them)
  c.sample.source = ""                  # one source text to translate/summarise (needs a text
                                        # encoder)
  c.sample.source_file = ""             # or one source per line of a UTF-8 file (a .jsonl: a
                                        # {"source": ...} per line)
  c.sample.num_samples = 2              # per prompt (1 for greedy and beam: deterministic)
  c.sample.max_new_tokens = 128         # prompt + new tokens <= data.seq_len
  c.sample.min_new_tokens = 0
  c.sample.temperature = 0.8
  c.sample.top_k = 0                    # 0 = off
  c.sample.top_p = 1.0                  # 1 = off
  c.sample.beam_size = 4
  c.sample.length_penalty = 1.0
  c.sample.banned = ""                  # bytes never to emit
  c.sample.stop = ()                    # stop sequences, e.g. ("\n\n",)
  c.sample.forced_prefix = ""
  c.sample.stop_at_eos = True
  c.sample.seed = 0
  c.sample.repetition_penalty = 1.0     # CTRL: > 1 discourages ids already in the text (1 = off)
  c.sample.no_repeat_ngram_size = 0     # n > 0: never repeat an n-gram of the text (0 = off)

  c.mesh = mlc.ConfigDict()             # devices as (data, fsdp, tensor); -1: the rest
  c.mesh.data = -1                      # data parallel (batch split)
  c.mesh.fsdp = 1                       # batch split and parameters sharded (ZeRO-3)
  c.mesh.tensor = 1                     # model parallel (mlp, heads, vocab)
  c.mesh.rules = MESH_RULES

  # experimental adversarial loss, off (weight 0): fields in mgm/adversarial.py DEFAULTS
  c.adversarial = mlc.ConfigDict(adversarial.DEFAULTS)

  c.profile = mlc.ConfigDict()          # a jax.profiler trace in <workdir>/profile
  c.profile.steps = ""                  # "a,b": of steps a..b, from 1 (a >= 2: no compile);
                                        # "" = off (mgm/profiling.py)

  c.distributed = mlc.ConfigDict()      # multi-host: jax.distributed.initialize()
  c.distributed.auto = False            # TPU pod slice / SLURM: jax finds the coordinator
  c.distributed.coordinator_address = ""  # or explicit: host:port of process 0
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  return c


def apply_size(c, model, size):
  c.model.levels = model_levels(model, size)
  c.data.seq_len = SHAPES[size][3]
  if size == "tiny":
    c.train.update(steps=20, batch_size=8, warmup_steps=5, log_every=5,
                   eval_every=10, eval_batches=2)
    c.checkpoint.every_steps = 10
    c.sample.max_new_tokens = 32
    c.eval.update(prompt_tokens=32, new_tokens=16)
  elif size == "small":
    c.train.update(steps=20_000, batch_size=32, lr=1e-3, warmup_steps=1000,
                   log_every=50, eval_every=1000, eval_batches=16)
    c.checkpoint.every_steps = 1000
  elif size == "base":
    c.model.dtype = "bfloat16"   # no remat: 28 GiB at 8 seqs per GPU (remat: 4.7 GiB)
    c.train.update(steps=50_000, batch_size=64, lr=6e-4, warmup_steps=2000,
                   log_every=50, eval_every=2000, eval_batches=16)
    c.checkpoint.every_steps = 2000
  return c


def conditioned_run(c, seq_len: int, steps: int, batch: int, examples: int):
  """The run settings configs/caption.py and configs/seq2seq.py share: the
  coarsest level cross-attends, delimiter levels' unit bounds follow the
  target length, one example a row, held-out generation scored at the end."""
  c.model.levels[0].cross_attention = True
  for level in c.model.levels[:-1]:
    if level.max_units:
      level.max_units = max(seq_len // (2 if level.units == "word" else 8), 4)
  c.data.update(seq_len=seq_len, packing="none")
  c.train.update(steps=steps, batch_size=batch, warmup_steps=max(steps // 20, 1),
                 eval_every=max(steps // 4, 1), log_every=max(steps // 20, 1))
  c.checkpoint.every_steps = c.train.eval_every
  c.eval.update(examples=examples, continuations=0, prompt_tokens=seq_len // 2,
                new_tokens=seq_len // 4)
  c.sample.update(strategy="greedy", num_samples=1, max_new_tokens=seq_len - 1)
  return c


PRESETS_HELP = (f"presets are {', '.join(SIZES)} (the flat model) or model=NAME,size=SIZE "
                f"with NAME one of {', '.join(MODELS)}, e.g. configs/lm.py:model=mgm3,size=demo")


def parse_preset(arg, choices: dict, file: str, help_text: str) -> dict:
  """'demo' or 'key=value,...' -> {key: value} for the keys of `choices` ({key:
  (default, allowed values)}; a bare word is the size); ValueError (one line
  naming the valid presets) for anything else."""
  fields = {k: default for k, (default, _) in choices.items()}
  for part in filter(None, (arg or "").split(",")):
    key, eq, value = part.partition("=")
    if not eq:
      key, value = "size", part
    if key not in fields:
      raise ValueError(f"{file}: unknown preset key {key!r} in {arg!r}; {help_text}")
    fields[key] = value
  for key, (_, allowed) in choices.items():
    if fields[key] not in allowed:
      what = "preset size" if key == "size" else key
      raise ValueError(f"{file}: unknown {what} {fields[key]!r}; {help_text}")
  return fields


def parse_arg(arg):
  """'demo' or 'model=flat,size=demo' -> (model, size); see parse_preset."""
  fields = parse_preset(arg, {"model": ("flat", MODELS), "size": ("demo", SIZES)},
                        "configs/lm.py", PRESETS_HELP)
  return fields["model"], fields["size"]


def get_config(arg=None):
  """`tiny` | `demo` | ... (the flat model) or `model=NAME,size=SIZE`."""
  model, size = parse_arg(arg)
  return apply_size(base_config(), model, size)
