"""Tiny seeded classifiers of every model family users bring, each with a byte-level BPE tokenizer trained here.

Every family gets the same special tokens (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3,
``<mask>`` 4) wrapped around a text the way the family does it, so the same texts
exercise each one's own quirks: RoBERTa's positions that start after the padding id,
BART's and T5's heads that read the ``</s>`` tokens, GPT-2's and Llama's last-token
heads, Longformer's attention window, ModernBERT's local attention.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
BOS, PAD, EOS = 0, 1, 2
LABELS = ["negative", "neutral", "positive"]
# family: (template around one text, template around a pair)
TEMPLATES = {
    "bert": ("<s> $A </s>", "<s> $A </s> $B:1 </s>:1"),
    "roberta": ("<s> $A </s>", "<s> $A </s> </s> $B </s>"),
    "deberta-v2": ("<s> $A </s>", "<s> $A </s> $B:1 </s>:1"),
    "modernbert": ("<s> $A </s>", "<s> $A </s> $B </s>"),
    "longformer": ("<s> $A </s>", "<s> $A </s> </s> $B </s>"),
    "bart": ("<s> $A </s>", "<s> $A </s> </s> $B </s>"),
    "t5": ("$A </s>", "$A </s> $B </s>"),
    "gpt2": ("$A", "$A $B"),
    "llama": ("<s> $A", "<s> $A $B"),
}
FAMILIES = tuple(TEMPLATES)


def train_tokenizer(texts: list[str], family: str, max_length: int | None = 128, split_special_tokens: bool = False):
    """A byte-level BPE tokenizer trained on ``texts``, with the family's special-token template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    single, pair = TEMPLATES[family]
    special = [(token, SPECIALS.index(token)) for token in ("<s>", "</s>")]
    tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    options = {"model_max_length": max_length} if max_length else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>",
        split_special_tokens=split_special_tokens,
        **options,
    )


def build_family_model(directory: Path, family: str, texts: list[str], seed: int = 0, **tokenizer_options) -> Path:
    """Save a seeded 3-label classifier of ``family`` and its trained tokenizer into ``directory``."""
    import torch
    import transformers as tf

    tokenizer = train_tokenizer(texts, family, **tokenizer_options)
    vocab = len(tokenizer)
    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {label: i for i, label in enumerate(LABELS)}}
    ids = {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    configs = {
        "bert": lambda: tf.BertConfig(vocab_size=vocab, max_position_embeddings=128, **small, **ids, **labels),
        "roberta": lambda: tf.RobertaConfig(vocab_size=vocab, max_position_embeddings=130, **small, **ids, **labels),
        "deberta-v2": lambda: tf.DebertaV2Config(
            vocab_size=vocab,
            max_position_embeddings=128,
            relative_attention=True,
            position_buckets=16,
            pos_att_type=["p2c", "c2p"],
            **small,
            **ids,
            **labels,
        ),
        "modernbert": lambda: tf.ModernBertConfig(
            vocab_size=vocab,
            max_position_embeddings=128,
            local_attention=16,
            global_attn_every_n_layers=2,
            cls_token_id=BOS,
            sep_token_id=EOS,
            **small,
            **ids,
            **labels,
        ),
        "longformer": lambda: tf.LongformerConfig(
            vocab_size=vocab, max_position_embeddings=130, attention_window=16, **small, **ids, **labels
        ),
        "bart": lambda: tf.BartConfig(
            vocab_size=vocab,
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=128,
            decoder_start_token_id=EOS,
            **ids,
            **labels,
        ),
        "t5": lambda: tf.T5Config(
            vocab_size=vocab,
            d_model=32,
            d_kv=16,
            d_ff=64,
            num_layers=1,
            num_decoder_layers=1,
            num_heads=2,
            decoder_start_token_id=PAD,
            **ids,
            **labels,
        ),
        "gpt2": lambda: tf.GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128, **ids, **labels
        ),
        "llama": lambda: tf.LlamaConfig(
            vocab_size=vocab, max_position_embeddings=128, num_key_value_heads=1, **small, **ids, **labels
        ),
    }
    torch.manual_seed(seed)
    config = configs[family]()
    config.initializer_range = 0.3  # confident, varied predictions from random weights
    model = tf.AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
