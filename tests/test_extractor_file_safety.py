"""An --extractor_file is code: one whose custom calls are not on the allow-list (native code
of its own: host callbacks, kernels, LAPACK) is refused before it runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmgen_jax.evaluation import extractors, settings


def _export(tmp_path, fn, shape="b, 8, 8, 3", **kwargs):
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(shape), jnp.float32)
    path = tmp_path / "f.bin"
    path.write_bytes(jax.export.export(jax.jit(fn), **kwargs)(spec).serialize())
    s = settings.defaults()
    s.extractor_file, s.batch_size = str(path), 4
    return s


def test_plain_jax_with_a_symbolic_batch_loads(tmp_path):
    s = _export(tmp_path, lambda x: jnp.mean(x, (1, 2)))  # its module holds shape_assertion
    extractor = extractors.get("inception_v3", s)
    assert "shape_assertion" in extractor.exported.mlir_module()
    feats, _ = extractor(np.zeros((3, 8, 8, 3), np.float32))
    assert feats.shape == (3, 3)


def test_lapack_custom_calls_are_refused(tmp_path):
    s = _export(tmp_path, lambda x: jnp.linalg.inv(x[0, :3, :3, 0] + 3 * jnp.eye(3)))
    with pytest.raises(ValueError, match=r"calls custom-call targets \['lapack_sgetrf_ffi'"):
        extractors.get("inception_v3", s)


def test_an_unknown_native_target_is_refused(tmp_path):
    # What a crafted file would carry: a call into whatever native function has that name.
    def native(x):
        out = jax.ShapeDtypeStruct(x.shape[:1], jnp.float32)
        return jax.ffi.ffi_call("my_native_target", out)(x)

    check = jax.export.DisabledSafetyCheck.custom_call("my_native_target")
    s = _export(tmp_path, native, shape="4, 8, 8, 3", disabled_checks=[check])
    with pytest.raises(ValueError, match=r"\['my_native_target'\], which run native code"):
        extractors.get("inception_v3", s)


@pytest.mark.parametrize(
    "line, target",
    [
        ("%0 = stablehlo.custom_call @tpu_custom_call(%arg0) : (f32) -> f32", "tpu_custom_call"),
        ('%0 = stablehlo.custom_call @"odd$name"(%arg0) : (f32) -> f32', "odd$name"),
        ('%0 = "stablehlo.custom_call"(%arg0) {call_target_name = "gen"} : (f32) -> f32', "gen"),
    ],
)
def test_every_form_of_custom_call_is_read(line, target):
    class Fake:
        def mlir_module(self):
            return f"func.func @main() {{\n  {line}\n}}"

    with pytest.raises(ValueError, match=rf"\['{__import__('re').escape(target)}'\]"):
        extractors._check_custom_calls(Fake(), "f.bin")
