"""Orbax checkpoints of a run: the train state and, beside it, the data iterator state.

Saves are asynchronous (training continues while files are written) and atomic: Orbax
writes each step into a temporary folder and renames it when complete, so a crash or
SIGTERM during a save leaves the previous checkpoint as the latest usable one.
"""

import os
import signal
import threading

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """`CheckpointManager` over `directory` with items 'state' (a pytree) and 'data' (JSON)."""

    def __init__(self, directory, max_to_keep=2, read_only=False):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
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

    def save(self, step, state, data_state):
        """Starts an asynchronous save; returns once the arrays are copied off device."""
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
            ),
            force=True,
        )

    def restore(self, abstract_state, step=None):
        """(state, data_state) of `step` (default: latest), laid out as `abstract_state`.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings, e.g.
        `abstract(jax.eval_shape(init), sharding)`.
        """
        step = self.latest_step() if step is None else step
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

    def reached_preemption(self, step):
        """True on every process once the cluster has signalled preemption (multi-host)."""
        return self.manager.reached_preemption(int(step))

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


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
