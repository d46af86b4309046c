"""Speed of a family's real train step (and optionally of its input pipeline).

  python -m mmgen_jax.benchmark --config=configs/gan.py:dcgan32 --steps=30 --warmup=5
  python -m mmgen_jax.benchmark --config=configs/gan.py --input --json

The step is the one training runs -- `parallel.data_parallel(family.train_step)` over all
devices, a CPU host split into devices as `main` splits it (--cpu_devices) -- fed with
synthetic batches of the configured shapes held on device, so the numbers measure compute
only. Prints images/s and ms/step (median and spread over
`--repeats` timed windows), FLOPs per step from XLA's cost analysis, the achieved FLOP/s
and its share of a GEMM ceiling measured in the same process (in the config's compute
dtype, `model.dtype`, summed over accelerators), and peak memory.
With --json the last line is one JSON object. No TensorFlow is imported.
"""

import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from mmgen_jax import app, families, parallel

FLAGS = app.flag_values()
app.define_config(FLAGS)
flags.DEFINE_integer("steps", 30, "Steps per timed window.", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 5, "Untimed steps after compilation.", flag_values=FLAGS)
flags.DEFINE_integer(
    "repeats", 3, "Timed windows; the median and spread are reported.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "input", False, "Also measure the real input pipeline's examples/s.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "json", False, "Print the results as one JSON object on the last line.", flag_values=FLAGS
)

POOL = 4  # distinct synthetic batches cycled through, as the peer benchmark does


def time_windows(run, steps, repeats):
    """Seconds per call of `run` (which must block) in each of `repeats` windows."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            run(i)
        out.append((time.perf_counter() - start) / steps)
    return out


def gemm_ceiling(dtype="float32", n=2048, repeats=5):
    """n x n matrix product FLOP/s in `dtype` on the default device (median of repeats)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype))
    matmul = jax.jit(jnp.dot)
    matmul(a, a).block_until_ready()
    seconds = time_windows(lambda _: matmul(a, a).block_until_ready(), 3, repeats)
    return 2 * n**3 / float(np.median(seconds))


def step_flops(compiled):
    """FLOPs of one call of a compiled program, from XLA's cost analysis (all devices)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    # An SPMD program is analysed per device.
    return float(cost.get("flops", float("nan"))) * jax.device_count()


def peak_memory_bytes():
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # CPU: the process


def input_examples_per_sec(config, batches=50):
    from mmgen_jax.data import pipeline, prepare  # only when asked: it reads the dataset

    d = config.data
    stream = pipeline.TrainStream(
        name=d.name,
        data_dir=d.data_dir or prepare.default_data_dir(),
        split=d.train_split,
        image_size=d.image_size,
        max_text_len=d.max_text_len,
        global_batch_size=config.train.batch_size,
        seed=config.seed,
        num_threads=d.num_threads,
        prefetch=d.prefetch,
        builder_kwargs=pipeline.builder_kwargs(d),
        tokenizer_name=d.get("tokenizer", "bytes"),
    )
    next(stream)  # start-up (threads, file handles) is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * config.train.batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    config = FLAGS.config
    app.start(FLAGS, config=config)  # the devices and XLA flags `main` would train on
    family = families.get(config.model.family)(config)
    mesh = parallel.make_mesh()
    batch_size = config.train.batch_size
    k = config.train.steps_per_dispatch  # steps per call; every number below is per step
    batches = [family.example_batch(batch_size, i) for i in range(POOL * k)]
    if k > 1:
        batches = list(parallel.Grouped(iter(batches), k))
    batches = [parallel.global_batch(family.device_batch(b), mesh, stacked=k > 1) for b in batches]
    state = jax.jit(family.init, out_shardings=parallel.replicated(mesh))(
        jax.random.PRNGKey(config.seed)
    )
    step = parallel.data_parallel(family.train_step, mesh, steps_per_dispatch=k)

    t0 = time.perf_counter()
    compiled = step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    if k > 1:  # XLA's cost analysis counts a loop body once: count one plain step
        single = parallel.data_parallel(family.train_step, mesh)
        one_batch = parallel.global_batch(
            family.device_batch(family.example_batch(batch_size, 0)), mesh
        )
        flops = step_flops(single.lower(state, one_batch).compile())
    else:
        flops = step_flops(compiled)

    def run(i):
        nonlocal state
        state, metrics = compiled(state, batches[i % POOL])
        jax.block_until_ready(metrics)

    for i in range(max(1, FLAGS.warmup // k)):
        run(i)
    calls = max(1, FLAGS.steps // k)
    seconds = [s / k for s in time_windows(run, calls, FLAGS.repeats)]
    # The ceiling of the step's compute dtype, for all devices: CPU devices share the
    # host's cores (one device's product already uses them all), accelerators add up.
    dtype = config.model.get("dtype", "float32")
    ceiling = gemm_ceiling(dtype) * (1 if jax.default_backend() == "cpu" else jax.device_count())
    median = float(np.median(seconds))
    result = {
        "config": config.model.family,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "batch_size": batch_size,
        "steps_per_dispatch": k,
        "images_per_sec": batch_size / median,
        "ms_per_step": 1e3 * median,
        "ms_per_step_min": 1e3 * min(seconds),
        "ms_per_step_max": 1e3 * max(seconds),
        "flops_per_step": flops,
        "achieved_flops_per_sec": flops / median,
        "gemm_ceiling_flops_per_sec": ceiling,
        "gemm_ceiling_dtype": dtype,
        "share_of_gemm_ceiling": flops / median / ceiling,
        "peak_memory_bytes": peak_memory_bytes(),
        "compile_s": compile_s,
    }
    if FLAGS.input:
        result["input_examples_per_sec"] = input_examples_per_sec(config)
        result["input_to_step_ratio"] = result["input_examples_per_sec"] / result["images_per_sec"]

    print(
        f"{result['backend']} x{result['devices']}, batch {batch_size}: "
        f"{result['images_per_sec']:.1f} images/s, {result['ms_per_step']:.1f} ms/step "
        f"(min {result['ms_per_step_min']:.1f}, max {result['ms_per_step_max']:.1f}, "
        f"{FLAGS.repeats} x {calls * k} steps, {k} per dispatch)"
    )
    print(
        f"{flops / 1e9:.2f} GFLOP/step, {result['achieved_flops_per_sec'] / 1e9:.1f} GFLOP/s "
        f"= {100 * result['share_of_gemm_ceiling']:.0f}% of the measured {dtype} GEMM ceiling "
        f"({ceiling / 1e9:.0f} GFLOP/s); "
        f"peak memory {result['peak_memory_bytes'] / 2**20:.0f} MiB; "
        f"compile {compile_s:.1f} s"
    )
    if FLAGS.input:
        print(
            f"input pipeline: {result['input_examples_per_sec']:.0f} examples/s "
            f"= {result['input_to_step_ratio']:.1f}x what the step consumes"
        )
    if FLAGS.json:
        print(json.dumps(result))


if __name__ == "__main__":
    app.run(main, FLAGS)
