"""The benchmark's step is the plain DCGAN step (same losses and gradients), and the
benchmark CLI prints its numbers."""

import functools
import json

import commands
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config

from mmgen_jax import benchmark, families, parallel


def reference_step(config, state, batch):
    """Textbook simultaneous DCGAN step (SPEC.md): separate jax.grad calls for D and G,
    textbook Flax convolutions, one device. Returns the gradients and losses."""
    config = config.copy_and_resolve_references()
    config.model.g_impl = config.model.d_impl = "textbook"
    family = families.get("gan")(config, axis_name=None)
    G, D = family._generator_local, family._discriminator_local
    z = family.noise(jax.random.fold_in(state.rng, state.step), batch["index"])
    real, text = batch["image"], batch["text"]

    def generate(g_params):
        return G.apply(
            {"params": g_params, "batch_stats": state.g.batch_stats},
            z,
            text,
            train=True,
            mutable=["batch_stats"],
        )

    def discriminate(d_params, images):
        return D.apply(
            {"params": d_params, "batch_stats": state.d.batch_stats},
            images,
            text,
            train=True,
            mutable=["batch_stats"],
        )

    def d_loss(d_params):
        fake = jax.lax.stop_gradient(generate(state.g.params)[0])
        real_logits, new_stats = discriminate(d_params, real)
        fake_logits, _ = discriminate(d_params, fake)
        loss = (
            optax.sigmoid_binary_cross_entropy(real_logits, jnp.ones_like(real_logits)).mean()
            + optax.sigmoid_binary_cross_entropy(fake_logits, jnp.zeros_like(fake_logits)).mean()
        )
        return loss, new_stats["batch_stats"]

    def g_loss(g_params):
        fake, new_stats = generate(g_params)
        logits, _ = discriminate(state.d.params, fake)
        loss = optax.sigmoid_binary_cross_entropy(logits, jnp.ones_like(logits)).mean()
        return loss, new_stats["batch_stats"]

    (dl, _), d_grads = jax.value_and_grad(d_loss, has_aux=True)(state.d.params)
    (gl, _), g_grads = jax.value_and_grad(g_loss, has_aux=True)(state.g.params)
    return d_grads, g_grads, dl, gl


def test_dcgan32_step_equals_textbook_reference():
    config = load_config("gan", "dcgan32")
    config.train.batch_size = 16
    family = families.get("gan")(config)
    # Plain SGD with rate 1 makes each parameter update minus its gradient, so the step's
    # gradients can be read off and compared with the reference's.
    family.tx_g = family.tx_d = optax.sgd(1.0)
    state = jax.jit(family.init)(jax.random.PRNGKey(0))
    batch = family.device_batch(family.example_batch(16, seed=0))

    d_grads, g_grads, d_loss, g_loss = jax.jit(functools.partial(reference_step, config))(
        state, batch
    )
    mesh = parallel.make_mesh()
    step = parallel.data_parallel(family.train_step, mesh, donate_state=False)
    new_state, metrics = step(parallel.replicate(state, mesh), parallel.global_batch(batch, mesh))

    np.testing.assert_allclose(metrics["d_loss"], d_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["g_loss"], g_loss, rtol=1e-5)

    def same_gradient(old, new, grad):
        np.testing.assert_allclose(np.asarray(old - new), np.asarray(grad), rtol=1e-3, atol=1e-6)

    jax.tree.map(same_gradient, state.d.params, new_state.d.params, d_grads)
    jax.tree.map(same_gradient, state.g.params, new_state.g.params, g_grads)


def _benchmark(data_dir, *flags):
    """The benchmark CLI, run in-process on the smoke config: (stdout, its JSON numbers, the
    dtypes it measured the GEMM ceiling in). The ceiling's matrices are 256 x 256, not
    2048 x 2048: what is checked of it does not depend on their size."""
    dtypes, gemm_ceiling = [], benchmark.gemm_ceiling

    def small_ceiling(dtype="float32"):
        dtypes.append(dtype)
        return gemm_ceiling(dtype, n=256)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(benchmark, "gemm_ceiling", small_ceiling)
        stdout, _ = commands.run(
            benchmark,
            "--config=configs/gan.py:smoke",
            f"--config.data.data_dir={data_dir}",
            "--steps=2",
            "--warmup=1",
            "--repeats=2",
            "--json",
            *flags,
        )
    return stdout, json.loads(stdout.strip().splitlines()[-1]), dtypes


@pytest.fixture(scope="module")
def plain(data_dir):
    """One benchmark of the smoke config as it is, with --input."""
    return _benchmark(data_dir, "--input")


def test_benchmark_cli_prints_its_numbers(plain):
    stdout, numbers, dtypes = plain
    for key in (
        "images_per_sec",
        "ms_per_step",
        "flops_per_step",
        "achieved_flops_per_sec",
        "gemm_ceiling_flops_per_sec",
        "peak_memory_bytes",
        "input_examples_per_sec",
    ):
        assert numbers[key] > 0, key
    assert numbers["devices"] == 4 and "images/s" in stdout
    assert numbers["steps_per_dispatch"] == 1 and dtypes == ["float32"]


def test_benchmark_steps_per_dispatch_reports_per_step_numbers(plain, data_dir):
    _, one, _ = plain
    _, three, _ = _benchmark(data_dir, "--config.train.steps_per_dispatch=3")
    assert three["steps_per_dispatch"] == 3
    assert three["flops_per_step"] == one["flops_per_step"]
    assert three["images_per_sec"] > 0


def test_benchmark_ceiling_follows_the_compute_dtype(data_dir):
    stdout, numbers, dtypes = _benchmark(data_dir, "--config.model.dtype=bfloat16")
    assert numbers["gemm_ceiling_dtype"] == "bfloat16" and numbers["gemm_ceiling_flops_per_sec"] > 0
    assert "bfloat16 GEMM ceiling" in stdout and dtypes == ["bfloat16"]
