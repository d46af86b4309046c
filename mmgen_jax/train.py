"""The family-agnostic training loop: init-or-resume, step, log, checkpoint, sample."""

import collections
import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmgen_jax import checkpoint, families, parallel, report, run_config, workdir_lock, writers
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
    "train.write_report",
    "data.data_dir",
    "data.num_threads",
    "data.prefetch",
)

log = logging.getLogger("mmgen_jax")

FINITE = "state_is_finite"  # the loop's own metric (see with_finite_flag), never logged


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
    """Trains `config` in `workdir`: resumes from its latest checkpoint if there is one, else
    starts from the parameters of the run `config.init_from` names, else from scratch.

    Returns the final state.
    """
    workdir = os.path.abspath(workdir)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    # Before anything in the workdir is read or written: a second run refuses here.
    with workdir_lock.WorkdirLock(workdir, enabled=is_main):
        return _train(config, workdir, is_main)


def _train(config, workdir, is_main):
    # Checked whenever config.json exists, checkpoint or not ("eval.": how a run is
    # measured, not what it learns).
    run_config.check_matches_saved(workdir, config, may_change=(*RESUMABLE_CHANGES, "eval."))
    ckpt = checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=config.train.max_to_keep
    )

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
    init = _init_program(family, config, mesh)
    state, start = _restore_or_init(family, init, ckpt, stream, rng, mesh, config.get("init_from"))
    _write_run_files(config, workdir, is_main, start)

    num_steps = config.train.num_steps
    if start >= num_steps:
        if start == 0:
            log.info(
                "train.num_steps=0: nothing trained; %s holds config.json and manifest.json only.",
                workdir,
            )
        else:
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
    train_step = _step_program(family, config, mesh, k)
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
        samples = _SampleGrid(
            config, family, data_dir, workdir, _grid_program(family, config, mesh)
        )
    evaluation = during_training.create(config, family, data_dir, workdir)
    # WORKDIR/report.html (curves, grids, config), rewritten off this thread.
    page = report.BackgroundReport(
        workdir, enabled=is_main and config.train.get("write_report", True)
    )
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
                averaged = _mean_metrics(pending, step, family.nan_hint, workdir)
                pending = []
                rate = progress.log(step, averaged)
                writer.scalars(step, {**averaged, "steps_per_sec": rate})
            if last or itstime(step, t.checkpoint_every):
                _check_finite(metrics, step, ckpt, family.nan_hint)
                # The flag just checked: save skips its own reduction over the state.
                ckpt.save(step, state, batches.state, finite=metrics[FINITE])
            if samples is not None and itstime(step, t.sample_every, last):
                samples.write(step, state, writer)
                page.request()
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
        page.request()  # the last rows and grid
        page.close()
    return state


def itstime(step, every, last=False):
    """Whether a periodic action (`train.*_every`) runs at `step`: every `every` steps and,
    with `last`, at the final step; never when `every` is 0 (off)."""
    return every > 0 and (step % every == 0 or last)


# The jitted programs of the last few experiments this process trained, so that a run of
# the same experiment later in the process (resumed, repeated: a notebook, the tests)
# neither traces nor compiles them again. Keyed by the family's class and the config less
# the fields a resumed run may change: a family's programs depend on those alone.
_PROGRAMS = collections.OrderedDict()  # (class, experiment, mesh) -> {kind: program}
_EXPERIMENTS_KEPT = 8


def _program(kind, family, config, mesh, make):
    experiment = {
        k: v
        for k, v in run_config.flatten(json.loads(config.to_json())).items()
        if k not in RESUMABLE_CHANGES
    }
    key = (type(family), json.dumps(experiment, sort_keys=True), mesh)
    programs = _PROGRAMS.pop(key, {})
    _PROGRAMS[key] = programs  # the most recent experiment last
    while len(_PROGRAMS) > _EXPERIMENTS_KEPT:
        _PROGRAMS.popitem(last=False)
    if kind not in programs:
        programs[kind] = make()
    return programs[kind]


def _init_program(family, config, mesh):
    """`family.init` jitted, its state replicated over `mesh`."""
    return _program(
        "init",
        family,
        config,
        mesh,
        lambda: jax.jit(family.init, out_shardings=parallel.replicated(mesh)),
    )


def _step_program(family, config, mesh, k):
    """The data-parallel step with the finite flag, `k` steps per dispatch."""
    return _program(
        ("step", k),
        family,
        config,
        mesh,
        lambda: parallel.data_parallel(
            with_finite_flag(family.train_step), mesh, steps_per_dispatch=k
        ),
    )


def _grid_program(family, config, mesh):
    """`family.grid_columns` jitted with the config's number of columns."""
    cols = config.train.sample_cols
    return _program(
        "grid",
        family,
        config,
        mesh,
        lambda: jax.jit(functools.partial(family.grid_columns, cols=cols)),
    )


def _restore_or_init(family, init, ckpt, stream, rng, mesh, init_from=None):
    """Resumes from the workdir's latest checkpoint, else starts from the parameters of the
    run `init_from` (a workdir), else initialises with `init` (`_init_program`).
    -> (state, step)."""
    replicated = parallel.replicated(mesh)
    latest = ckpt.intact_step()  # a damaged latest step is reported and set aside
    if latest is None:
        state = init(rng)
        if init_from:
            state = base.adopt(state, _load_other_run(family, init_from, state, replicated))
            log.info("Starting from the parameters of %s.", init_from)
        return state, 0
    target = checkpoint.abstract(init.eval_shape(rng), replicated)
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


def with_finite_flag(train_step):
    """`train_step` whose metrics also hold FINITE: 1.0 when the new state has no NaN or Inf.
    The loop reads it before every save, so a diverged state is never checkpointed (nor
    rotates the good checkpoints out)."""

    def step(state, batch):
        state, metrics = train_step(state, batch)
        finite = checkpoint.all_finite(state)
        return state, {**metrics, FINITE: finite.astype(jnp.float32)}

    return step


def _check_finite(metrics, step, ckpt, nan_hint):
    if np.all(jax.device_get(metrics[FINITE])):
        return
    good = ckpt.latest_step()
    kept = f"step {good}, the last finite state, is kept" if good else "no checkpoint was saved"
    raise FloatingPointError(
        f"the training state became non-finite by step {step} and was not saved ({kept}). "
        f"The run diverged: {nan_hint} and start a new workdir, or continue from the kept "
        f"checkpoint in a new workdir with --config.init_from={os.path.dirname(ckpt.directory)}."
    )


def _mean_metrics(pending, step, nan_hint, workdir):
    pending = [{k: v for k, v in m.items() if k != FINITE} for m in pending]
    host = jax.device_get(pending)
    # A metric is a scalar per dispatch, or one value per step with steps_per_dispatch > 1.
    averaged = {k: float(np.mean(np.concatenate([np.ravel(m[k]) for m in host]))) for k in host[0]}
    bad = [k for k, v in averaged.items() if not np.isfinite(v)]
    if bad:
        raise FloatingPointError(
            f"{', '.join(bad)} became non-finite by step {step}. The run diverged: "
            f"{nan_hint} and start a new workdir, or continue from this run's last "
            f"checkpoint in a new workdir with --config.init_from={workdir}."
        )
    return averaged


class _SampleGrid:
    """Fixed captions from the eval split, their real images, and the columns the family's
    capabilities draw from them with the sampling variables (`columns`: its
    `Family.grid_columns`, jitted by `_grid_program`)."""

    def __init__(self, config, family, data_dir, workdir, columns):
        t, d = config.train, config.data
        # A user's folder may have fewer eval examples than rows.
        examples = pipeline.eval_batch(
            name=d.name,
            data_dir=data_dir,
            split=d.eval_split,
            image_size=d.image_size,
            max_text_len=d.max_text_len,
            num=t.sample_rows,
            builder_kwargs=pipeline.builder_kwargs(d),
            at_most=True,
            tokenizer_name=d.get("tokenizer", "bytes"),
        )
        self.captions = list(examples["caption"])
        self.real, self.tokens = examples["image"], examples["text"]
        self.key = jax.random.PRNGKey(config.seed + 1)
        self.family = family
        self._decode = tokenizer.by_name(d.get("tokenizer", "bytes")).decode
        self.dir = os.path.join(workdir, "samples")
        os.makedirs(self.dir, exist_ok=True)
        self._columns = columns

    def write(self, step, state, writer):
        # Process 0 samples on its first device from its own copy of the replicated state.
        variables = parallel.single_copy(self.family.sampling_variables(state))
        columns = [
            (title.text, np.asarray(images), self._decode_all(notes))
            for title, images, notes in self._columns(variables, self.real, self.tokens, self.key)
        ]
        writes = any(notes is not None for _, _, notes in columns)
        grid = writers.image_table(
            self.captions, columns, scale=3 if writes else 2, note_lines=5 if writes else 0
        )
        grid.save(os.path.join(self.dir, f"step_{step}.png"))
        writer.image(step, "samples", grid)

    def _decode_all(self, tokens):
        return None if tokens is None else [self._decode(t) for t in np.asarray(tokens)]


def _write_run_files(config, workdir, is_main, start):
    """config.json (the run's identity) and this start in manifest.json; warns when a
    resumed run continues on another device count than its last training start."""
    before = (writers.last_training_start(workdir) or {}).get("device_count")
    if start > 0 and before not in (None, jax.device_count()):
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
        writers.write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
        writers.record_start(workdir, config, start)
