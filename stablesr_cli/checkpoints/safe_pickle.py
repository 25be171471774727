"""Read `torch.save` zip checkpoints (PyTorch-Lightning `.ckpt`) without running pickled code.

A `.ckpt` is a zip archive: `<root>/data.pkl` is a pickle of the checkpoint object whose tensors
point, through pickle "persistent ids", at raw storage records `<root>/data/<key>`. Unpickling
with the standard `pickle` module lets the file call any importable function, so this module uses
an allowlist unpickler (spandrel's approach): only tensor rebuilding, plain containers and the
storage dtype tokens are resolved; every other global is refused with `UnsafeCheckpointError`.

Storage records are uncompressed in every `torch.save` archive, so they are memory-mapped rather
than read: opening a multi-GB checkpoint costs almost nothing until a tensor's bytes are touched.
A compressed record is refused (a few MB could inflate to GBs), and so is every tensor that would
reach past its record or show more elements than the record holds: `Tensor.set_` would grow the
storage with uninitialised heap memory, and a zero stride turns a few bytes into GBs on copy.
"""

from __future__ import annotations

import io
import mmap
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UnsafeCheckpointError

# `torch.<Name>Storage` -> element dtype. The pickle names a storage class only to tell the dtype.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

# A tensor pickle may view a record several times (tied weights, views); beyond this many times the
# records' bytes plus some slack, the views only serve to multiply what a conversion writes.
_MAX_VIEW_FACTOR = 2
_VIEW_SLACK_BYTES = 1 << 20
# data.pkl holds only the structure (names, shapes, small scalars): about 1 MB for the released
# 6.5 GB checkpoints. It is read into memory, so a bigger one is refused rather than inflated.
_MAX_PICKLE_BYTES = 256 << 20

# Lightning keys its `callbacks` entry by the callback *class*; the class is only ever used as a dict
# key, so an inert stand-in is enough (and Lightning need not be installed).
_INERT_CLASSES = frozenset({"pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"})

def _empty_bytes(*args: Any) -> bytes:
    if args:  # bytes(n) would allocate n bytes; pickle only ever writes bytes()
        raise TypeError("bytes() takes no arguments here")
    return b""


def _plain_set(items: Any = ()) -> set:
    return set(items) if isinstance(items, (list, tuple)) else set()


def _plain_frozenset(items: Any = ()) -> frozenset:
    return frozenset(items) if isinstance(items, (list, tuple)) else frozenset()


_PLAIN_CONSTRUCTORS = {"bytes": _empty_bytes, "set": _plain_set, "frozenset": _plain_frozenset}

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header, 30 bytes
_LOCAL_MAGIC = b"PK\x03\x04"


class _StorageType:
    """What `torch.FloatStorage` & co. resolve to: a dtype token that cannot be called."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype

    def __reduce__(self):  # never pickled back out
        raise TypeError("storage tokens are not picklable")


class InertClass:
    """Stand-in for a class a checkpoint names but never instantiates (e.g. Lightning's ModelCheckpoint).

    Hashable and comparable by its dotted name, so it works as the dict key Lightning uses; calling
    it or restoring state into it is refused, because that is where a real class would run code.
    """

    __slots__ = ("qualname", "_source")

    def __init__(self, qualname: str, source: str) -> None:
        self.qualname = qualname
        self._source = source

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafeCheckpointError(
            f"{self._source}: refused to instantiate '{self.qualname}' while unpickling; "
            "only tensors and plain containers are loaded. Use a checkpoint from a trusted source "
            "or convert it with `stablesr weights convert` on a machine where it is trusted"
        )

    def __hash__(self) -> int:
        return hash(("InertClass", self.qualname))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InertClass) and other.qualname == self.qualname

    def __repr__(self) -> str:
        return f"<class {self.qualname} (not loaded)>"


class _ArchiveStorages:
    """The storage records of one zip checkpoint, memory-mapped on first use."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, root: str) -> None:
        self._path = path
        self._archive = archive
        self._root = root
        self._map: mmap.mmap | None = None
        self._cache: dict[str, torch.UntypedStorage] = {}

    def _mapping(self) -> mmap.mmap:
        if self._map is None:
            with open(self._path, "rb") as fh:
                # ACCESS_COPY: private copy-on-write pages, so tensors are writable and the file is
                # never modified; the mapping stays alive as long as any tensor references it.
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._map

    def storage(self, key: str, nbytes: int) -> torch.UntypedStorage:
        if key in self._cache:
            return self._cache[key]
        name = f"{self._root}data/{key}"
        try:
            info = self._archive.getinfo(name)
        except KeyError:
            raise CheckpointError(f"{self._path}: storage record '{name}' is missing; the file is damaged") from None
        if info.file_size != nbytes:
            raise CheckpointError(
                f"{self._path}: storage record '{name}' holds {info.file_size} bytes, the pickle expects "
                f"{nbytes}; the file is damaged"
            )
        if info.compress_type != zipfile.ZIP_STORED:
            # torch.save never compresses records; a compressed one could inflate a small file into
            # GBs of memory, so it is not read at all
            raise CheckpointError(
                f"{self._path}: storage record '{name}' is compressed, which torch.save never writes; "
                "re-save the checkpoint with torch.save on a machine where you trust it"
            )
        if nbytes:
            mapping = self._mapping()
            start = self._data_offset(info, len(mapping))
            raw = torch.frombuffer(mapping, dtype=torch.uint8, count=nbytes, offset=start)
        else:
            raw = torch.empty(0, dtype=torch.uint8)
        storage = raw.untyped_storage()
        self._cache[key] = storage
        return storage

    def release_pages(self) -> None:
        """Drop the pages read so far from this process's memory; a later read maps them again from
        the file (the page cache). Only for tensors nobody wrote to: a written copy-on-write page
        would fall back to the file's bytes."""
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)

    def _data_offset(self, info: zipfile.ZipInfo, file_len: int) -> int:
        mapping = self._mapping()
        header = bytes(mapping[info.header_offset: info.header_offset + _LOCAL_HEADER.size])
        if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_MAGIC:
            raise CheckpointError(f"{self._path}: zip entry '{info.filename}' has no valid header; the file is damaged")
        fields = _LOCAL_HEADER.unpack(header)
        name_len, extra_len = fields[-2], fields[-1]
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if start + info.file_size > file_len:
            raise CheckpointError(f"{self._path}: zip entry '{info.filename}' runs past the end of the file; it is truncated")
        return start


class _RestrictedUnpickler(pickle._Unpickler):  # the Python implementation: the C one has no BUILD hook
    """Resolves only the globals a tensor checkpoint needs; anything else is refused.

    Allowed: tensor and parameter rebuilding (our own implementations, bounds-checked), the storage
    dtype tokens, OrderedDict, and the bytes/set spellings of pickle protocol 2. The BUILD opcode
    (restore an object's state) is allowed only to set attributes of an OrderedDict, which is how a
    module's `state_dict()._metadata` travels; on a tensor it would call `Tensor.__setstate__`,
    i.e. `set_` with any geometry, so it is refused there and everywhere else.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: Any, path: Path, storages: _ArchiveStorages) -> None:
        super().__init__(data)
        self._path = path
        self._storages = storages
        self._viewed_bytes = 0
        self._record_keys: set[str] = set()
        self._stored_bytes = 0

    def _load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if type(target) is OrderedDict and isinstance(state, dict) and all(isinstance(k, str) for k in state):
            target.__dict__.update(state)
            return
        what = "a tensor" if isinstance(target, torch.Tensor) else f"a {type(target).__name__}"
        raise UnsafeCheckpointError(
            f"{self._path}: refused to restore state into {what} (pickle BUILD), which torch.save never writes "
            "for a tensor checkpoint; do not use this file unless you trust its source"
        )

    dispatch[pickle.BUILD[0]] = _load_build

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return self._rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if qualname in _INERT_CLASSES:
            return InertClass(qualname, str(self._path))
        # pickle protocol 2 (torch.save's default) spells bytes as _codecs.encode(text, 'latin1')
        # and an empty bytes as bytes(); sets as set(list). Python 2 names arrive unmapped here.
        if module == "_codecs" and name == "encode":
            return self._latin1_bytes
        if module in ("builtins", "__builtin__") and name in _PLAIN_CONSTRUCTORS:
            return _PLAIN_CONSTRUCTORS[name]
        raise UnsafeCheckpointError(
            f"{self._path}: refused to load global '{qualname}': the checkpoint asks to run code "
            "(only tensors and plain containers are allowed); do not use this file unless you trust its source"
        )

    def _latin1_bytes(self, text: Any, encoding: Any = "utf-8") -> bytes:
        # only the one call pickle itself writes; any other codec lookup is refused
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise UnsafeCheckpointError(f"{self._path}: refused _codecs.encode with {type(text).__name__}/{encoding!r}")
        return text.encode("latin1")

    def persistent_load(self, pid: Any) -> torch.UntypedStorage:
        # torch.save writes ('storage', <torch.XStorage>, key, location, numel) for every storage
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._path}: unexpected persistent id {pid!r}; not a torch.save checkpoint")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise CheckpointError(f"{self._path}: malformed storage reference {pid!r}; the file is damaged")
        if numel < 0:
            raise CheckpointError(f"{self._path}: storage record '{key}' declares {numel} elements; the file is damaged")
        itemsize = torch.empty(0, dtype=storage_type.dtype).element_size()
        storage = self._storages.storage(key, numel * itemsize)
        if key not in self._record_keys:
            self._record_keys.add(key)
            self._stored_bytes += storage.nbytes()
        # the dtype travels with the storage so that _rebuild_tensor knows how to view the bytes
        return _TypedBytes(storage, storage_type.dtype, key)

    def _rebuild_tensor(
        self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
        backward_hooks: Any = None, metadata: Any = None,
    ) -> torch.Tensor:
        if not isinstance(storage, _TypedBytes):
            raise CheckpointError(f"{self._path}: a tensor does not point at a storage record; the file is damaged")
        if backward_hooks:
            raise UnsafeCheckpointError(f"{self._path}: refused a tensor with backward hooks (they would run code)")
        if not (_is_int_tuple(size) and _is_int_tuple(stride) and _is_count(offset) and len(size) == len(stride)):
            raise CheckpointError(f"{self._path}: malformed tensor geometry {size!r}/{stride!r}; the file is damaged")
        self._check_geometry(storage, offset, size, stride)
        tensor = torch.empty(0, dtype=storage.dtype)
        # the geometry is checked to lie inside the record, so set_ never needs to grow the storage
        tensor.set_(storage.storage, offset, torch.Size(size), stride)
        return tensor

    def _check_geometry(self, storage: "_TypedBytes", offset: int, size: tuple, stride: tuple) -> None:
        """Refuse a tensor that reaches past its record, repeats elements by a zero stride, or shows
        more elements than the record holds. `Tensor.set_` would grow a too-small storage with
        uninitialised memory (which a conversion then writes out), and a stride-0 view of a few
        bytes becomes GBs once copied."""
        itemsize = torch.empty(0, dtype=storage.dtype).element_size()
        record_elements = storage.storage.nbytes() // itemsize
        where = f"{self._path}: tensor {tuple(size)} on storage record '{storage.key}'"
        numel = 1
        for dim in size:
            numel *= dim
        if numel == 0:
            if offset > record_elements:
                raise CheckpointError(f"{where} starts at element {offset}, past the record's {record_elements}; the file is damaged")
            return
        if any(st == 0 and dim > 1 for dim, st in zip(size, stride)):
            raise CheckpointError(
                f"{where} repeats elements with stride {tuple(stride)}, which torch.save never writes; the file is crafted"
            )
        if numel > record_elements:
            raise CheckpointError(
                f"{where} has {numel} elements, more than the record's {record_elements}; the file is damaged or crafted"
            )
        end = offset + sum((dim - 1) * st for dim, st in zip(size, stride)) + 1
        if end > record_elements:
            raise CheckpointError(
                f"{where} reaches element {end}, past the record's {record_elements} "
                f"({record_elements * itemsize} bytes); the file is damaged or crafted"
            )
        self._viewed_bytes += numel * itemsize
        if self._viewed_bytes > _MAX_VIEW_FACTOR * self._stored_bytes + _VIEW_SLACK_BYTES:
            raise CheckpointError(
                f"{self._path}: its tensors view {self._viewed_bytes} bytes of {self._stored_bytes} stored "
                f"(storage record '{storage.key}' and others viewed many times); the file is crafted"
            )

    def _rebuild_parameter(self, data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> torch.Tensor:
        # state dicts only need the values; a plain tensor also keeps safetensors happy
        if not isinstance(data, torch.Tensor):
            raise CheckpointError(f"{self._path}: a parameter without tensor data; the file is damaged")
        if backward_hooks:
            raise UnsafeCheckpointError(f"{self._path}: refused a parameter with backward hooks (they would run code)")
        return data


class _TypedBytes:
    """A storage record plus the dtype the pickle declared for it and the record's key."""

    __slots__ = ("storage", "dtype", "key")

    def __init__(self, storage: torch.UntypedStorage, dtype: torch.dtype, key: str) -> None:
        self.storage = storage
        self.dtype = dtype
        self.key = key


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(type(v) is int and v >= 0 for v in value)


def _find_root(path: Path, archive: zipfile.ZipFile) -> str:
    """The folder inside the archive that holds data.pkl (named after the file by old torch, 'archive/' by new)."""
    for name in archive.namelist():
        if name.endswith("data.pkl") and name.count("/") == 1:
            return name[: -len("data.pkl")]
    raise CheckpointError(f"{path}: zip archive without a data.pkl; not a torch checkpoint")


def load_zip_checkpoint(path: str | Path) -> Any:
    """The object stored in a zip-format `torch.save` file, with tensors memory-mapped from it.

    Only tensors, parameters (returned as plain tensors), OrderedDicts and pickle's own containers
    and scalars are rebuilt; a Lightning ModelCheckpoint class reference becomes an `InertClass`.
    Raises UnsafeCheckpointError for any other global and CheckpointError for damaged files.
    """
    return load_zip_checkpoint_mapped(path)[0]


def load_zip_checkpoint_mapped(path: str | Path) -> tuple[Any, Callable[[], None]]:
    """`load_zip_checkpoint` plus a function that drops the file pages read so far from memory, so
    a reader going through GBs of records (a conversion) keeps only what it is working on resident."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc}); the file may be truncated") from None
    with archive:
        root = _find_root(path, archive)
        byteorder_name = f"{root}byteorder"
        if byteorder_name in archive.namelist():
            order_info = archive.getinfo(byteorder_name)
            order = archive.read(order_info).decode("ascii", "replace").strip() if order_info.file_size <= 16 else "?"
            if order != "little":
                raise CheckpointError(f"{path}: stored as {order}-endian tensors, which this loader does not read")
        pickle_info = archive.getinfo(f"{root}data.pkl")
        if pickle_info.file_size > _MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"{path}: data.pkl declares {pickle_info.file_size} bytes, far more than any model checkpoint's "
                "structure needs; the file is damaged or crafted"
            )
        try:
            pickled = archive.read(pickle_info)
        except (zipfile.BadZipFile, OSError) as exc:
            raise CheckpointError(f"{path}: cannot read data.pkl ({exc}); the file is damaged") from None
        storages = _ArchiveStorages(path, archive, root)
        unpickler = _RestrictedUnpickler(io.BytesIO(pickled), path, storages)
        try:
            return unpickler.load(), storages.release_pages
        except (UnsafeCheckpointError, CheckpointError):
            raise
        except Exception as exc:  # any malformed pickle: opcode errors, bad REDUCE calls, EOF ...
            raise CheckpointError(f"{path}: the checkpoint's pickle is damaged or unsupported ({type(exc).__name__}: {exc})") from None
