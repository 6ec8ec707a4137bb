"""The transformer-era claims: the small transformer (placements checked against formulas
written here with torch's own layer norm and attention), the token data, the warm-up, the
batch-norm evaluation modes, the equivalence verdict and the claims' configs."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as tF

from normlab.lab import data
from normlab.lab.claims import CLAIMS, check_run, resolve_base
from normlab.lab.models import Block, Transformer
from normlab.lab.study import LabError, plan_study, run_lab
from normlab.lab.train import train_run, warmup_factor
from normlab.registry import list_norm_layers
from normlab.results.stats import claim_verdict
from tests.oracle import tol

NEW = ("transformer-warmup", "qk-norm", "dyt-matches-layer-norm", "rms-matches-layer-norm",
       "bn-train-test-inconsistency")


def _attention(attn, x):
    """torch's scaled_dot_product_attention on the block's own projections."""
    n, t, w = x.shape
    q, k, v = attn.qkv(x).view(n, t, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    if not isinstance(attn.q_norm, torch.nn.Identity):
        q = tF.layer_norm(q, (attn.head_dim,), attn.q_norm.weight, attn.q_norm.bias, 1e-5)
        k = tF.layer_norm(k, (attn.head_dim,), attn.k_norm.weight, attn.k_norm.bias, 1e-5)
    out = tF.scaled_dot_product_attention(q, k, v)
    top = (q @ k.transpose(-2, -1)).detach().max() / math.sqrt(attn.head_dim)
    return attn.proj(out.transpose(1, 2).reshape(n, t, w)), top


def _ln(m, x):
    return tF.layer_norm(x, (x.shape[-1],), m.weight, m.bias, m.eps)


@pytest.mark.parametrize("position", ["pre", "post"])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_block_is_the_written_formula(position, qk_norm):
    torch.manual_seed(0)
    block = Block(12, 3, "layer", position, qk_norm).double()
    for p in block.parameters():  # away from the identity init, so every term matters
        p.data.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(5, 7, 12, dtype=torch.float64)
    if position == "pre":
        a, top = _attention(block.attn, _ln(block.norm1, x))
        h = x + a
        expect = h + block.mlp(_ln(block.norm2, h))
    else:
        a, top = _attention(block.attn, x)
        h = _ln(block.norm1, x + a)
        expect = _ln(block.norm2, h + block.mlp(h))
    torch.testing.assert_close(block(x), expect, **tol(torch.float64))
    assert block.attn.max_logit == pytest.approx(float(top), rel=1e-12)


def test_pre_and_post_differ_and_post_outputs_are_normalized():
    torch.manual_seed(1)
    pre = Block(16, 4, "layer", "pre", False).double()
    post = Block(16, 4, "layer", "post", False).double()
    post.load_state_dict(pre.state_dict())  # the same weights, only the placement differs
    x = torch.randn(3, 9, 16, dtype=torch.float64) * 3 + 2
    y_pre, y_post = pre(x), post(x)
    assert (y_pre - y_post).abs().max() > 0.1
    # Post-LN ends in a layer norm (weight 1, bias 0 at init): every token has mean 0, var 1;
    # Pre-LN's residual stream is never normalized and keeps the input's scale
    torch.testing.assert_close(y_post.mean(-1), torch.zeros(3, 9, dtype=torch.float64),
                               atol=1e-10, rtol=0)
    torch.testing.assert_close(y_post.var(-1, unbiased=False),
                               torch.ones(3, 9, dtype=torch.float64), atol=1e-3, rtol=0)
    assert y_pre.var(-1, unbiased=False).mean() > 4


@pytest.mark.parametrize("norm", ["layer", "rms", "none"])
def test_transformer_shapes_and_norms_from_the_registry(norm):
    model = Transformer(16, 10, 20, width=8, heads=2, layers=2, norm=norm, qk_norm=True)
    x = torch.randint(0, 16, (3, 20))
    assert model(x).shape == (3, 10)
    assert math.isfinite(model.max_attn_logit)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"layer": "LayerNorm", "rms": "RMSNorm"}.get(norm, "Identity") in kinds
    n_norms = sum(type(m).__module__.startswith("normlab.nn") for m in model.modules())
    # two per block, q and k per block, the final one (Pre-LN)
    assert n_norms == (0 if norm == "none" else 2 * 2 + 2 * 2 + 1)
    assert Transformer(16, 10, 20, width=8, heads=2, layers=1)(x[:0]).shape == (0, 10)
    with pytest.raises(ValueError, match="d_model .* must be a multiple of heads"):
        Transformer(16, 10, 20, width=10, heads=4)


def test_tokens_are_deterministic_and_balanced():
    a, b = data.tokens(0), data.tokens(0)
    assert torch.equal(a.x_train, b.x_train) and a.x_train.dtype == torch.int64
    assert a.x_train.shape == (4000, 20) and a.x_test.shape == (1000, 20)
    counts = torch.bincount(a.x_train.flatten(), minlength=data.TOKEN_VOCAB)
    assert len(counts) == data.TOKEN_VOCAB
    share = counts.double() / counts.sum()
    assert share.min() > 0.5 / data.TOKEN_VOCAB and share.max() < 1.5 / data.TOKEN_VOCAB


def test_warmup_factor_matches_torch_linear_schedule():
    w = 7
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / w, end_factor=1.0,
                                              total_iters=w - 1)
    for step in range(1, 20):  # torch's schedule before its step-th update
        assert 0.3 * warmup_factor(step, w) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert warmup_factor(5, 0) == 1.0


def _tiny(**over):
    return {**resolve_base(), "model": "transformer", "data": "mnist1d_tokens",
            "norm": "layer", "optimizer": "adam", "lr": 0.003, "batch_size": 16, "steps": 6,
            "eval_every": 3, "d_model": 8, "heads": 2, "layers": 1, "arm": "a", "x": None,
            "seed": 0, "claim": "t", **over}


def test_warmup_reaches_the_optimizer():
    # with a warm-up far longer than the run the rate stays near zero: the model barely moves
    frozen = train_run(_tiny(warmup=10 ** 6, optimizer="sgd", lr=0.5, momentum=0.0))
    moving = train_run(_tiny(warmup=0, optimizer="sgd", lr=0.5, momentum=0.0))
    first = frozen["evals"][0]["test_loss"]
    assert abs(frozen["final"]["test_loss"] - first) < 1e-4
    assert abs(moving["final"]["test_loss"] - first) > 1e-3
    assert frozen["final"]["step_ms"] > 0 and "train_max_attn_logit" in frozen["final"]


def test_bn_eval_modes_share_one_training():
    cfg = {**resolve_base(), "norm": "batch", "batch_size": 4, "steps": 30, "eval_every": 30,
           "precise_samples": 200, "arm": "a", "x": None, "seed": 0, "claim": "t"}
    out = {k: train_run({**cfg, "bn_eval": k}) for k in ("ema", "precise", "batch")}
    losses = {k: [e["train_loss"] for e in o["evals"]] for k, o in out.items()}
    assert losses["ema"] == losses["precise"] == losses["batch"]  # the same training
    accs = {k: o["final"]["test_acc"] for k, o in out.items()}
    assert len(set(accs.values())) > 1  # three evaluations, not one


def _row(claim, arm, seed, acc):
    return {"kind": "run", "claim": claim, "key": f"{arm}{seed}", "status": "ok",
            "config": {"arm": arm, "seed": seed, "x": None, "steps": 10, "eval_every": 5},
            "final": {"test_acc": acc, "step_ms": 2.0 - acc}, "evals": []}


def test_equivalence_verdicts_and_also_on_rows_whose_answer_is_known():
    spec = {"id": "c", "title": "c", "effect": {
        "metric": "final:test_acc", "arm": "b", "baseline": "a", "better": "higher",
        "test": "equivalence", "margin": 0.02,
        "also": [{"metric": "final:step_ms", "arm": "b", "baseline": "a",
                  "better": "lower"}]}}
    base = [_row("c", "a", s, 0.5) for s in range(4)]

    def verdict(deltas):
        return claim_verdict(spec, base + [_row("c", "b", s, 0.5 + d)
                                           for s, d in enumerate(deltas)])
    same = verdict([0.001, -0.002, 0.0, 0.003])
    assert same["verdict"] == "equivalent" and same["margin"] == 0.02
    assert same["level"] == 0.90 and "margin +-0.02" in same["comparison"]
    assert verdict([0.10, 0.12, 0.11, 0.13])["verdict"] == "different"
    assert verdict([0.0, 0.03, -0.03, 0.015])["verdict"] == "inconclusive"
    also = same["also"][0]  # step_ms = 2 - acc: b is slower when its accuracy is lower
    assert also["verdict"] == "inconclusive"
    faster = verdict([0.01, 0.011, 0.012, 0.013])["also"][0]
    assert faster["verdict"] == "reproduced" and faster["test"] == "difference"


def test_new_claims_pass_the_lab_checks():
    ids = [c["id"] for c in CLAIMS]
    assert all(i in ids for i in NEW)
    for preset in ("quick", "full"):
        chosen, plans, settings = plan_study(preset, only=list(NEW), seeds=2)
        ran = {c["id"] for c in chosen}
        if "dyt" in list_norm_layers():
            assert ran == set(NEW) and settings["skipped"] == {}
        else:  # waiting for the dyt layer: skipped with the reason, never run
            assert ran == set(NEW) - {"dyt-matches-layer-norm"}
            assert "'dyt'" in settings["skipped"]["dyt-matches-layer-norm"]
        assert all(len(plans[c]) >= 4 for c in ran)


@pytest.mark.parametrize("over, message", [
    ({"norm": "rms"}, "norms rms and dyt are for the transformer"),
    ({"bn_eval": "precise", "norm": "layer"}, "bn_eval precise or batch needs a batch-norm"),
    ({"model": "transformer"}, "model transformer needs mnist1d_tokens"),
    ({"norm_position": "middle"}, "norm_position=middle: expected one of pre, post"),
])
def test_bad_new_settings(over, message):
    # the check every run's resolved config passes before any run (claims.check_run)
    problem = check_run({**resolve_base(), **over}, "claim c, arm a: ", set(over))
    assert problem is not None and problem.startswith("claim c, arm a: ")
    assert re.search(message, problem), problem


def test_dyt_claim_alone_without_the_layer_is_a_clear_error():
    if "dyt" in list_norm_layers():
        pytest.skip("the dyt layer is registered")
    with pytest.raises(LabError, match="claim dyt-matches-layer-norm cannot run: needs the "
                       "'dyt' norm layer"):
        plan_study("quick", only=["dyt-matches-layer-norm"])


@pytest.mark.slow
def test_quick_lab_of_new_claims_ends_with_rows_and_verdicts(tmp_path):
    from normlab.report import render_report

    only = ["rms-matches-layer-norm", "bn-train-test-inconsistency"]
    result = run_lab(tmp_path, preset="quick", only=only, seeds=2, workers=2, progress=False,
                     render=render_report)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 + 3 * 2 and all(r["status"] == "ok" for r in rows)
    by_id = {c["id"]: c for c in result["summary"]["claims"]}
    rms = by_id["rms-matches-layer-norm"]
    assert rms["verdict"] in ("equivalent", "different", "inconclusive")
    assert rms["test"] == "equivalence" and rms["margin"] == 0.02 and rms["n_seeds"] == 2
    assert rms["also"][0]["metric"] == "final:step_ms"
    bn = by_id["bn-train-test-inconsistency"]
    assert bn["verdict"] in ("reproduced", "not reproduced", "inconclusive")
    page = (tmp_path / "index.html").read_text()
    assert "equivalence margin ±0.02" in page and "Also, in the same runs" in page
