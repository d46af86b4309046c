"""Orbax checkpoints of a run: the train state and, beside it, the data iterator state.

Saves are asynchronous (training continues while files are written) and atomic: Orbax
writes each step into a temporary folder and renames it when complete, so a crash or
SIGTERM during a save leaves the previous checkpoint as the latest usable one.

What is kept is safe to resume from:
- a state holding NaN or infinite values is never saved (`NonFiniteState`), so rotation
  (`max_to_keep`, at least 1) never replaces a finite checkpoint with a diverged one;
- every finished step gets `sha256sums.txt` (the `sha256sum` format, so
  `cd checkpoints/N && sha256sum -c sha256sums.txt` checks it by hand), written once Orbax
  has finalised the step; restores verify it. A damaged latest checkpoint (truncated,
  deleted or altered files) is reported, moved to `<directory>-damaged/`, and the latest
  intact one is restored instead. Steps written before checksums existed restore
  unverified.
"""

import hashlib
import logging
import os
import shutil
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("mmgen_jax")

SUMS_FILE = "sha256sums.txt"


def _save_replicated_arrays_whole():
    """Each replicated array is written whole from its first replica. Orbax's default off
    GPU splits it into one slice per device, compiling a small program per leaf shape at
    the first save of every process: for states of a few MB that costs more (about a second
    per run on CPU) than the parallel writes save."""
    handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
    absl_logger = logging.getLogger("absl")  # Orbax warns on any override of a default
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_logger.setLevel(level)


_save_replicated_arrays_whole()


class NonFiniteState(FloatingPointError):
    """The state to save holds NaN or infinite values; `kept` is the latest checkpoint on
    disk (a finite one), or None."""

    def __init__(self, step, kept, directory):
        self.step, self.kept = step, kept
        where = (
            f"the latest checkpoint, step {kept}, is finite and kept"
            if kept is not None
            else "no checkpoint was saved before it"
        )
        super().__init__(
            f"the train state at step {step} holds NaN or infinite values: not saved to "
            f"{directory}; {where}."
        )


class DamagedCheckpoint(ValueError):
    """A checkpoint's files differ from its checksums (or every candidate is damaged)."""


def all_finite(tree):
    """True (a scalar bool array) iff every float leaf of `tree` is finite. Cheap and
    jittable: the loop may compute it inside its step and pass it to `save(finite=...)`."""
    checks = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


class Checkpointer:
    """`CheckpointManager` over `directory` with items 'state' (a pytree) and 'data' (JSON)."""

    def __init__(self, directory, max_to_keep=2, read_only=False):
        if not read_only and (
            isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1
        ):
            raise ValueError(
                f"train.max_to_keep={max_to_keep!r}: keep at least 1 checkpoint (0 would delete "
                f"every checkpoint, the final one included); set --config.train.max_to_keep=1 "
                f"or more"
            )
        self.directory = os.path.abspath(directory)
        self.read_only = read_only
        self._unsealed = []  # steps this process saved whose checksums are not written yet
        self._intact = set()  # steps verified here (and steps saved here, once sealed)
        self._finite = jax.jit(all_finite)
        self.manager = self._make_manager(max_to_keep)

    def _make_manager(self, max_to_keep):
        read_only = self.read_only
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                # A reader keeps and deletes nothing (said explicitly: Orbax warns otherwise).
                max_to_keep=None if read_only else max_to_keep,
                save_interval_steps=0 if read_only else 1,
                create=not read_only,
                read_only=read_only,
                enable_async_checkpointing=not read_only,
                # A save cut short by a crash leaves a *.orbax-checkpoint-tmp-* folder that
                # latest_step() never reports; remove such leftovers when a run restarts.
                cleanup_tmp_directories=not read_only,
            ),
            item_names=("state", "data"),
        )

    def latest_step(self):
        return self.manager.latest_step()

    def all_steps(self):
        return sorted(self.manager.all_steps())

    def save(self, step, state, data_state, finite=None):
        """Starts an asynchronous save; returns once the arrays are copied off device.

        `finite`: whether every float in `state` is finite (e.g. `all_finite(state)` computed
        inside the train step; an array of flags must all be true); None computes it here,
        one reduction on the devices. A
        non-finite state raises `NonFiniteState` and nothing is saved or rotated out.
        """
        if finite is None:
            finite = self._finite(state)
        if not np.all(jax.device_get(finite)):  # one flag, or one per step of a dispatch
            self.wait()
            raise NonFiniteState(int(step), self.latest_step(), self.directory)
        # Orbax waits for the previous save before starting one: the wait here is the same
        # one, made explicit so that the previous step is final when its checksums are taken.
        self.wait()
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
            ),
            force=True,
        )
        self._unsealed.append(int(step))

    def restore(self, abstract_state, step=None):
        """(state, data_state) of `step` (default: the latest intact one), laid out as
        `abstract_state`.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings, e.g.
        `abstract(jax.eval_shape(init), sharding)`. An explicit `step` that is damaged raises
        `DamagedCheckpoint` naming the intact steps.
        """
        step = self.intact_step() if step is None else self._checked(step)
        if step is None:
            raise FileNotFoundError(
                f"no checkpoint in {self.directory}: train first with "
                f"`python -m mmgen_jax.main --config=... --workdir=...`"
            )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.data

    def verify(self, step):
        """None if `step`'s files match its checksums (or it has none: written before
        checksums existed), else what differs, in words. An intact step is read once."""
        if step in self._intact:
            return None
        problem = verify_step(os.path.join(self.directory, str(step)))
        if problem is None:
            self._intact.add(step)
        return problem

    def _checked(self, step):
        problem = self.verify(step) if step in self.all_steps() else None
        if not problem:
            return step
        intact = [s for s in self.all_steps() if s != step and not self.verify(s)]
        fix = (
            f"restore an intact step instead (intact: {intact}; e.g. --step={intact[-1]})"
            if intact
            else "no other step is intact: retrain, or restore the files from a backup"
        )
        raise DamagedCheckpoint(
            f"checkpoint {step} in {self.directory} is damaged ({problem}); {fix}"
        )

    def intact_step(self):
        """The latest step whose files match their checksums (None if there is no step);
        damaged later ones are reported in one warning and, unless read-only, moved aside
        so that their steps can be saved again. The step to resume from."""
        damaged = []
        for step in reversed(self.all_steps()):
            problem = self.verify(step)
            if not problem:
                break
            damaged.append((step, problem))
        else:
            step = None
        if not damaged:
            return step
        listed = "; ".join(f"step {s}: {p}" for s, p in damaged)
        if step is None:
            raise DamagedCheckpoint(
                f"every checkpoint in {self.directory} is damaged ({listed}). Nothing intact "
                f"is left to resume from: restore the files from a backup, or move "
                f"{self.directory} away and train again."
            )
        if self.read_only:
            what = f"To choose a step explicitly: --step={step}."
        else:
            moved = self._move_aside([s for s, _ in damaged])
            what = (
                f"The steps after it are trained again; the damaged files were moved to "
                f"{moved} (delete them once no longer needed)."
            )
        log.warning(
            "Checkpoint %s in %s is damaged (%s): using step %d, the latest intact one. %s",
            ", ".join(str(s) for s, _ in damaged),
            self.directory,
            listed,
            step,
            what,
        )
        return step

    def _move_aside(self, steps):
        """Moves damaged steps to `<directory>-damaged/` (process 0; every process waits),
        so that the resumed run can save those steps again."""
        target = f"{self.directory}-damaged"
        if jax.process_index() == 0:
            os.makedirs(target, exist_ok=True)
            for step in steps:
                dest = os.path.join(target, str(step))
                if os.path.exists(dest):
                    shutil.rmtree(dest)  # an older damaged copy of the same step
                os.rename(os.path.join(self.directory, str(step)), dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("mmgen_jax checkpoint: damaged moved")
        self.manager.reload()
        return target

    def reached_preemption(self, step):
        """True on every process once the cluster has signalled preemption (multi-host)."""
        return self.manager.reached_preemption(int(step))

    def wait(self):
        """Waits for the save in flight; then writes the checksums of every finished step."""
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            for step in self._unsealed:
                path = os.path.join(self.directory, str(step))
                if os.path.isdir(path):  # rotation may already have removed it
                    seal_step(path)
                    self._intact.add(step)
        self._unsealed = []

    def close(self):
        self.wait()
        self.manager.close()


def _file_digests(path):
    """{relative path: sha256 hex} of every file under `path` but the sums file."""
    digests = {}
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if rel == SUMS_FILE or rel.startswith(f"{SUMS_FILE}."):
                continue
            h = hashlib.sha256()
            with open(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            digests[rel] = h.hexdigest()
    return digests


def seal_step(path):
    """Writes `path`/sha256sums.txt for a finished checkpoint step (atomically)."""
    lines = "".join(f"{d}  {rel}\n" for rel, d in _file_digests(path).items())
    tmp = os.path.join(path, f"{SUMS_FILE}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(lines)
    os.replace(tmp, os.path.join(path, SUMS_FILE))


def verify_step(path):
    """None if the files under `path` match its sha256sums.txt (or it has none), else a
    short description of the first differences."""
    sums = os.path.join(path, SUMS_FILE)
    if not os.path.exists(sums):
        return None
    with open(sums, encoding="utf-8") as f:
        expected = dict(reversed(line.rstrip("\n").split("  ", 1)) for line in f if line.strip())
    found = _file_digests(path)
    missing = sorted(set(expected) - set(found))
    changed = sorted(r for r in expected if r in found and found[r] != expected[r])
    problems = [f"{r} is missing" for r in missing] + [f"{r} differs" for r in changed]
    if not problems:
        return None
    more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
    return ", ".join(problems[:3]) + more + " (against sha256sums.txt)"


def abstract(tree, sharding):
    """Shapes and dtypes of `tree` placed with `sharding`: the target of a restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class StopRequest:
    """Turns SIGTERM (preemption: SLURM, GKE, Cloud TPU) into a flag the loop polls.

    The loop then saves a checkpoint at the next step boundary, waits for it and exits
    cleanly; a second signal is not needed and the default handler is restored after.
    Single-process runs only: with several processes, `jax.distributed`'s preemption
    notifier owns SIGTERM and `Checkpointer.reached_preemption` makes all processes stop
    at the same step (a Python handler installed here would hide the signal from it).
    """

    def __init__(self, signals=(signal.SIGTERM,)):
        self._event = threading.Event()
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del frame
        self._event.set()

    def __bool__(self):
        return self._event.is_set()

    def restore_handlers(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
