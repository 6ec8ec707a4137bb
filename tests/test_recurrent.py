"""Normalized recurrent cells: equal to torch.nn's cells with normalization off, to the
defining formulas with it on, and the padded-batch runner equal to torch.nn.LSTM/GRU on packed
sequences."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import normlab.nn as nl

D = torch.float64


@pytest.mark.parametrize("ours_cls,torch_cls", [(nl.LayerNormLSTMCell, torch.nn.LSTMCell),
                                                (nl.LayerNormGRUCell, torch.nn.GRUCell)])
def test_norm_off_equals_torch_cell(ours_cls, torch_cls):
    torch.manual_seed(0)
    ref = torch_cls(5, 7, dtype=D)
    ours = ours_cls(5, 7, norm=False, dtype=D)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(4, 5, dtype=D)
    h = torch.randn(4, 7, dtype=D)
    hx = (h, torch.randn(4, 7, dtype=D)) if torch_cls is torch.nn.LSTMCell else h
    got, want = ours(x, hx), ref(x, hx)
    for a, b in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,), strict=True):
        torch.testing.assert_close(a, b)


def test_layer_norm_lstm_cell_formula():
    torch.manual_seed(0)
    cell = nl.LayerNormLSTMCell(3, 4, dtype=D)
    with torch.no_grad():
        for ln in (cell.ln_ih, cell.ln_hh, cell.ln_c):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.5, 0.5)
    x, h, c = (torch.randn(2, n, dtype=D) for n in (3, 4, 4))
    ln = torch.nn.functional.layer_norm

    def lnp(v, m):
        return ln(v, v.shape[-1:], m.weight, m.bias, 1e-5)
    z = lnp(x @ cell.weight_ih.T, cell.ln_ih) + lnp(h @ cell.weight_hh.T, cell.ln_hh) \
        + cell.bias_ih + cell.bias_hh
    i, f, g, o = z.chunk(4, 1)
    c2 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h2 = torch.sigmoid(o) * torch.tanh(lnp(c2, cell.ln_c))
    got_h, got_c = cell(x, (h, c))
    torch.testing.assert_close(got_h, h2)
    torch.testing.assert_close(got_c, c2)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_runner_equals_torch_rnn_on_packed_sequences(kind):
    torch.manual_seed(0)
    lengths = torch.tensor([6, 2, 4, 1])
    x = torch.randn(4, 6, 3, dtype=D)
    rnn = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(3, 5, batch_first=True, dtype=D)
    cell = (nl.LayerNormLSTMCell if kind == "lstm" else nl.LayerNormGRUCell)(3, 5, norm=False,
                                                                              dtype=D)
    cell.load_state_dict({k[:-3]: v for k, v in rnn.state_dict().items()}, strict=True)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out_p, state_p = rnn(packed)
    want, _ = pad_packed_sequence(out_p, batch_first=True, total_length=6)
    got, state = nl.Recurrent(cell)(x, lengths)
    torch.testing.assert_close(got, want)
    if kind == "lstm":
        torch.testing.assert_close(state[0], state_p[0][0])
        torch.testing.assert_close(state[1], state_p[1][0])
    else:
        torch.testing.assert_close(state, state_p[0])


def test_layer_norm_cells_train_through_the_runner():
    torch.manual_seed(0)
    model = nl.Recurrent(nl.LayerNormGRUCell(3, 8))
    x, lengths = torch.randn(6, 5, 3), torch.tensor([5, 3, 1, 4, 2, 5])
    out, h = model(x, lengths)
    h.sum().backward()
    assert model.cell.weight_ih.grad is not None and torch.isfinite(out).all()
    assert (out[2, 1:] == 0).all()


def test_batch_norm_lstm_per_step_statistics():
    torch.manual_seed(0)
    cell = nl.BatchNormLSTMCell(3, 4, max_steps=3)
    runner = nl.Recurrent(cell)
    x = torch.randn(8, 3, 3) * 2 + 1
    runner(x, torch.tensor([3, 3, 2, 3, 1, 3, 2, 3]))
    rm = cell.bn_c.running_mean
    assert not torch.equal(rm[0], rm[1]) and not torch.equal(rm[1], rm[2])  # one per step
    cell.eval()
    long = torch.randn(2, 6, 3)
    out, _ = runner(long)  # longer than any training sequence: steps 3..5 reuse step 2's
    assert out.shape == (2, 6, 4) and torch.isfinite(out).all()
    before = cell.bn_c.running_mean.clone()
    cell.train()
    runner(torch.randn(4, 2, 3), torch.tensor([2, 1, 1, 1]))  # one real sequence at step 1
    assert torch.equal(cell.bn_c.running_mean[1], before[1])  # no statistics from 1 sequence


def test_batch_norm_lstm_trains_over_steps_with_full_batches():
    # every sequence real at every step takes the unmasked kernels; the per-step running rows
    # are updated in place while autograd holds the statistics of earlier steps
    torch.manual_seed(0)
    runner = nl.Recurrent(nl.BatchNormLSTMCell(3, 4, max_steps=5))
    for _ in range(2):
        out, (h, _) = runner(torch.randn(6, 5, 3), torch.full((6,), 5))
        h.sum().backward()
    assert runner.cell.weight_hh.grad is not None
    rm = runner.cell.bn_ih.running_mean
    assert not torch.equal(rm[0], torch.zeros_like(rm[0]))


def test_batch_norm_lstm_refuses_one_sequence_in_training():
    runner = nl.Recurrent(nl.BatchNormLSTMCell(3, 4, max_steps=5))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        runner(torch.randn(1, 4, 3), torch.tensor([4]))
    runner.eval()
    out, _ = runner(torch.randn(1, 4, 3), torch.tensor([4]))  # eval: running statistics
    assert torch.isfinite(out).all()


def test_unmasked_statistics_count_the_finished_sequences():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2)
    lengths = torch.tensor([3, 1, 1, 3])
    masked = nl.Recurrent(nl.BatchNormLSTMCell(2, 3, max_steps=3))
    unmasked = nl.Recurrent(nl.BatchNormLSTMCell(2, 3, max_steps=3), mask_statistics=False)
    unmasked.load_state_dict(masked.state_dict())
    a, _ = masked(x, lengths)
    b, _ = unmasked(x, lengths)
    torch.testing.assert_close(a[:, 0], b[:, 0])  # step 0: every sequence is real
    assert not torch.allclose(a[0, 2], b[0, 2])  # step 2: two finished sequences counted
    assert (b[1, 1:] == 0).all()  # finished sequences still output zeros
