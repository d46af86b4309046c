"""The family-agnostic training loop: init-or-resume, step, log, checkpoint, sample."""

import json
import logging
import os

import jax
import ml_collections
import numpy as np

from mmgen_jax import checkpoint, families, parallel, writers
from mmgen_jax.data import pipeline, prepare, tokenizer
from mmgen_jax.evaluation import during_training

# Fields that may change between a run and its resumption; any other change means a
# different experiment, which needs its own workdir.
RESUMABLE_CHANGES = (
    "train.num_steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.max_to_keep",
    "train.deterministic",
    "train.sample_every",
    "train.eval_every",
    "data.data_dir",
    "data.num_threads",
    "data.prefetch",
)

log = logging.getLogger("mmgen_jax")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

    Returns the final state.
    """
    if config.model.get("text_encoder") == "none":
        raise ValueError(
            "model.text_encoder='none' feeds precomputed caption embeddings and serves the "
            "benchmark (configs/gan.py:dcgan32); to train on captions set "
            "--config.model.text_encoder=conv (or transformer)"
        )
    workdir = os.path.abspath(workdir)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    ckpt = checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=config.train.max_to_keep
    )
    _write_run_files(config, workdir, is_main, resuming=ckpt.latest_step() is not None)

    mesh = parallel.make_mesh()
    family = families.get(config.model.family)(config, axis_name=parallel.AXIS)
    data_dir = config.data.data_dir or prepare.default_data_dir()
    stream = pipeline.TrainStream(
        name=config.data.name,
        data_dir=data_dir,
        split=config.data.train_split,
        image_size=config.data.image_size,
        max_text_len=config.data.max_text_len,
        global_batch_size=config.train.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_threads=config.data.num_threads,
        prefetch=config.data.prefetch,
        builder_kwargs=pipeline.builder_kwargs(config.data),
        tokenizer_name=config.data.get("tokenizer", "bytes"),
    )

    rng = jax.random.PRNGKey(config.seed)
    state, start = _restore_or_init(family, ckpt, stream, rng, mesh)

    num_steps = config.train.num_steps
    if start >= num_steps:
        log.info(
            "%s already trained to step %d (num_steps=%d): nothing to do.",
            workdir,
            start,
            num_steps,
        )
        ckpt.close()
        stream.close()
        return state

    k = _steps_per_dispatch(config, start)
    train_step = parallel.data_parallel(family.train_step, mesh, steps_per_dispatch=k)
    batches = parallel.Prefetcher(
        stream if k == 1 else parallel.Grouped(stream, k),
        lambda b: parallel.global_batch(family.device_batch(b), mesh, stacked=k > 1),
    )
    # Rows a crashed run wrote after its last checkpoint are dropped: they are redone.
    writer = writers.MetricWriter(workdir, enabled=is_main, after_step=start)
    progress = writers.Progress(num_steps, start, enabled=is_main)
    draws = hasattr(family, "generate")  # the domain evaluator draws nothing
    # Families that also write captions (the VAE) get the grid with both directions.
    grid = _VAESampleGrid if hasattr(family, "describe") else _SampleGrid
    samples = grid(config, family, data_dir, workdir) if is_main and draws else None
    evaluation = during_training.create(config, family, data_dir, workdir)
    # One process polls its own SIGTERM flag; several agree on the step through Orbax's
    # preemption sync point, whose notifier owns SIGTERM (a Python handler would hide it).
    stop = checkpoint.StopRequest() if jax.process_count() == 1 else None
    pending = []  # this interval's metrics, still on device: no sync per step
    t = config.train
    log.info(
        "Training %s from step %d to %d on %d devices (%d processes).",
        config.model.family,
        start,
        num_steps,
        jax.device_count(),
        jax.process_count(),
    )

    try:
        for step in range(start + k, num_steps + 1, k):
            state, metrics = train_step(state, next(batches))
            pending.append(metrics)
            stopping = _should_stop(stop, ckpt, step)
            last = step == num_steps or stopping
            if step % t.log_every == 0 or last:
                averaged = _mean_metrics(pending, step)
                pending = []
                rate = progress.log(step, averaged)
                writer.scalars(step, {**averaged, "steps_per_sec": rate})
            if step % t.checkpoint_every == 0 or last:
                ckpt.save(step, state, batches.state)
            if samples is not None and (step % t.sample_every == 0 or last):
                samples.write(step, state, writer)
            if evaluation is not None and (step % t.eval_every == 0 or last):
                evaluation.run(step, state, batches.state, writer)
            if stopping:
                log.warning("Stop requested (SIGTERM): saved step %d; exiting.", step)
                break
    finally:
        ckpt.wait()  # an async save must complete before the process may exit
        ckpt.close()
        if evaluation is not None:
            evaluation.close()
        if stop is not None:
            stop.restore_handlers()
        progress.close()
        writer.close()
        stream.close()
    return state


def _restore_or_init(family, ckpt, stream, rng, mesh):
    """Resumes from the workdir's latest checkpoint, else initialises. -> (state, step)."""
    replicated = parallel.replicated(mesh)
    latest = ckpt.latest_step()
    if latest is None:
        state = jax.jit(family.init, out_shardings=replicated)(rng)
        return state, 0
    target = checkpoint.abstract(jax.eval_shape(family.init, rng), replicated)
    state, data_state = ckpt.restore(target, latest)
    stream.set_state(data_state)
    log.info("Resumed from checkpoint at step %d.", latest)
    return state, latest


def _steps_per_dispatch(config, start):
    """train.steps_per_dispatch, checked: every boundary the loop acts on must fall on a
    dispatch boundary."""
    t = config.train
    k = t.steps_per_dispatch
    fields = {
        "num_steps": t.num_steps,
        "log_every": t.log_every,
        "checkpoint_every": t.checkpoint_every,
        "sample_every": t.sample_every,
        "eval_every": t.get("eval_every", 0),
        "resumed step": start,
    }
    bad = [f"{name}={value}" for name, value in fields.items() if k < 1 or value % k]
    if bad:
        raise ValueError(
            f"train.steps_per_dispatch={k} must be a positive divisor of {', '.join(bad)}: "
            f"every boundary the loop acts on falls between dispatches"
        )
    return k


def _should_stop(stop, ckpt, step):
    # Multi-process runs must agree on the step: Orbax's preemption sync point does that.
    if jax.process_count() > 1:
        return ckpt.reached_preemption(step)
    return bool(stop)


def _mean_metrics(pending, step):
    host = jax.device_get(pending)
    # A metric is a scalar per dispatch, or one value per step with steps_per_dispatch > 1.
    averaged = {k: float(np.mean(np.concatenate([np.ravel(m[k]) for m in host]))) for k in host[0]}
    bad = [k for k, v in averaged.items() if not np.isfinite(v)]
    if bad:
        raise FloatingPointError(
            f"{', '.join(bad)} became non-finite by step {step}. The run diverged: resume "
            f"from the last checkpoint with smaller learning rates (--config.train.lr_g, "
            f"--config.train.lr_d) or start a new workdir."
        )
    return averaged


class _SampleGrid:
    """Fixed captions from the eval split, their real images and EMA-generator samples."""

    def __init__(self, config, family, data_dir, workdir):
        t, d = config.train, config.data
        # A user's folder may have fewer eval examples than the usual pool of 64.
        examples = pipeline.eval_batch(
            name=d.name,
            data_dir=data_dir,
            split=d.eval_split,
            image_size=d.image_size,
            max_text_len=d.max_text_len,
            num=max(64, t.sample_rows),
            builder_kwargs=pipeline.builder_kwargs(d),
            at_most=True,
            tokenizer_name=d.get("tokenizer", "bytes"),
        )
        # Prefer captions the grid's font surely draws (ASCII), keep stored order.
        order = sorted(
            range(len(examples["caption"])), key=lambda i: not examples["caption"][i].isascii()
        )[: t.sample_rows]
        self.captions = [examples["caption"][i] for i in order]
        self.real = examples["image"][order]
        cols = t.sample_cols
        self.tokens = np.repeat(examples["text"][order], cols, axis=0)
        self.indices = np.arange(len(self.tokens), dtype=np.uint32)
        self.key = jax.random.PRNGKey(config.seed + 1)
        self.cols, self.family = cols, family
        self.dir = os.path.join(workdir, "samples")
        os.makedirs(self.dir, exist_ok=True)
        self._generate = jax.jit(family.generate)

    def write(self, step, state, writer):
        # Process 0 samples on its first device from its own copy of the replicated state.
        variables = jax.tree.map(
            lambda x: x.addressable_data(0), self.family.sampling_variables(state)
        )
        images = np.asarray(self._generate(variables, self.tokens, self.key, self.indices))
        images = images.reshape(len(self.captions), self.cols, *images.shape[1:])
        grid = writers.caption_grid(self.captions, self.real, images)
        grid.save(os.path.join(self.dir, f"step_{step}.png"))
        writer.image(step, "samples", grid)


class _VAESampleGrid(_SampleGrid):
    """Per eval example: real image (caption generated from it written under it) | joint
    reconstruction (its caption under it) | images generated from the caption | joint
    samples z ~ p(z) with their generated captions."""

    def __init__(self, config, family, data_dir, workdir):
        super().__init__(config, family, data_dir, workdir)
        rows = len(self.captions)
        self.row_tokens = self.tokens[:: self.cols]
        self.row_indices = np.arange(rows, dtype=np.uint32)
        self._describe = jax.jit(family.describe)
        self._reconstruct = jax.jit(family.reconstruct)
        self._joint = jax.jit(family.joint)

    def write(self, step, state, writer):
        variables = jax.tree.map(
            lambda x: x.addressable_data(0), self.family.sampling_variables(state)
        )
        rows, cols, key = len(self.captions), self.cols, self.key
        from_text = np.asarray(self._generate(variables, self.tokens, key, self.indices))
        described = np.asarray(self._describe(variables, self.real, key, self.row_indices))
        recon, recon_tokens = self._reconstruct(
            variables, self.real, self.row_tokens, key, self.row_indices
        )
        joint, joint_tokens = self._joint(variables, key, self.indices)
        from_text = from_text.reshape(rows, cols, *from_text.shape[1:])
        joint = np.asarray(joint).reshape(rows, cols, *from_text.shape[2:])
        decode = tokenizer.by_name(self.family.config.data.get("tokenizer", "bytes")).decode
        joint_text = [decode(t) for t in np.asarray(joint_tokens)]
        columns = [
            ("real", self.real, [decode(t) for t in described]),
            ("reconstruction", np.asarray(recon), [decode(t) for t in recon_tokens]),
            *((f"from caption {j + 1}", from_text[:, j], None) for j in range(cols)),
            *((f"joint {j + 1}", joint[:, j], joint_text[j::cols]) for j in range(cols)),
        ]
        grid = writers.image_table(self.captions, columns, scale=3, note_lines=5)
        grid.save(os.path.join(self.dir, f"step_{step}.png"))
        writer.image(step, "samples", grid)


def _write_run_files(config, workdir, is_main, resuming):
    """config.json (the run's identity) and manifest.json; refuses to resume a checkpoint
    with a config that makes it a different experiment."""
    path = os.path.join(workdir, "config.json")
    if resuming and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = _flatten(json.load(f))
        current = _flatten(json.loads(config.to_json()))
        changed = sorted(
            k
            for k in set(saved) | set(current)
            if saved.get(k) != current.get(k)
            and k not in RESUMABLE_CHANGES
            and not k.startswith("eval.")  # how a run is measured, not what it learns
        )
        if changed:
            raise ValueError(
                f"{workdir} holds a run with a different config ({', '.join(changed)} "
                f"differ from {path}). A workdir is one experiment: use a new --workdir, "
                f"or rerun with the saved config to resume it."
            )
    manifest_path = os.path.join(workdir, "manifest.json")
    if resuming and os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            before = json.load(f).get("device_count")
        if before not in (None, jax.device_count()):
            # Same experiment, but sums are split differently: not bit-identical any more.
            log.warning(
                "This run was last trained on %d devices and resumes on %d: from here on its "
                "numbers differ in floating-point rounding from a run that stayed on %d "
                "(for bit-identical results, resume with --cpu_devices=%d or the same devices).",
                before,
                jax.device_count(),
                before,
                before,
            )
    if is_main:
        writers.write_json(path, json.loads(config.to_json()))
        writers.write_json(manifest_path, writers.manifest(config))


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
