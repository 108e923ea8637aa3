"""What a Classifier takes from a model's tokenizer and config, kept so that later runs start without transformers.

Importing transformers' tokenizer and config classes takes about 0.95 s on a 2-core Xeon, on top of torch: a
third of a 10-row run whose model runs as a kept trace (``runtime/graphs.py``) or a cached ONNX export, which
need nothing else from transformers. Everything a Classifier reads from the tokenizer and config before the
weights (the tokenizer.json content as transformers sets it up, the special tokens and padding, the labels,
activation, length limit, and the widths that bound a batch) is one ``ModelSetup``. The first run of a model on a
machine builds it from the loaded tokenizer and config and keeps it as JSON; later runs read it back. The
Classifier reads only the ``ModelSetup``, built now or read back, so both give the same tokens and results.

A setup is found by what the model's files are (a folder's files by content, a Hub model's cached commit) and
the transformers and tokenizers versions, so a changed model or an upgrade builds it again. A model that brings
its own code (``auto_map``) is never kept: its tokenizer class may do more than its tokenizer.json says. Where
setups are kept and how long: ``state/kept.py``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from batchsent.errors import ModelLoadError
from batchsent.model.loading import HUB_ID, Pretrained, custom_code, load_pretrained, model_length_limit
from batchsent.model.postprocess import activation_for
from batchsent.runtime.device import model_widths
from batchsent.state.identity import hub_commit, model_identity, package_version
from batchsent.state.kept import read_setup, write_setup

SETUP_FORMAT = 1  # bump when what a setup holds or how it is derived changes: older setups are then not found


@dataclass(frozen=True)
class ModelSetup:
    """A model's tokenizer and config as a Classifier uses them, before (and without) its weights."""

    identity: dict[str, Any]  # what the model's results depend on (state.identity.model_identity)
    commit: str | None  # a Hub model: the commit it loads from
    tokenizer_json: str  # the fast tokenizer's backend, as transformers set it up (special tokens, post-processor)
    encode_special_tokens: bool  # left out of tokenizer.json (a tokenizer config's split_special_tokens)
    input_names: tuple[str, ...]
    pad_token_id: int | None
    pad_token_type_id: int
    truncation_side: str
    length_limit: int  # model.loading.model_length_limit
    special_tokens: tuple[int, int]  # special tokens added to one sequence, and to a pair
    labels: tuple[str, ...]  # id2label, in id order
    label2id: tuple[tuple[str, int], ...]  # in the config's order (zero-shot finds its entailment class here)
    activation: str  # model.postprocess.activation_for
    eos_id: int | None  # an encoder-decoder head's </s> id (rows batch by their count of it), else None
    model_type: str | None
    custom_code: tuple[str, ...]  # the auto_map entries of its config and tokenizer config: code of its own
    widths: tuple[int, int, int] | None  # runtime.device.model_widths: hidden, heads, feed-forward

    @classmethod
    def of(cls, model: str, pretrained: Pretrained) -> ModelSetup:
        """The setup of a tokenizer and config transformers loaded (refused without a fast tokenizer)."""
        tokenizer, config = pretrained.tokenizer, pretrained.config
        if not getattr(tokenizer, "is_fast", False):
            raise ModelLoadError(f"model '{model}' has no fast tokenizer (tokenizer.json); batchsent needs one")
        eos = getattr(config, "eos_token_id", None)
        backend = tokenizer.backend_tokenizer
        return cls(
            identity=model_identity(model, config, pretrained.commit),
            commit=pretrained.commit,
            tokenizer_json=backend.to_str(),
            encode_special_tokens=bool(backend.encode_special_tokens),
            input_names=tuple(tokenizer.model_input_names),
            pad_token_id=tokenizer.pad_token_id,
            pad_token_type_id=getattr(tokenizer, "pad_token_type_id", 0) or 0,
            truncation_side=tokenizer.truncation_side,
            length_limit=model_length_limit(tokenizer, config),
            special_tokens=(
                tokenizer.num_special_tokens_to_add(pair=False),
                tokenizer.num_special_tokens_to_add(pair=True),
            ),
            labels=config_labels(config),
            label2id=tuple((str(label), int(index)) for label, index in config.label2id.items()),
            activation=activation_for(config),
            eos_id=eos if getattr(config, "is_encoder_decoder", False) and isinstance(eos, int) else None,
            model_type=getattr(config, "model_type", None),
            custom_code=tuple(
                custom_code(pretrained.source, pretrained.commit or pretrained.revision, pretrained.local_only)
            ),
            widths=model_widths(config),
        )

    def tokenizer(self) -> Any:
        """A new ``tokenizers.Tokenizer`` of this setup (each call another copy, whose state the caller owns)."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(self.tokenizer_json)
        tokenizer.encode_special_tokens = self.encode_special_tokens
        return tokenizer

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSetup:
        data = json.loads(text)
        tuples = ("input_names", "special_tokens", "labels", "widths", "custom_code")
        for name in tuples:
            data[name] = tuple(data[name]) if data[name] is not None else None
        data["label2id"] = tuple((str(label), int(index)) for label, index in data["label2id"])
        return cls(**data)


def config_labels(config: Any) -> tuple[str, ...]:
    """A transformers config's class names in id order: the labels a run writes and names --all-scores columns by."""
    return tuple(str(config.id2label[i]) for i in range(config.num_labels))


def _setup_key(source: dict[str, Any]) -> str:
    facts = {
        "format": SETUP_FORMAT,
        "model": source,
        "transformers": package_version("transformers"),
        "tokenizers": package_version("tokenizers"),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def _source(model: str, revision: str | None) -> dict[str, Any] | None:
    """What the model's files are, found without transformers: a folder's files by content, or a cached Hub model's
    commit (None: not a model folder, or a Hub model not cached, which only transformers can load or report)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return model_identity(model, None) if (path / "config.json").is_file() else None
    if not HUB_ID.match(model):
        return None
    commit = hub_commit(model, revision)
    return {"hub_id": model, "revision": commit} if commit is not None else None


def _source_of(setup: ModelSetup) -> dict[str, Any]:
    """``_source`` of the model a setup was built from: its identity without the Hub config's digest."""
    return {key: value for key, value in setup.identity.items() if key != "config_sha256"}


def kept_setup(model: str, revision: str | None) -> ModelSetup | None:
    """The setup kept for this model's files, or None (none kept, or unreadable: the next build replaces it)."""
    source = _source(model, revision)
    text = read_setup(_setup_key(source)) if source is not None else None
    if text is None:
        return None
    try:
        setup = ModelSetup.from_json(text)
    except (ValueError, TypeError, KeyError):
        return None
    return setup if _source_of(setup) == source else None


def keep_setup(setup: ModelSetup) -> None:
    """Keep ``setup`` for later runs, unless the model brings code of its own."""
    if not setup.custom_code:
        write_setup(_setup_key(_source_of(setup)), setup.to_json())


def load_setup(model: str, revision: str | None, trust_remote_code: bool) -> tuple[ModelSetup, Any, Pretrained | None]:
    """The model's setup, a ``tokenizers.Tokenizer`` of it (its tokenizer.json parsed once, here), and transformers'
    tokenizer and config: None when the setup was kept (transformers is then not imported), else loaded now to
    build the setup, which is kept. A kept setup whose tokenizer.json does not parse is built again."""
    kept = kept_setup(model, revision)
    if kept is not None:
        try:
            return kept, kept.tokenizer(), None
        except Exception:  # damaged in a way its JSON does not show
            pass
    pretrained = load_pretrained(model, revision, trust_remote_code)
    setup = ModelSetup.of(model, pretrained)
    keep_setup(setup)
    return setup, setup.tokenizer(), pretrained
