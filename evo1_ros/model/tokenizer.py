"""Tokenizers. Real use: the tokenizer of a local InternVL3-1B-hf directory. Tests and the sim
demo: a tiny byte-level BPE trained in code, holding the same special tokens."""

from __future__ import annotations

from pathlib import Path

from .config import IMG_CONTEXT, IMG_END, IMG_START

PAD = "<|endoftext|>"  # Qwen2's pad token; the tiny tokenizer reuses the name
SPECIAL_TOKENS = [PAD, IMG_START, IMG_END, IMG_CONTEXT]

_TINY_CORPUS = """pick up the can and put it in the white box
pick up the drink can and place it inside the white box
put the can in the box. place the red can into the open box on the table
move the arm to the left, right, up, down; open and close the gripper
Image-1: Image-2: Image-3:
stack the blocks, push the button, open the drawer, close the lid, wipe the table
"""


def load_tokenizer(path: str | Path):
    """A tokenizer from a local directory only (never the hub)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    missing = [t for t in (IMG_START, IMG_END, IMG_CONTEXT) if t not in tok.get_vocab()]
    if missing:
        raise ValueError(f"tokenizer in {path} lacks the InternVL image tokens {missing}")
    return tok


def build_tiny_tokenizer(vocab_size: int = 320):
    """A small byte-level BPE with the InternVL special tokens, trained on a fixed corpus:
    deterministic, so tests and the bundled sim checkpoint agree on ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TINY_CORPUS.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD,
        eos_token=PAD,
        additional_special_tokens=[IMG_START, IMG_END, IMG_CONTEXT],
    )
