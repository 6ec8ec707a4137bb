"""A small Hugging Face BERT (from a config, random weights) on an offline counting task.

The factories a user would write for ``normlab study`` (README, "Your own model"):

    PYTHONPATH=examples/study normlab study --model text_transformer:make_model \\
        --data text_transformer:make_data --norms as-is,rms,batch,none --batch-sizes 4,32 \\
        --lr 0.001,0.003 --optimizer adam --seeds 3 --steps 120 --out study-bert
    normlab advise study-bert

The model is ``transformers.BertForSequenceClassification`` built from a ``BertConfig`` (one
layer, width 32; nothing is downloaded); its own normalization (the ``as-is`` arm) is layer
norm, in the embeddings and after each attention and feed-forward block. The study passes
the token ids positionally and reads ``.logits`` from the model's output.

The task: a sequence of 24 tokens drawn from 1..6; the label is which of the tokens 1, 2, 3
occurs most often (sequences with a tie are redrawn). The answer needs the whole sequence:
the classifier must count, through attention.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

LENGTH, VOCAB = 24, 7  # token 0 is unused (BERT's pad id)


def make_model():
    """A 1-layer BERT classifier for 3 classes, random weights, no dropout."""
    from zoo_import import torchvision

    torchvision()  # transformers imports it (zoo_import.py)
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=LENGTH, num_labels=3,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def _draw(n: int, rng: np.random.Generator):
    xs, ys = [], []
    while len(xs) < n:
        x = rng.integers(1, VOCAB, size=LENGTH)
        counts = np.array([(x == t).sum() for t in (1, 2, 3)])
        if (counts == counts.max()).sum() == 1:  # a unique answer
            xs.append(x)
            ys.append(int(counts.argmax()))
    return TensorDataset(torch.tensor(np.stack(xs), dtype=torch.int64),
                         torch.tensor(ys, dtype=torch.int64))


def make_data():
    """(train, test): 2000 and 500 sequences from a fixed generator (the same every call)."""
    rng = np.random.default_rng(2017)
    return _draw(2000, rng), _draw(500, rng)
