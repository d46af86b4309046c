"""The family-agnostic training loop: init-or-resume, step, log, checkpoint, sample."""

import functools
import json
import logging
import os

import jax
import ml_collections
import numpy as np

from mmgen_jax import checkpoint, families, parallel, writers
from mmgen_jax.data import pipeline, prepare, tokenizer
from mmgen_jax.evaluation import during_training
from mmgen_jax.families import base

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
    """Trains `config` in `workdir`: resumes from its latest checkpoint if there is one, else
    starts from the parameters of the run `config.init_from` names, else from scratch.

    Returns the final state.
    """
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
    )

    rng = jax.random.PRNGKey(config.seed)
    state, start = _restore_or_init(family, ckpt, stream, rng, mesh, config.get("init_from"))

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
    draws = family.can(base.TEXT_TO_IMAGE) or family.can(base.JOINT)
    samples = None
    if is_main and draws and config.train.sample_every:
        samples = _SampleGrid(config, family, data_dir, workdir)
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
            if last or itstime(step, t.log_every):
                averaged = _mean_metrics(pending, step, family.nan_hint)
                pending = []
                rate = progress.log(step, averaged)
                writer.scalars(step, {**averaged, "steps_per_sec": rate})
            if last or itstime(step, t.checkpoint_every):
                ckpt.save(step, state, batches.state)
            if samples is not None and itstime(step, t.sample_every, last):
                samples.write(step, state, writer)
            if evaluation is not None and itstime(step, t.eval_every, last):
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


def itstime(step, every, last=False):
    """Whether a periodic action (`train.*_every`) runs at `step`: every `every` steps and,
    with `last`, at the final step; never when `every` is 0 (off)."""
    return every > 0 and (step % every == 0 or last)


def _restore_or_init(family, ckpt, stream, rng, mesh, init_from=None):
    """Resumes from the workdir's latest checkpoint, else starts from the parameters of the
    run `init_from` (a workdir), else initialises. -> (state, step)."""
    replicated = parallel.replicated(mesh)
    latest = ckpt.latest_step()
    if latest is None:
        state = jax.jit(family.init, out_shardings=replicated)(rng)
        if init_from:
            state = base.adopt(state, _load_other_run(family, init_from, state, replicated))
            log.info("Starting from the parameters of %s.", init_from)
        return state, 0
    target = checkpoint.abstract(jax.eval_shape(family.init, rng), replicated)
    state, data_state = ckpt.restore(target, latest)
    stream.set_state(data_state)
    log.info("Resumed from checkpoint at step %d.", latest)
    return state, latest


def _load_other_run(family, workdir, like, sharding):
    """The latest state of the run in `workdir`, which must have `like`'s structure."""
    other = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        return other.restore(checkpoint.abstract(like, sharding))[0]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"config.init_from={workdir!r} holds a run whose parameters do not fit this "
            f"config's {family.config.model.family!r} model ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); keep the model fields of that run's config.json"
        ) from None
    finally:
        other.close()


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


def _mean_metrics(pending, step, nan_hint):
    host = jax.device_get(pending)
    # A metric is a scalar per dispatch, or one value per step with steps_per_dispatch > 1.
    averaged = {k: float(np.mean(np.concatenate([np.ravel(m[k]) for m in host]))) for k in host[0]}
    bad = [k for k, v in averaged.items() if not np.isfinite(v)]
    if bad:
        raise FloatingPointError(
            f"{', '.join(bad)} became non-finite by step {step}. The run diverged: "
            f"{nan_hint} and start a new workdir, or continue from this run's last "
            f"checkpoint in a new workdir with --config.init_from=THIS_WORKDIR."
        )
    return averaged


class _SampleGrid:
    """Fixed captions from the eval split, their real images, and the columns the family's
    capabilities draw from them (`Family.grid_columns`) with the sampling variables."""

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
        )
        # Prefer captions the grid's font surely draws (ASCII), keep stored order.
        order = sorted(
            range(len(examples["caption"])), key=lambda i: not examples["caption"][i].isascii()
        )[: t.sample_rows]
        self.captions = [examples["caption"][i] for i in order]
        self.real = examples["image"][order]
        self.tokens = examples["text"][order]
        self.key = jax.random.PRNGKey(config.seed + 1)
        self.family = family
        self.dir = os.path.join(workdir, "samples")
        os.makedirs(self.dir, exist_ok=True)
        self._columns = jax.jit(functools.partial(family.grid_columns, cols=t.sample_cols))

    def write(self, step, state, writer):
        # Process 0 samples on its first device from its own copy of the replicated state.
        variables = parallel.single_copy(self.family.sampling_variables(state))
        columns = [
            (title.text, np.asarray(images), _decode_all(notes))
            for title, images, notes in self._columns(variables, self.real, self.tokens, self.key)
        ]
        writes = any(notes is not None for _, _, notes in columns)
        grid = writers.image_table(
            self.captions, columns, scale=3 if writes else 2, note_lines=5 if writes else 0
        )
        grid.save(os.path.join(self.dir, f"step_{step}.png"))
        writer.image(step, "samples", grid)


def _decode_all(tokens):
    return None if tokens is None else [tokenizer.decode(t) for t in np.asarray(tokens)]


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
