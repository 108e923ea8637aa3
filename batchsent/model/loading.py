"""Loading a model's tokenizer, config and weights: local folders and the Hub (offline misses end in one message
that says how to point --model at a folder), custom-code refusal, and the model's length limit."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchsent.errors import ModelLoadError, first_line
from batchsent.state.identity import hub_commit, hub_snapshot

if TYPE_CHECKING:
    pass


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_unreachable_reason() -> str | None:
    """Why the Hub cannot be reached, from one request with no retries (None: reachable).

    The Hub client retries a failed connection for about half a minute per file; asking
    once first turns an offline cache miss into an immediate, clear error.
    """
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=10)
    except Exception as error:
        return f"cannot reach {constants.ENDPOINT}: {first_line(error)}"
    return None


def _not_downloadable(model: str, reason: str) -> ModelLoadError:
    return ModelLoadError(
        f"model '{model}' is not in the local Hugging Face cache and could not be downloaded ({reason}); "
        "pass --model PATH with a directory saved by save_pretrained, or download it once while online"
    )


CUSTOM_CODE_FILES = ("config.json", "tokenizer_config.json")


def custom_code(source: str, revision: str | None = None, local_only: bool = True) -> list[str]:
    """The ``auto_map`` entries of a model's config.json and tokenizer_config.json: code that loading it
    as its author meant would run (``AutoConfig -> configuration_x.XConfig``...). Empty for a plain model."""
    from transformers.utils import cached_file

    entries = []
    for name in CUSTOM_CODE_FILES:
        try:
            path = cached_file(
                source,
                name,
                revision=revision or "main",
                local_files_only=local_only,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except Exception:
            path = None
        if path is None:
            continue
        try:
            auto_map = json.loads(Path(path).read_text(encoding="utf-8")).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):
            continue  # an unreadable config: the load itself reports it
        for key, value in auto_map.items() if isinstance(auto_map, dict) else ():
            target = value if isinstance(value, str) else ", ".join(str(v) for v in value or () if v)
            entries.append(f"{key} -> {target}")
    return entries


def check_custom_code(source: str, revision: str | None, local_only: bool, trust_remote_code: bool) -> None:
    """Refuse a model that brings its own code unless the user allowed it (transformers would ask on stdin)."""
    if trust_remote_code:
        return
    entries = custom_code(source, revision, local_only)
    if entries:
        raise ModelLoadError(
            f"model '{source}' brings its own code (auto_map: {', '.join(entries[:3])}); batchsent runs no code from a "
            "model unless you pass --trust-remote-code (trust-remote-code = true in a job file)"
        )


@dataclass
class Pretrained:
    """A model's tokenizer and config, loaded; its weights load later (``load_model``), or never when
    every row of a run comes from the cache. ``local_only``: where the tokenizer and config were found."""

    source: str
    revision: str | None
    local_only: bool
    trust_remote_code: bool
    tokenizer: Any
    config: Any
    commit: str | None = None  # a Hub model: the commit its tokenizer and config came from, which its weights load from

    def load_model(self) -> Any:
        """The sequence-classification model with these weights (refused without a trained head)."""
        from transformers import AutoModelForSequenceClassification

        if getattr(self.config, "use_cache", False):  # one forward pass per batch: a key/value cache is only memory
            self.config.use_cache = False  # (and breaks ONNX export)
        options = {
            "revision": self.commit or self.revision or "main",
            "trust_remote_code": self.trust_remote_code,
            "config": self.config,
            "output_loading_info": True,
        }
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                self.source, local_files_only=self.local_only, **options
            )
        except Exception as error:
            raise ModelLoadError(f"cannot load the weights of model '{self.source}': {first_line(error)}") from error
        missing = [key for key in info.get("missing_keys", ()) if key]
        if missing:
            raise ModelLoadError(
                f"model '{self.source}' has no trained classification head (missing weights: "
                f"{', '.join(sorted(missing)[:3])}); batchsent needs a fine-tuned sequence-classification model"
            )
        return model


# Files a tokenizer's vocabulary comes from; a folder with none of them gets a tokenizer of special tokens only
# from transformers, which maps every word to [UNK] and scores garbage.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "bpe.codes")


def _from_pretrained(
    source: str, revision: str | None, local_only: bool, trust_remote_code: bool = False
) -> Pretrained:
    """Tokenizer and config of a folder, or of one commit of a Hub model (its weights later load from that commit)."""
    from transformers import AutoConfig, AutoTokenizer

    local = Path(source).is_dir()
    commit = None if local else hub_commit(source, revision)
    pinned = commit or revision or "main"
    check_custom_code(source, pinned, local_only, trust_remote_code)
    options = {"revision": pinned, "local_files_only": local_only, "trust_remote_code": trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(source, **options)
    config = AutoConfig.from_pretrained(source, **options)
    if not local and commit is None:  # downloaded just now: the commit it came from is in the cache now
        commit = hub_commit(source, revision)
    _check_tokenizer(source, Path(source) if local else hub_snapshot(source, commit or revision), tokenizer)
    return Pretrained(source, revision, local_only, trust_remote_code, tokenizer, config, commit)


def _check_tokenizer(source: str, folder: Path | None, tokenizer: Any) -> None:
    """Refuse a model whose tokenizer has no vocabulary files (transformers would make up an empty one)."""
    files = [] if folder is None else [entry.name for entry in folder.iterdir() if entry.is_file()]
    has_files = folder is None or any(name in TOKENIZER_FILES or name.endswith(".model") for name in files)
    if not has_files or len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise ModelLoadError(
            f"model '{source}' has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])} or a "
            "SentencePiece .model file beside its config.json); save its tokenizer into the model "
            "folder with tokenizer.save_pretrained(folder)"
        )


def load_pretrained(model: str, revision: str | None = None, trust_remote_code: bool = False) -> Pretrained:
    """The tokenizer and config of a local directory, a cached model, or a Hub model (its weights load later).

    The local cache is tried first so a cached model loads with no network traffic;
    the Hub is asked only on a cache miss and when HF_HUB_OFFLINE is not set. A model
    whose config maps its classes to its own code is refused unless ``trust_remote_code``;
    transformers is always told the answer, so it never asks on stdin.
    """
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"--model {model}: is a file; expected a model directory or a Hub id")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"--model {model}: the directory holds no model (no config.json)")
        try:
            return _from_pretrained(str(path), None, local_only=True, trust_remote_code=trust_remote_code)
        except ModelLoadError:
            raise
        except Exception as error:
            raise ModelLoadError(f"cannot load the model in {model}: {first_line(error)}") from error
    if not HUB_ID.match(model):
        raise ModelLoadError(f"--model {model}: no such directory, and not a Hugging Face Hub id")
    try:
        return _from_pretrained(model, revision, local_only=True, trust_remote_code=trust_remote_code)
    except ModelLoadError:
        raise
    except Exception as cache_miss:
        if _offline():
            raise _not_downloadable(model, "HF_HUB_OFFLINE is set") from cache_miss
        unreachable = _hub_unreachable_reason()
        if unreachable:
            raise _not_downloadable(model, unreachable) from cache_miss
    try:
        return _from_pretrained(model, revision, local_only=False, trust_remote_code=trust_remote_code)
    except ModelLoadError:
        raise
    except Exception as error:
        raise _not_downloadable(model, first_line(error)) from error


# Embeddings that number positions from padding_idx + 1 (RoBERTa's scheme): that many fewer positions fit.
# (transformers' text classifiers whose embeddings have both a padding_idx and a position table; a model outside
# this list that has them is caught when its weights load, with the --max-length to pass.)
PADDING_OFFSET_MODELS = frozenset(
    {
        "roberta",
        "xlm-roberta",
        "xlm-roberta-xl",
        "camembert",
        "longformer",
        "roberta-prelayernorm",
        "data2vec-text",
        "xmod",
        "luke",
        "mpnet",
        "lilt",
        "markuplm",
    }
)


def model_length_limit(tokenizer: Any, config: Any) -> int:
    """The most tokens a row may have: the tokenizer's limit, else the model's positions, less RoBERTa-style
    embeddings' offset (known from the config, so it holds before the weights load)."""
    limit = getattr(tokenizer, "model_max_length", None)
    positions = getattr(config, "max_position_embeddings", None)
    if limit is None or limit > 1_000_000:  # transformers' "no limit set" sentinel
        limit = positions or 512
    padding = getattr(config, "pad_token_id", None)
    if config.model_type in PADDING_OFFSET_MODELS and isinstance(padding, int) and positions:
        limit = min(limit, positions - padding - 1)
    return int(limit)


def position_capacity(model: Any) -> int | None:
    """How many positions a loaded model's embeddings hold for one row (None: no such limit to read)."""
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    positions = getattr(embeddings, "position_embeddings", None)
    if positions is None or not hasattr(positions, "num_embeddings"):
        return None
    padding_idx = getattr(embeddings, "padding_idx", None)
    return positions.num_embeddings - (padding_idx + 1 if isinstance(padding_idx, int) else 0)
