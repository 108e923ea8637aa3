"""Classifier: loads a Hugging Face sequence-classification model once and scores texts.

Work is split in two steps so a caller can overlap them: ``encode`` (tokenize a chunk
once, plan length-sorted batches; no torch) and ``run`` (the forward passes). The
class has the shape of a Ray Data callable class: ``__init__`` loads, ``predict``
takes a batch of texts.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from batchsent.errors import Interrupted, ModelLoadError, UsageError
from batchsent.model.batching import plan_batches, window_spans
from batchsent.model.encoding import (
    CUT_CHARS_PER_TOKEN,
    CUT_MARGIN_TOKENS,
    EncodedChunk,
    copied_tokenizer,
    cut_at_space,
    first_occurrences,
    is_blank,
)
from batchsent.model.loading import Pretrained, load_pretrained, position_capacity
from batchsent.model.postprocess import SOFTMAX, activate, aggregate_windows
from batchsent.model.setup import ModelSetup, load_setup
from batchsent.runtime.backends import OnnxRunner, TorchRunner, check_backend_options, device_refusal, onnx_model
from batchsent.runtime.cpu import this_cpu
from batchsent.runtime.device import (
    batch_limits,
    check_batch_options,
    check_dtype_supported,
    resolve_device,
    resolve_dtype,
)
from batchsent.runtime.graphs import GraphRunner, graph_key, load_graph, trace_graph, traceable
from batchsent.runtime.precision import resolve_precision
from batchsent.settings.options import DEFAULT_MODEL, ModelOptions
from batchsent.state.identity import model_identity

if TYPE_CHECKING:
    from batchsent.runtime.tuning import Tuning


# A long row (truncated at --max-length) for checking an ONNX export beyond the traced shapes: sliding windows
# (Longformer), relative positions and local attention only show past a few dozen tokens.
EXPORT_CHECK_TEXT = " ".join(["the film was long, and the plot went on and on"] * 40)


@dataclass
class Scores:
    """Per-row results: probabilities (NaN rows where the text was blank).

    ``truncated`` marks rows longer than the model's limit; in chunk mode they were
    scored in ``windows`` windows instead of being cut (``windows`` is None otherwise).
    """

    probabilities: np.ndarray
    truncated: np.ndarray
    blank: np.ndarray
    windows: np.ndarray | None = None


class Classifier:
    """A sequence-classification model ready to score texts.

    ``predict(texts)`` returns probabilities as the transformers text-classification
    pipeline computes them (softmax, or sigmoid for one-label and multi-label models),
    with truncation at ``max_length`` (default: the model's limit). With
    ``long_text="chunk"``, a longer text is scored in windows of ``max_length`` tokens
    overlapping by ``stride`` and its windows' probabilities are aggregated
    (``mean``, ``max`` or ``first``).
    """

    setup: ModelSetup  # the tokenizer and config as this class reads them (model.setup)
    _pretrained: Pretrained | None  # transformers' tokenizer and config, once loaded (``pretrained``)
    identity: dict[str, Any]
    max_length: int

    def __init__(
        self,
        model: str | ModelOptions = DEFAULT_MODEL,
        *,
        weights: bool = True,
        notes: Callable[[str], None] | None = None,
        **options: Any,
    ) -> None:
        """``Classifier(ModelOptions(...))`` (a JobConfig is one), or ``Classifier("id or dir", device=...)``
        with ModelOptions' fields as keywords. Options are validated before anything loads; ``weights=False``
        loads the tokenizer and config only (the weights load with the first batch, see ``load_weights``).
        ``notes`` receives what a user should know about the set-up (``--precision fast`` tuning now)."""
        if isinstance(model, ModelOptions):
            if options:
                raise TypeError("pass the options as one ModelOptions or as keywords, not both")
            self.options = model.model_options()
        else:
            self.options = ModelOptions(model=model, **options)
        self.name = self.options.model
        self.long_text, self.stride, self.aggregate = (
            self.options.long_text,
            self.options.window_stride,
            self.options.window_aggregate,
        )
        self._choose_runtime()
        self._load_tokenizer()
        self.tuning: Tuning | None = None
        if self.precision == "fast" and self.device.type == "cpu":
            self._follow_tuning(notes)
        limits = batch_limits(self.device.type, self.dtype)  # once the dtype is final (fast's follows the tuning)
        self.batch_size = self.options.batch_size or limits.rows
        self.token_budget = self.options.token_budget or limits.tokens
        check_batch_options(
            self.options.batch_size,
            self.options.token_budget,
            self.setup.widths,
            self.max_length,
            self.dtype,
            self.device,
        )
        self._prepare_encoder()
        self.model: Any = None
        self._runner: TorchRunner | OnnxRunner | GraphRunner | None = None
        self._capacity: int | None = None
        self.graph: str | None = None  # "traced" or "loaded" when a traced graph runs the model (runtime.graphs)
        self.fused = False  # an ONNX graph with fused attention runs the model (runtime.backends.FUSABLE)
        self.exported = False  # this run made the ONNX graph it runs (it was not in the cache)
        self._input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if self._wants_type_ids else [])
        self._graph_key = (
            graph_key(self.identity, self._input_names, self.dtype, self.kernel)
            if traceable(
                self.setup.model_type,
                bool(self.setup.custom_code),
                self.backend,
                self.dtype,
                self.quantize,
                self.device.type,
            )
            else None
        )
        if weights:
            self.load_weights()

    @property
    def pretrained(self) -> Pretrained:
        """The model's tokenizer and config as transformers loads them: read now when this run's setup was kept
        (a run that needs no weights, or runs a kept trace or cached export, never imports transformers)."""
        if self._pretrained is None:
            revision = self.setup.commit or self.options.revision  # a Hub model: the commit the setup came from
            self._pretrained = load_pretrained(self.name, revision, self.options.trust_remote_code)
        return self._pretrained

    @property
    def tokenizer(self) -> Any:
        """The transformers tokenizer (``pretrained``); scoring encodes with the setup's own copy."""
        return self.pretrained.tokenizer

    @property
    def config(self) -> Any:
        """The transformers config (``pretrained``)."""
        return self.pretrained.config

    @property
    def weights_loaded(self) -> bool:
        return self._runner is not None

    def load_weights(self) -> float:
        """Load the weights on the device in the dtype and prepare what runs them (once); the seconds it took.

        ``Classifier(..., weights=False)`` leaves this to the first batch that needs the model, so a
        run whose rows all come from the cache never loads it.
        """
        if self._runner is not None:
            return 0.0
        started = time.monotonic()
        if self.backend == "onnx":
            self._prepare_onnx()
            return time.monotonic() - started
        torch = self._torch()
        if self._graph_key is not None:
            kept = load_graph(self._graph_key)
            if kept is not None:
                graph, self._capacity = kept
                self._check_capacity()
                self._runner, self.graph = GraphRunner(graph, self._input_names), "loaded"
                return time.monotonic() - started
        model = self._load_model()
        self.model = model.to(device=str(self.device), dtype=getattr(torch, self.dtype)).eval()
        self._prepare_runner()
        return time.monotonic() - started

    def _load_model(self) -> Any:
        """The transformers model, float32 on CPU, checked against the length limit and the identity."""
        model = self.pretrained.load_model()
        self._capacity = position_capacity(model)
        self._check_capacity()
        self._check_unchanged()
        return model

    def _prepare_onnx(self) -> None:
        """ONNX Runtime on the cached export; the torch model is loaded only when the export must be made."""

        def source() -> tuple[Any, dict[str, np.ndarray], list[dict[str, np.ndarray]], int | None]:
            self._torch()  # the export runs the torch model
            self.model = self._load_model().eval()
            example, checks = self._sample_batches()
            return self.model, example, checks, self._capacity

        onnx = onnx_model(self.identity, self._input_names, self.quantize, source)
        self.model = None  # ONNX Runtime holds its own copy of the weights
        self._capacity = onnx.capacity
        self._check_capacity()
        self.exported, self.fused = onnx.exported, onnx.fused
        self._runner = OnnxRunner(onnx.path, self.device, self.options.threads)

    def _check_capacity(self) -> None:
        if self._capacity is not None and self._capacity < self.max_length:
            raise ModelLoadError(
                f"model '{self.name}' holds {self._capacity} positions, fewer than its tokenizer's limit of "
                f"{self.max_length}; pass --max-length {self._capacity}"
            )

    def _check_unchanged(self) -> None:
        """Refuse weights loaded from files other than those ``identity`` keys (a model folder replaced between
        reading its config and loading its weights): the cache and --resume would file one model's answers
        under another's key."""
        if "files" not in self.identity:
            return  # a Hub model: its weights load from the commit its identity names
        now = model_identity(self.name, None)  # a folder: its files by content
        if now != self.identity:
            before, after = self.identity["files"], now.get("files", {})
            changed = sorted(name for name in {*before, *after} if before.get(name) != after.get(name))
            raise ModelLoadError(
                f"model '{self.name}' changed while this run loaded it ({', '.join(changed)}); run "
                "again once its files are in place"
            )

    def _torch(self) -> Any:
        """torch, with this run's --threads: imported only by runs that run it (an ONNX Runtime run on CPU, with
        its export cached, never does)."""
        import torch

        if self.options.threads is not None and torch.get_num_threads() != self.options.threads:
            torch.set_num_threads(self.options.threads)
        return torch

    def _choose_runtime(self) -> None:
        """Device, dtype, variant and batch limits: everything decided before the weights load."""
        options = self.options
        backend, quantize, dtype = options.backend, options.quantize, options.dtype
        cuda_usable = device_refusal(backend, quantize, "cuda") is None
        self.device = resolve_device(options.device, cuda_usable=cuda_usable)
        if options.precision is not None:  # on CPU, fast is float32 until the tuning is read (_follow_tuning)
            variant = resolve_precision(options.precision, self.device.type)
            dtype, quantize = variant.dtype, variant.quantize
            check_backend_options(backend, quantize, dtype)
        self.dtype = resolve_dtype(dtype, self.device.type)
        check_dtype_supported(self.dtype, self.device)
        refusal = device_refusal(backend, quantize, self.device.type)
        if refusal:
            raise UsageError(refusal)
        self.backend, self.quantize, self.precision = backend, quantize, options.precision
        self.kernel: str | None = None
        if quantize == "int8" and backend == "torch":
            from batchsent.runtime.int8 import choose_kernel

            self.kernel = options.int8_kernel or choose_kernel(this_cpu())

    def _follow_tuning(self, notes: Callable[[str], None] | None) -> None:
        """``--precision fast`` on CPU: the variant this machine's tuning for this model chose (tuned now if none)."""
        from batchsent.runtime.tuning import fast_variant

        self.tuning = fast_variant(self.options, self.identity, self.max_length, Classifier, notes)
        chosen = self.tuning.candidate()
        check_backend_options(chosen.backend, chosen.quantize, chosen.dtype, chosen.int8_kernel)
        check_dtype_supported(chosen.dtype, self.device)
        self.backend, self.quantize, self.dtype, self.kernel = (
            chosen.backend,
            chosen.quantize,
            chosen.dtype,
            chosen.int8_kernel,
        )

    def _load_tokenizer(self) -> None:
        """Tokenizer and config, as one ModelSetup (kept from an earlier run, or read by transformers now): labels,
        activation and length limit (everything but the weights)."""
        setup, self._encoder, pretrained = load_setup(self.name, self.options.revision, self.options.trust_remote_code)
        self.setup, self._pretrained = setup, pretrained
        # What this model's results are keyed by (resume, cache, manifest), taken before the weights load and
        # checked again once they have (_check_unchanged).
        self.identity = setup.identity
        self._eos_id = setup.eos_id
        self.labels, self.activation = list(setup.labels), setup.activation
        self.zero_shot = bool(self.options.candidate_labels)
        if self.zero_shot:
            self.entailment_id = _entailment_id(self.name, dict(setup.label2id))
            self.labels, self.activation = list(self.options.candidate_labels), "zero-shot"
        limit = setup.length_limit
        max_length = self.options.max_length
        if max_length is not None and max_length > limit:
            raise UsageError(f"--max-length {max_length} exceeds the model's limit of {limit} tokens")
        specials = setup.special_tokens[1 if self.zero_shot else 0]
        if max_length is not None and max_length <= specials:  # the tokenizer would not cut at all
            raise UsageError(
                f"--max-length {max_length} leaves no room for text beside the model's {specials} special "
                f"tokens; give at least {specials + 1}"
            )
        self.max_length = max_length or limit

    def _prepare_encoder(self) -> None:
        """The private tokenizer load_setup parsed for this Classifier, set to explicit truncation and no padding
        (and windows in chunk mode).

        Calls through a shared tokenizer change its backend's truncation state, and a
        saved tokenizer.json may carry state of its own.
        """
        self._pad_id = self.setup.pad_token_id or 0
        self._pad_type_id = self.setup.pad_token_type_id
        self._wants_type_ids = "token_type_ids" in self.setup.input_names
        self._encoder.no_padding()
        self._encoder.enable_truncation(
            self.max_length, stride=0, strategy="longest_first", direction=self.setup.truncation_side
        )
        if self.long_text == "chunk":
            self._prepare_windows()
        if self.zero_shot:  # as the pipeline: only the text is cut, never the hypothesis
            self._hypothesis_encoder = copied_tokenizer(self._encoder)
            self._hypothesis_encoder.enable_truncation(
                self.max_length, stride=0, strategy="only_first", direction=self.setup.truncation_side
            )
        # Equal keys mean equal tokens from ``tokenized``: the tokenizer.json content with this truncation, the
        # windows, the zero-shot hypotheses, and whether token type ids are fed.
        windows = (self.long_text, self.stride) if self.long_text == "chunk" else None
        hypotheses = (tuple(self.labels), self.options.hypothesis_template) if self.zero_shot else None
        content = hashlib.sha256(self._encoder.to_str().encode("utf-8")).hexdigest()
        self.encoding_key = (content, self._encoder.encode_special_tokens, windows, hypotheses, self._wants_type_ids)

    def _prepare_runner(self) -> None:
        """What runs the loaded torch model (int8 layers swapped in first): a traced graph, or torch."""
        if self.kernel is not None:
            from batchsent.runtime.int8 import quantize_encoder_int8

            if not quantize_encoder_int8(self.model, self.kernel):  # nothing int8 can run: say it ran float32
                self.quantize = self.kernel = None
                self._graph_key = None  # keyed as int8, which this model is not
        if self._graph_key is not None:
            example, checks = self._sample_batches()
            graph = trace_graph(self.model, example, checks, self._graph_key, self._capacity)
            if graph is not None:
                self._runner, self.graph = GraphRunner(graph, self._input_names), "traced"
                return
        self._runner = TorchRunner(self.model, self.device)

    def _sample_batches(self) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
        """A batch to export or trace the model on, and batches of other shapes to check the result on: three
        padded rows up to ``max_length`` tokens, and one row alone (no padding)."""
        sample = self.encode(["a short sample", "a somewhat longer sample text for the export"])
        example = self._batch_inputs(sample, sample.batches[0])
        check = self.encode(["one", "a sample of another length, to check the export " * 2, EXPORT_CHECK_TEXT])
        checks = [self._batch_inputs(check, np.arange(len(check.lengths))), self._batch_inputs(check, np.arange(1, 2))]
        return example, checks

    def _prepare_windows(self) -> None:
        """Learn the special tokens around one sequence, to wrap every window in them."""
        self._full_encoder = copied_tokenizer(self._encoder)
        self._full_encoder.no_truncation()
        probe = self._full_encoder.encode("hello world", add_special_tokens=True)
        content = [i for i, special in enumerate(probe.special_tokens_mask) if not special]
        first, last = content[0], content[-1] + 1
        self._prefix = (np.array(probe.ids[:first], np.int64), np.array(probe.type_ids[:first], np.int64))
        self._suffix = (np.array(probe.ids[last:], np.int64), np.array(probe.type_ids[last:], np.int64))
        self._content_type_id = probe.type_ids[first]
        self.window_content = self.max_length - first - (len(probe.ids) - last)
        if self.stride >= self.window_content:
            raise UsageError(
                f"--stride {self.stride} must be smaller than a window's {self.window_content} text tokens "
                "(--max-length minus the special tokens)"
            )

    def encode(self, texts: Sequence[str | None], pairs: Sequence[str | None] | None = None) -> EncodedChunk:
        """Tokenize ``texts`` once (truncating, or into windows) and plan batches; blanks are skipped,
        and a text repeated in ``texts`` is scored once (its copies take its results).

        ``pairs``: a second text per row, encoded as the pipeline encodes ``{"text", "text_pair"}``
        (a row is blank when either text is). In zero-shot mode each text is paired with every
        candidate label's hypothesis instead.
        """
        texts = list(texts)
        blank = np.fromiter((is_blank(text) for text in texts), dtype=bool, count=len(texts))
        if pairs is not None:
            pairs = list(pairs)
            blank |= np.fromiter((is_blank(pair) for pair in pairs), dtype=bool, count=len(pairs))
        return self.planned(self.tokenized(texts, pairs))

    def tokenized(self, texts: Sequence[str | None], pairs: Sequence[str | None] | None = None) -> EncodedChunk:
        """``encode`` without the batch plan: the tokens, which every Classifier with an equal ``encoding_key`` can run."""
        texts = list(texts)
        blank = np.fromiter((is_blank(text) for text in texts), dtype=bool, count=len(texts))
        if pairs is not None:
            pairs = list(pairs)
            blank |= np.fromiter((is_blank(pair) for pair in pairs), dtype=bool, count=len(pairs))
        keys = texts if pairs is None else list(zip(texts, pairs, strict=True))
        rows, copies = first_occurrences(keys, np.flatnonzero(~blank))
        if self.zero_shot:
            chunk = self._encode_hypotheses(texts, rows, blank)
        elif self.long_text == "chunk":
            chunk = self._encode_windows(texts, rows, blank)
        else:
            chunk = self._encode_rows(keys, rows, blank)
        if copies is not None:
            chunk.copies = copies
            chunk.truncated[copies[0]] = chunk.truncated[copies[1]]
        return chunk

    def planned(self, chunk: EncodedChunk) -> EncodedChunk:
        """``chunk`` with this model's length-sorted, token-budgeted batches.

        An encoder-decoder head (BART, T5) reads the hidden state at the ``</s>`` tokens and
        needs the same count of them in every row of a batch; a text may hold ``</s>`` itself
        (``<s>old price</s>``), so such models batch rows of equal counts together.
        """
        if self._eos_id is None:
            chunk.batches = plan_batches(chunk.lengths, self.token_budget, self.batch_size)
            return chunk
        starts = chunk.offsets[: len(chunk.lengths)]
        seen = np.concatenate(([0], np.cumsum(chunk.flat_ids == self._eos_id)))
        counts = seen[starts + chunk.lengths] - seen[starts]
        chunk.batches = []
        for count in np.unique(counts):
            members = np.flatnonzero(counts == count)
            chunk.batches += [
                members[batch] for batch in plan_batches(chunk.lengths[members], self.token_budget, self.batch_size)
            ]
        return chunk

    def _encode_rows(self, inputs: list, rows: np.ndarray, blank: np.ndarray) -> EncodedChunk:
        """Every non-blank row as one sequence (a text, or a (text, pair) tuple), truncated to ``max_length``."""
        encodings = self._encoded_cut([inputs[i] for i in rows])
        lengths, offsets, flat_ids, flat_type_ids = self._flattened(encodings)
        truncated = np.zeros(len(inputs), dtype=bool)
        truncated[rows] = np.fromiter((bool(e.overflowing) for e in encodings), dtype=bool, count=len(rows))
        return EncodedChunk(len(inputs), rows, lengths, offsets, flat_ids, flat_type_ids, truncated, blank, [])

    def _encoded_cut(self, inputs: list) -> list:
        """``inputs`` encoded with truncation, a very long text cut first (a 50 MB cell would cost minutes and
        gigabytes for the 512 tokens kept): to ``max_length * CUT_CHARS_PER_TOKEN`` characters at a whitespace,
        kept only where its encoding still overflows by CUT_MARGIN_TOKENS (so the cut word's tokens all lie
        past the kept ones and the result is the whole text's), else encoded whole."""
        limit = self.max_length * CUT_CHARS_PER_TOKEN
        cut = {
            index: cut_at_space(text, limit)
            for index, text in enumerate(inputs)
            if isinstance(text, str) and len(text) > limit
        }
        if not cut:
            return self._encoder.encode_batch(inputs, add_special_tokens=True)
        encodings = self._encoder.encode_batch(
            [cut.get(i, text) for i, text in enumerate(inputs)], add_special_tokens=True
        )
        short = [i for i in cut if sum(len(piece.ids) for piece in encodings[i].overflowing) < CUT_MARGIN_TOKENS]
        for index, encoding in zip(
            short, self._encoder.encode_batch([inputs[i] for i in short], add_special_tokens=True)
        ):
            encodings[index] = encoding
        return encodings

    def _encode_hypotheses(self, texts: list, rows: np.ndarray, blank: np.ndarray) -> EncodedChunk:
        """Each non-blank row paired with every candidate label's hypothesis: one sequence per (row, label),
        all of a chunk's pairs in one length-sorted, token-budgeted plan."""
        hypotheses = [self.options.hypothesis_template.format(label) for label in self.labels]
        pairs = [(texts[row], hypothesis) for row in rows for hypothesis in hypotheses]
        encodings = self._hypothesis_encoder.encode_batch(pairs, add_special_tokens=True)
        lengths, offsets, flat_ids, flat_type_ids = self._flattened(encodings)
        overflow = np.fromiter((bool(e.overflowing) for e in encodings), dtype=bool, count=len(pairs))
        truncated = np.zeros(len(texts), dtype=bool)
        truncated[rows] = overflow.reshape(len(rows), len(hypotheses)).any(axis=1) if len(rows) else []
        return EncodedChunk(
            len(texts),
            rows,
            lengths,
            offsets,
            flat_ids,
            flat_type_ids,
            truncated,
            blank,
            [],
            hypotheses=len(hypotheses),
        )

    def _flattened(self, encodings: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Lengths, offsets and the flat token ids (and type ids) of a list of encodings."""
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        flat_ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), np.int64, count=total)
        flat_type_ids = None
        if self._wants_type_ids:
            flat_type_ids = np.fromiter(
                itertools.chain.from_iterable(e.type_ids for e in encodings), np.int64, count=total
            )
        return lengths, offsets, flat_ids, flat_type_ids

    def _encode_windows(self, texts: list, rows: np.ndarray, blank: np.ndarray) -> EncodedChunk:
        """Every non-blank row as windows of at most ``max_length`` tokens, specials included."""
        encodings = self._full_encoder.encode_batch([texts[i] for i in rows], add_special_tokens=False)
        (prefix_ids, prefix_types), (suffix_ids, suffix_types) = self._prefix, self._suffix
        ids_pieces, type_pieces, lengths, owners = [], [], [], []
        truncated = np.zeros(len(texts), dtype=bool)
        for position, encoding in enumerate(encodings):
            ids = np.array(encoding.ids, dtype=np.int64)
            truncated[rows[position]] = len(ids) > self.window_content
            for start, end in window_spans(len(ids), self.window_content, self.stride):
                ids_pieces += [prefix_ids, ids[start:end], suffix_ids]
                type_pieces += [prefix_types, np.full(end - start, self._content_type_id, np.int64), suffix_types]
                lengths.append(len(prefix_ids) + end - start + len(suffix_ids))
                owners.append(position)
        lengths_array = np.array(lengths, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths_array, out=offsets[1:])
        flat_ids = np.concatenate(ids_pieces) if ids_pieces else np.zeros(0, np.int64)
        flat_type_ids = None
        if self._wants_type_ids:
            flat_type_ids = np.concatenate(type_pieces) if type_pieces else np.zeros(0, np.int64)
        owners_array = np.array(owners, dtype=np.int64)
        return EncodedChunk(
            len(texts), rows, lengths_array, offsets, flat_ids, flat_type_ids, truncated, blank, [], owners_array
        )

    def run(
        self,
        chunk: EncodedChunk,
        stop: Callable[[], bool] | None = None,
        on_batch: Callable[[float], None] | None = None,
    ) -> Scores:
        """Run the model over an encoded chunk; rows come back in input order.

        ``stop()`` is asked before each batch; True raises ``Interrupted``. ``on_batch(share)``
        is told after each batch what share of the chunk's tokens is done (for progress).
        """
        if chunk.batches and self._runner is None:
            self.load_weights()
        width = len(self.setup.labels) if self.zero_shot else len(self.labels)
        sequences = np.empty((len(chunk.lengths), width), dtype=np.float32)
        total_tokens, done_tokens = max(int(chunk.lengths.sum()), 1), 0
        for batch in chunk.batches:
            if stop is not None and stop():
                raise Interrupted("stopped at a batch boundary")
            logits = self._runner(self._batch_inputs(chunk, batch))  # type: ignore[misc]
            sequences[batch] = logits if self.zero_shot else activate(logits, self.activation)
            if on_batch is not None:
                done_tokens += int(chunk.lengths[batch].sum())
                on_batch(done_tokens / total_tokens)
        probabilities = np.full((chunk.size, len(self.labels)), np.nan, dtype=np.float32)
        windows = None
        if chunk.hypotheses:
            probabilities[chunk.rows] = self._entailment_scores(
                sequences.reshape(len(chunk.rows), chunk.hypotheses, -1)
            )
        elif chunk.owners is None:
            probabilities[chunk.rows] = sequences
        else:
            probabilities[chunk.rows] = aggregate_windows(sequences, chunk.owners, len(chunk.rows), self.aggregate)
            windows = np.zeros(chunk.size, dtype=np.int64)
            windows[chunk.rows] = np.bincount(chunk.owners, minlength=len(chunk.rows))
        if chunk.copies is not None:
            copies, sources = chunk.copies
            probabilities[copies] = probabilities[sources]
            if windows is not None:
                windows[copies] = windows[sources]
        return Scores(probabilities, chunk.truncated, chunk.blank, windows)

    def _entailment_scores(self, logits: np.ndarray) -> np.ndarray:
        """Zero-shot probabilities from (rows, labels, classes) logits, by the pipeline's rules: a softmax of
        the entailment logits across the labels, or with ``multi_label`` (or one label) a softmax of
        contradiction against entailment for each label on its own."""
        entailment = self.entailment_id
        if self.options.multi_label or logits.shape[1] == 1:
            contradiction = -1 if entailment == 0 else 0
            return activate(logits[..., [contradiction, entailment]], SOFTMAX)[..., 1]
        return activate(logits[..., entailment], SOFTMAX)

    def predict(self, texts: Sequence[str | None], pairs: Sequence[str | None] | None = None) -> Scores:
        """Score ``texts`` (with ``pairs``): one row of probabilities per text, in ``self.labels`` order."""
        return self.run(self.encode(texts, pairs))

    __call__ = predict

    @property
    def variant(self) -> str:
        """What runs the model, in words: backend, dtype or int8 kernel (ONNX Runtime's int8 has per-channel
        weights), and the --precision asked for. Known before the weights load (cache keys and Ray's records read
        it), so it never depends on what an export turns out to be."""
        kind = f"int8/{self.kernel or 'per-channel'}" if self.quantize == "int8" else self.dtype
        named = f"{self.backend} {kind}" if self.backend != "torch" else kind
        return f"{named}, --precision {self.precision}" if self.precision else named

    @property
    def where(self) -> str:
        """Where and how this model runs, as summaries show it: ``cpu, float32``."""
        return f"{self.device}, {self.variant}"

    def _batch_inputs(self, chunk: EncodedChunk, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Right-padded model inputs (numpy) for one planned batch."""
        lengths = chunk.lengths[batch]
        columns = np.arange(int(lengths.max()))
        mask = columns[None, :] < lengths[:, None]
        index = np.where(mask, chunk.offsets[batch][:, None] + columns[None, :], 0)
        inputs = {
            "input_ids": np.where(mask, chunk.flat_ids[index], self._pad_id),
            "attention_mask": mask.astype(np.int64),
        }
        if chunk.flat_type_ids is not None:
            inputs["token_type_ids"] = np.where(mask, chunk.flat_type_ids[index], self._pad_type_id)
        return inputs


def _entailment_id(name: str, label2id: dict[str, int]) -> int:
    """The class id whose label starts with "entail" (as the zero-shot pipeline finds it)."""
    for label, index in label2id.items():
        if str(label).lower().startswith("entail"):
            return int(index)
    raise ModelLoadError(
        f"model '{name}' names no entailment label (its labels: {', '.join(map(str, label2id))}); "
        "--labels needs an NLI model whose config has one"
    )
