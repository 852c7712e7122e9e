"""Type stubs of the extension module (built from crates/clip-adapter-py/src)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str
METHOD_OPTIONS: List[str]

PathLike = Union[str, "os.PathLike[str]"]
#: A path, a PIL image, or a uint8 (H, W, 3) RGB array.
ImageLike = Union[PathLike, np.ndarray, Any]
#: ``progress(stage, done, total)``; ``None``: tqdm bars where they can be seen; ``False``: none.
ProgressArg = Union[None, bool, Callable[[str, int, Optional[int]], Any]]
FloatMatrix = npt.ArrayLike
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

class ClipAdapterError(Exception):
    """Base class of every error clip-adapter raises."""

    #: The chain of causes, outermost first (the message is them joined by ": ").
    causes: List[str]

class InputError(ClipAdapterError):
    """A value given is not what clip-adapter expects (shapes, labels, options, files)."""

class ModelError(ClipAdapterError):
    """A model cannot be found, read or used (or is not the one a head or cache needs)."""

class CacheError(ClipAdapterError):
    """The feature cache lacks, or cannot read, the features asked for."""

class MethodError(ClipAdapterError):
    """A method failed to train or to score (e.g. its loss diverged)."""

class Clip:
    """A CLIP model: image and text towers, tokenizer and preprocessing."""

    @staticmethod
    def load(model: str, *, precision: str = "f32", progress: ProgressArg = None) -> Clip:
        """Finds and loads a model: a directory (transformers or open_clip layout), an OpenAI
        ``.pt`` file, ``openai:NAME`` or a hub id (downloaded into the Hugging Face cache unless
        HF_HUB_OFFLINE is set). ``precision="bf16"``: the towers' linear layers and convolutions
        multiply bfloat16-rounded operands with f32 sums (faster on CPUs with AVX512-BF16;
        embeddings 1e-3 to 1e-2 off the f32 ones)."""
    @property
    def precision(self) -> str:
        """``"f32"`` or ``"bf16"``."""
    @property
    def name(self) -> str:
        """The name it was loaded by."""
    @property
    def directory(self) -> Path:
        """The folder of its files."""
    @property
    def embed_dim(self) -> int: ...
    @property
    def image_size(self) -> int: ...
    @property
    def context_length(self) -> int: ...
    @property
    def logit_scale(self) -> float:
        """exp(logit_scale) of the checkpoint: what cosine similarities are multiplied by."""
    @property
    def fingerprint(self) -> str:
        """The content fingerprint the feature cache and saved heads record."""
    def encode_images(
        self,
        images: Sequence[ImageLike],
        *,
        batch_size: int = 32,
        pre_projection: bool = False,
        progress: ProgressArg = None,
    ) -> F32:
        """Projected, un-normalised image embeddings (N, E), the numbers of
        ``clip-adapter embed``; ``pre_projection``: the tower's output before its last
        projection (what a ProLIP head scores)."""
    def encode_texts(self, texts: Sequence[str]) -> F32:
        """Projected, un-normalised text embeddings (N, E)."""
    def tokenize(self, texts: Sequence[str], *, context_length: Optional[int] = None) -> I64:
        """Token ids (N, context_length) with the model's tokenizer."""
    def text_classifier(
        self, labels: Sequence[str], templates: Optional[Sequence[str]] = None
    ) -> F32:
        """The zero-shot classifier (K, E), unit rows (prompt ensembling over templates)."""
    def classify(
        self,
        images: Sequence[ImageLike],
        labels: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        *,
        batch_size: int = 32,
        logits: bool = False,
        progress: ProgressArg = None,
    ) -> F32:
        """Zero-shot probabilities (N, K) (``logits=True``: the logits), as
        ``clip-adapter classify``."""
    def image_projection(self) -> Tuple[F32, Optional[npt.NDArray[np.float32]]]:
        """The image tower's last projection: ``(weight (E, W), bias (E,) or None)``."""

def tokenize(
    texts: Sequence[str], *, model: Optional[str] = None, context_length: Optional[int] = None
) -> I64:
    """Token ids (N, L) as ``clip-adapter tokenize [--model M]`` (OpenAI's, 77 tokens, without
    a model)."""

class Dataset:
    """Images with labels and class names, in train, val and test splits."""

    @staticmethod
    def benchmark(name: str, root: PathLike, *, split: Optional[PathLike] = None) -> Dataset:
        """One of the 11 benchmarks (``benchmarks()``) under CoOp's data folder."""
    @staticmethod
    def folder(
        path: PathLike,
        *,
        split_seed: int = 1,
        train_fraction: float = 0.5,
        val_fraction: float = 0.2,
        name: Optional[str] = None,
    ) -> Dataset:
        """A folder with a sub-folder of images per class (optionally in train/val/test)."""
    @staticmethod
    def manifest(
        path: PathLike,
        *,
        split_seed: int = 1,
        train_fraction: float = 0.5,
        val_fraction: float = 0.2,
        name: Optional[str] = None,
    ) -> Dataset:
        """A CSV (path,label[,split]) or JSON list of images."""
    @staticmethod
    def split_file(
        path: PathLike, *, root: Optional[PathLike] = None, name: Optional[str] = None
    ) -> Dataset:
        """A split file (CoOp's split_zhou_*.json)."""
    @property
    def name(self) -> str: ...
    @property
    def classnames(self) -> List[str]: ...
    @property
    def templates(self) -> List[str]: ...
    @property
    def train(self) -> List[Tuple[Path, int]]: ...
    @property
    def val(self) -> List[Tuple[Path, int]]: ...
    @property
    def test(self) -> List[Tuple[Path, int]]: ...
    def few_shot(self, shots: int, seed: int = 1) -> Dict[str, List[Tuple[Path, int]]]:
        """CoOp's draw: ``{"train": K per class, "val": min(K, 4) per class}``."""
    def check(self, *, decode: bool = False, progress: ProgressArg = None) -> CheckReport:
        """Checks the dataset against the disk (``clip-adapter datasets``): images per split
        and class, missing files, classes without a training image, split sizes unlike the
        published ones; ``decode=True`` also decodes every image on disk (progress
        ``("decoding images", done, total)``). ``problems`` is 0 when it is ready."""
    def __len__(self) -> int: ...

class CheckReport:
    """A dataset's check (``Dataset.check``); ``to_dict()`` is ``clip-adapter datasets
    --json``'s report, ``str()`` its text."""

    @property
    def dataset(self) -> str: ...
    @property
    def classes(self) -> int: ...
    @property
    def image_root(self) -> Path: ...
    @property
    def splits(self) -> List[Dict[str, Any]]:
        """``[{"split", "listed", "published", "missing": [path, ...]}]``: train, val, test."""
    @property
    def per_class(self) -> List[Dict[str, Any]]:
        """``[{"label", "name", "train", "val", "test"}]``: images per class and split."""
    @property
    def decoded(self) -> bool:
        """Whether every image on disk was decoded (``decode=True``)."""
    @property
    def unreadable(self) -> List[Dict[str, str]]:
        """``[{"impath", "reason"}]``: images that do not decode."""
    @property
    def missing(self) -> int:
        """Listed images not on disk."""
    @property
    def listed(self) -> int: ...
    @property
    def problems(self) -> int:
        """Missing and unreadable files, classes without a training image, split sizes unlike
        the published ones; 0 when the dataset is ready."""
    def summary(self, verbose: bool = False) -> str:
        """The command line's text: the first 5 items of each problem, all with ``verbose``."""
    def to_dict(self) -> Dict[str, Any]: ...

def merge_lora(head: PathLike, out: PathLike, *, model: Optional[str] = None,
               progress: ProgressArg = None) -> str:
    """Folds a CLIP-LoRA head's updates into the model it was trained on (``clip-adapter merge
    --lora``): writes ``out``, a new folder in the model's own layout, and returns the path to
    load (``Clip.load(path)``)."""

def merge(cache: PathLike = "clip-adapter-cache") -> List[Dict[str, Any]]:
    """Joins the shards ``extract(..., shard="i/n")`` wrote under ``cache`` into complete
    feature files (``clip-adapter merge``); shards are kept. Returns ``[{"path", "shards",
    "rows"}]``, empty when there is no shard file."""

def pretrain(
    out: PathLike,
    *,
    force: bool = False,
    seed: int = 0,
    steps: int = 3000,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 200,
    resnet_layers: Optional[Sequence[int]] = None,
    resnet_width: int = 16,
    resnet_head_width: int = 64,
    patch_size: int = 8,
    vision_width: int = 64,
    vision_layers: int = 3,
    text_width: int = 64,
    text_layers: int = 2,
    heads: int = 4,
    embed_dim: int = 64,
    progress: ProgressArg = None,
) -> Dict[str, Any]:
    """Pretrains a small CLIP on the generated image-text world into ``out``
    (``clip-adapter pretrain``); ``Clip.load(out)`` reads it. ``resnet_layers`` (4 block
    counts) makes a ModifiedResNet image tower instead of the ViT. Returns ``pretrain.json``
    (``{"options", "seconds", "final_loss", "retrieval", "vocab_size", "parameters"}``) with
    ``"history"`` (``[{"step", "loss", "lr", "logit_scale"}]``) and ``"evals"``
    (``[{"step", "image_to_text", "text_to_image", "loss"}]``)."""

def benchmarks() -> List[str]:
    """The 11 benchmarks' names (``eurosat``, ...)."""

def extract(
    model: Union[str, Clip],
    dataset: Dataset,
    *,
    shots: Optional[int] = None,
    seed: int = 1,
    views: Optional[int] = None,
    crop_scale: Tuple[float, float] = (0.5, 1.0),
    templates: str = "custom",
    pre_projection: bool = False,
    cache: PathLike = "clip-adapter-cache",
    batch_size: int = 32,
    chunk_batches: int = 4,
    shard: Optional[str] = None,
    skip_bad: bool = False,
    precision: Optional[str] = None,
    progress: ProgressArg = None,
) -> Dict[str, Any]:
    """Encodes a dataset into the feature cache (``clip-adapter extract``); resumable.
    ``precision``: ``"f32"`` or ``"bf16"`` (default: a given Clip's, else f32); bfloat16
    features are cached under their own key. Returns ``{"text": path, "sets": [{"name", "path", "rows", "skipped", "reused", "encoded",
    "seconds"}]}``: ``encoded`` images decoded and encoded by this call in ``seconds`` of wall
    time."""

#: An array argument of ``import_features``: a numpy array (or anything ``numpy.asarray``
#: takes) or a file (``"FILE"``, ``"FILE#NAME"``, an ``os.PathLike``).
ArrayLike = Union[PathLike, npt.ArrayLike]

def import_features(
    dataset: str,
    classnames: Sequence[str],
    *,
    train: Tuple[ArrayLike, ArrayLike],
    test: Tuple[ArrayLike, ArrayLike],
    val: Optional[Tuple[ArrayLike, ArrayLike]] = None,
    shots: Optional[int] = None,
    seed: int = 1,
    text_features: Optional[ArrayLike] = None,
    logit_scale: float = 100.0,
    model: Optional[str] = None,
    templates: Sequence[str] = (),
    model_name: Optional[str] = None,
    fingerprint: Optional[str] = None,
    cache: PathLike = "clip-adapter-cache",
    progress: ProgressArg = None,
) -> Dict[str, Any]:
    """Writes features computed elsewhere into the feature cache (``clip-adapter import``).
    Each split is a ``(features, labels)`` pair of numpy arrays (``(N, D)`` floats, ``(N,)``
    integers) or files (``.npy``, ``.npz``, safetensors, a ``torch.save``d tensor;
    ``"FILE#NAME"`` for an array of a file of several); the class-name side is
    ``text_features`` (a ``(C, D)`` array or file) or ``model`` (encodes the class names).
    Arrays and files get the same checks and write the same files; nothing is written when a
    check fails. Returns ``{"dataset", "model", "model_name", "width", "text", "sets"}``."""

def tsne(
    dataset: str,
    shots: Union[int, str],
    seed: int,
    adapter: Optional[PathLike] = None,
    *,
    heads: Optional[Sequence[PathLike]] = None,
    labels: Optional[Sequence[str]] = None,
    split: str = "test",
    perplexity: float = 30.0,
    epochs: int = 1000,
    model: Optional[str] = None,
    cache: PathLike = "clip-adapter-cache",
    out: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """A cached split mapped with t-SNE (``clip-adapter tsne``): with ``adapter``, its features
    before and after a CLIP-Adapter head's visual adapter (``{"classnames", "labels",
    "options", "before", "after", "figure"}``); with ``heads`` (saved heads of any method on the
    cached features, CoOp's included), the class scores of zero-shot CLIP and of each head, one
    panel each titled by ``labels`` (``{"classnames", "labels", "options", "panels",
    "figure"}``). ``out`` writes ``out.svg`` and ``out.png``."""

class Head:
    """A trained head: class scores for image features."""

    def logits(self, features: FloatMatrix) -> F32:
        """Class logits (N, K); a C-contiguous float32 input is read in place."""
    def predict(self, features: FloatMatrix) -> I64:
        """The most probable class of each row."""
    def predict_proba(self, features: FloatMatrix) -> F32:
        """Class probabilities (N, K), the softmax of the logits."""
    def save(self, path: PathLike) -> None:
        """Writes the head as ``clip-adapter fit --save`` does (``predict --adapter`` reads it)."""
    @staticmethod
    def load(
        path: PathLike,
        *,
        model: Optional[str] = None,
        allow_model_mismatch: bool = False,
        progress: ProgressArg = None,
    ) -> Head:
        """Reads a head file; a CoOp head's prompts are encoded through ``model`` (default:
        the one it records)."""
    @property
    def method(self) -> str: ...
    @property
    def classnames(self) -> List[str]: ...
    @property
    def dim(self) -> int: ...
    @property
    def input(self) -> str:
        """``"projected"`` or ``"pre-projection"`` (ProLIP)."""
    @property
    def chosen(self) -> Dict[str, str]:
        """Hyper-parameters chosen on validation (or the defaults without it)."""
    @property
    def losses(self) -> List[float]: ...
    @property
    def val_accuracy(self) -> Optional[float]: ...
    @property
    def test_accuracy(self) -> Optional[float]: ...
    @property
    def info(self) -> Dict[str, Any]: ...
    @property
    def row(self) -> Optional[Dict[str, Any]]:
        """The results row of a ``fit_cached``."""

class Task:
    """A few-shot task read from the feature cache."""

    @property
    def classnames(self) -> List[str]: ...
    @property
    def train(self) -> Tuple[F32, I64]: ...
    @property
    def val(self) -> Tuple[F32, I64]: ...
    @property
    def test(self) -> Tuple[F32, I64]: ...
    @property
    def train_views(self) -> List[F32]: ...
    @property
    def text_features(self) -> F32: ...
    @property
    def text_mean(self) -> Optional[F32]: ...
    @property
    def logit_scale(self) -> float: ...
    @property
    def pre_projection(self) -> Optional[Dict[str, Any]]:
        """ProLIP's input: features before the projection, and the projection."""
    def fit_arguments(self) -> Dict[str, Any]:
        """The keyword arguments of ``fit`` that give it this task."""

def fit(
    method: str,
    features: FloatMatrix,
    labels: npt.ArrayLike,
    *,
    text_features: FloatMatrix,
    val_features: Optional[FloatMatrix] = None,
    val_labels: Optional[npt.ArrayLike] = None,
    test_features: Optional[FloatMatrix] = None,
    test_labels: Optional[npt.ArrayLike] = None,
    train_views: Optional[Sequence[FloatMatrix]] = None,
    text_mean: Optional[FloatMatrix] = None,
    pre_projection: Optional[Dict[str, Any]] = None,
    logit_scale: Optional[float] = None,
    classnames: Optional[Sequence[str]] = None,
    dataset: str = "",
    seed: int = 1,
    model: Union[None, str, Clip] = None,
    progress: ProgressArg = None,
    **options: Any,
) -> Head:
    """Trains ``method`` on features given as arrays. Options are keyword arguments
    (``METHOD_OPTIONS``); an unknown keyword is a TypeError."""

def fit_cached(
    method: str,
    dataset: str,
    shots: Union[int, str],
    seed: int = 1,
    *,
    cache: PathLike = "clip-adapter-cache",
    model: Optional[str] = None,
    validation: str = "val",
    save: Optional[PathLike] = None,
    progress: ProgressArg = None,
    **options: Any,
) -> Head:
    """Trains ``method`` on a draw of the feature cache (``clip-adapter fit``)."""

def load_cached_task(
    dataset: str,
    shots: Union[int, str],
    seed: int = 1,
    *,
    cache: PathLike = "clip-adapter-cache",
    model: Optional[str] = None,
) -> Task:
    """The task ``fit_cached`` trains on, as arrays."""

def methods() -> List[str]:
    """The registered methods, in the order of tables and figures."""

def method_options(method: str) -> List[str]:
    """The keyword options ``method`` takes."""

def run(
    methods: Sequence[str],
    datasets: Sequence[str],
    *,
    shots: Sequence[int] = ...,
    seeds: Sequence[int] = ...,
    cache: PathLike = "clip-adapter-cache",
    out: PathLike = "results",
    model: Optional[str] = None,
    reported: Optional[PathLike] = None,
    validation: str = "val",
    protocol: str = "few-shot",
    source: Optional[str] = None,
    shard: Optional[str] = None,
    progress: ProgressArg = None,
    **options: Any,
) -> Dict[str, Any]: ...
def merge_results(
    folder: PathLike,
    *,
    reported: Optional[PathLike] = None,
    progress: ProgressArg = None,
) -> Dict[str, Any]: ...
def sweep(
    over: str,
    datasets: Sequence[str],
    *,
    values: Sequence[Union[int, float, str]] = ...,
    shots: Sequence[int] = ...,
    seeds: Sequence[int] = ...,
    cache: PathLike = "clip-adapter-cache",
    out: PathLike = "results",
    model: Optional[str] = None,
    validation: str = "val",
    progress: ProgressArg = None,
    **options: Any,
) -> Dict[str, Any]: ...
def report(
    folder: PathLike, *, reported: Optional[PathLike] = None, progress: ProgressArg = None
) -> Dict[str, Any]: ...
def read_results(folder: PathLike) -> List[Dict[str, Any]]:
    """The rows of a results folder's results.csv."""
def demo(
    out: PathLike = "clip-adapter-demo",
    *,
    model: Optional[PathLike] = None,
    shots: Sequence[int] = ...,
    seeds: Sequence[int] = ...,
    tasks: Sequence[str] = ...,
    progress: ProgressArg = None,
) -> Dict[str, Any]:
    """The embedded demo (``clip-adapter demo``)."""
def set_threads(threads: int) -> None:
    """Worker threads for decoding and tensor math (``--threads``); before anything computes."""
