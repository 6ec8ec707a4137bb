"""``normlab study`` / ``normlab advise`` on a tiny user-style model and data defined here.

The factories below are what a user would write in their own package; the study imports them
by path (``tests.test_userstudy:make_net``), in worker processes too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from normlab.lab.userstudy import StudyError, run_study
from normlab.results.advice import advice_lines, advise, advise_folder

ROOT = Path(__file__).resolve().parents[1]
HERE = "tests.test_userstudy"


# --- the user's code ---------------------------------------------------------------------------

def make_data(n_train=480, n_test=240):
    """Three Gaussian blobs in 8 dimensions (fixed generator: the same data every call)."""
    g = torch.Generator().manual_seed(123)
    centers = torch.randn(3, 8, generator=g) * 1.5

    def draw(n):
        y = torch.randint(0, 3, (n,), generator=g)
        return TensorDataset(centers[y] + torch.randn(n, 8, generator=g), y)
    return draw(n_train), draw(n_test)


def make_net():
    """Linear -> BatchNorm1d -> ReLU -> Linear: the user's own normalization is batch norm."""
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def make_plain():
    """A model with no normalization layer at all."""
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


class _Broken(nn.Module):
    """Broken on purpose: the output does not depend on the input."""

    def __init__(self):
        super().__init__()
        self.net = make_net()

    def forward(self, x):
        return self.net(x) * 0.0


def make_net_or_broken(norm=None):
    """A factory that builds the arm itself: ``norm="rms"`` is the broken one."""
    return _Broken() if norm == "rms" else make_net()


def not_a_model():
    return 42


# --- the study on them ---------------------------------------------------------------------------

def _study(tmp_path, model, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return run_study(f"{HERE}:{model}", f"{HERE}:make_data", tmp_path / "study", **kw)


def _by(rows, **match):
    return [r for r in rows if all(r["config"][k] == v for k, v in match.items())]


def _regime(advice, bs):
    return next(r for r in advice["regimes"] if r["batch_size"] == bs)


def _arm(regime, arm):
    return next(a for a in regime["arms"] if a["arm"] == arm)


@pytest.mark.slow
def test_a_broken_arm_loses_and_the_page_says_keep(tmp_path):
    from normlab.report import render_report

    result = _study(tmp_path, "make_net_or_broken", norms="as-is,rms", batch_sizes=[16],
                    lrs=[0.1], seeds=3, steps=60, render=render_report)
    reg = _regime(result["advice"], 16)
    broken = _arm(reg, "rms")
    assert broken["verdict"] == "loses"
    assert broken["ci"][1] < 0
    assert reg["decision"] == "keep" and reg["use"] == "as-is"
    assert reg["text"].startswith("keep what you have")
    # the as-is arm learned the blobs; the broken one sits near chance (1/3)
    assert _arm(reg, "as-is")["test"] > 0.8 and broken["test"] < 0.5
    assert _arm(reg, "as-is")["seconds_per_step"] > 0
    page = (tmp_path / "study" / "index.html").read_text()
    assert "Recommendation" in page and "keep what you have" in page
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert [c["verdict"] for c in summary["claims"]] == ["not reproduced"]
    assert summary["advice"]["regimes"][0]["decision"] == "keep"
    # `normlab advise` reads the same rows and says the same
    assert advise_folder(tmp_path / "study")["regimes"][0]["text"] == reg["text"]


@pytest.mark.slow
def test_batch_of_one_with_batch_norm_is_reported_not_a_crash(tmp_path):
    result = _study(tmp_path, "make_net", norms="as-is,layer", batch_sizes=[1, 8], lrs=[0.1],
                    seeds=2, steps=15)
    rows = result["rows"]
    assert len(rows) == 8
    at_one = _by(rows, batch_size=1, arm="as-is")
    assert at_one and all(r["status"] == "error" for r in at_one)
    assert all("Expected more than 1 value per channel" in r["error"] for r in at_one)
    assert all(r["status"] == "ok" for r in _by(rows, arm="layer"))
    assert all(r["surgery"].startswith("swap_norms: 1 layer(s) changed")
               for r in _by(rows, arm="layer"))
    reg = _regime(result["advice"], 1)
    assert reg["decision"] == "replace" and reg["use"] == "layer"
    assert "as-is cannot run at batch size 1" in reg["text"]
    assert _regime(result["advice"], 8)["decision"] in ("keep", "switch")


def test_the_layer_arm_is_the_users_model_with_layer_norm():
    from normlab.lab.userstudy import build_arm

    model, note = build_arm(make_net, "layer")
    kinds = [type(m).__name__ for m in model.modules()]
    assert "LayerNorm" in kinds and "BatchNorm1d" not in kinds, kinds
    assert [type(m).__name__ for m in make_net().modules()].count("BatchNorm1d") == 1
    x = torch.randn(5, 8)
    ref = nn.functional.layer_norm(model[0](x), (16,))  # torch's own layer norm (unit affine)
    assert torch.allclose(model[1](model[0](x)), ref, atol=1e-5)


def test_a_placement_arm_is_the_users_model_with_the_norm_after_the_relu():
    from normlab.lab.userstudy import build_arm

    x = torch.randn(5, 8, dtype=torch.float64)
    for arm, kind in (("as-is@after", nn.BatchNorm1d), ("layer@after", None)):
        model, note = build_arm(make_net, arm, (x.float(),))
        assert "move_norms: 1 norm(s) moved after their activation (module), 0 left" in note
        model = model.double().eval()
        h = torch.relu(model[0](x))  # Linear -> ReLU -> norm, by hand with torch.nn.functional
        norm = model[1].norm
        if kind is nn.BatchNorm1d:
            assert type(norm) is nn.BatchNorm1d
            ref = nn.functional.batch_norm(h, norm.running_mean, norm.running_var, norm.weight,
                                           norm.bias, False, 0.0, norm.eps)
        else:
            ref = nn.functional.layer_norm(h, (16,), norm.weight, norm.bias, norm.eps)
        torch.testing.assert_close(model(x), model[3](ref), rtol=1e-12, atol=1e-12)



def test_a_factory_taking_norm_builds_every_placement_arm_as_is_at_after_too():
    """``as-is@after`` from a factory that accepts ``norm=`` must reach the factory as that
    arm: calling ``factory()`` would train the baseline again under another name."""
    from normlab.lab.userstudy import build_arm

    asked = []

    def factory(norm=None):
        asked.append(norm)
        return make_net()
    for arm in ("as-is@after", "as-is@before", "group@after", "as-is"):
        _, note = build_arm(factory, arm)
        assert asked[-1] == (None if arm == "as-is" else arm), (arm, asked)
        assert note == ("as given" if arm == "as-is" else
                        f"built by the factory (norm={arm!r})"), note




def test_an_arm_whose_norms_are_already_there_is_refused_with_that_reason():
    """make_net is Linear -> BatchNorm1d -> ReLU: ``as-is@before`` has nothing to move, and
    the row's reason says the norm is already before its activation (not that the model has
    no norm); a model without norms says that."""
    from normlab.lab.userstudy import _Refused, build_arm

    with pytest.raises(_Refused) as info:
        build_arm(make_net, "as-is@before")
    assert str(info.value) == ("move_norms before the activation moved no layer: 1 norm(s) "
                               "already before their activation (1)")
    with pytest.raises(_Refused) as info:
        build_arm(make_plain, "as-is@after")
    assert str(info.value) == ("move_norms after the activation moved no layer: the model has "
                               "no normalization layer surgery knows")


def test_the_arms_take_turns_in_the_run_order_and_the_keys_do_not_change():
    """Time per step (the advice's cost) is measured on a shared machine: the runs start with
    the arms taking turns (ABBA) within each (batch size, seed, lr), not in blocks of one arm,
    in the order the runner starts them; the runs and their keys are those of every (batch
    size, arm, lr, seed)."""
    from itertools import product

    from normlab.lab.runner import _cost, run_key
    from normlab.lab.userstudy import plan_user_study

    norms = ["as-is", "group", "layer", "as-is@after"]
    plan, settings = plan_user_study(f"{HERE}:make_net", f"{HERE}:make_data", norms=norms,
                                     batch_sizes=[8, 16], lrs=[0.01, 0.1], seeds=2, steps=3)
    varied = ("arm", "norm", "batch_size", "lr", "seed")
    base = {k: v for k, v in plan[0].items() if k not in varied}
    expected = [run_key({**base, "arm": n, "norm": n, "batch_size": b, "lr": lr, "seed": s})
                for b, n, lr, s in product([8, 16], norms, [0.01, 0.1], range(2))]
    assert settings["run_keys"] == expected
    assert sorted(run_key(c) for c in plan) == sorted(expected)
    started = sorted(plan, key=_cost, reverse=True)  # as run_all orders them (stable)
    k = len(norms)
    for i in range(0, len(started), k):
        assert sorted(c["arm"] for c in started[i:i + k]) == sorted(norms), i
    for b in (8, 16):
        order = [c["arm"] for c in started if c["batch_size"] == b]
        mean_rank = {n: sum(i for i, a in enumerate(order) if a == n) / order.count(n)
                     for n in norms}
        assert len(set(mean_rank.values())) == 1, mean_rank


@pytest.mark.slow
def test_a_placement_arm_runs_and_one_that_moves_nothing_is_a_row_with_the_reason(tmp_path):
    result = _study(tmp_path, "make_net", norms="as-is,as-is@after", batch_sizes=[8],
                    lrs=[0.1], seeds=2, steps=5)
    rows = _by(result["rows"], arm="as-is@after")
    assert len(rows) == 2 and all(r["status"] == "ok" and "1 norm(s) moved after" in
                                  r["surgery"] for r in rows)
    plain = _study(tmp_path / "plain", "make_plain", norms="as-is,as-is@after",
                   batch_sizes=[8], lrs=[0.1], seeds=2, steps=5)
    rows = _by(plain["rows"], arm="as-is@after")
    assert len(rows) == 2 and all(
        r["status"] == "error" and r["stage"] == "surgery" and "moved no layer: the model has "
        "no normalization layer surgery knows" in r["error"] for r in rows)


@pytest.mark.slow
def test_a_surgery_refusal_is_a_row_with_the_reason(tmp_path):
    result = _study(tmp_path, "make_plain", norms="as-is,group,none", batch_sizes=[8],
                    lrs=[0.1], seeds=2, steps=5)
    for arm, why in (("group", "changed no layer"), ("none", "no normalization layer")):
        rows = _by(result["rows"], arm=arm)
        assert len(rows) == 2 and all(r["status"] == "error" and r["stage"] == "surgery"
                                      and why in r["error"] for r in rows)
    reg = _regime(result["advice"], 8)
    assert reg["decision"] == "keep"
    lines = "\n".join(advice_lines(result["advice"]))
    assert "group          cannot run: surgery: swap_norms to 'group' changed no layer" in lines


@pytest.mark.slow
def test_resume_after_a_kill(tmp_path):
    """A real process killed (SIGKILL) mid-study; the rerun keeps its rows and does the rest."""
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "normlab", "study", "--model", f"{HERE}:make_net",
           "--data", f"{HERE}:make_data", "--norms", "as-is,layer", "--batch-sizes", "8",
           "--lr", "0.03,0.1", "--seeds", "3", "--steps", "60", "--workers", "1",
           "--no-progress", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    rows_file = out / "results.jsonl"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if rows_file.is_file() and len(rows_file.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the study finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert 2 <= len(before) < 12
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{12 - len(before)} runs trained, {len(before)} already done (12 planned)" \
        in done.stdout
    after = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert len(after) == 12 and len({r["key"] for r in after}) == 12
    assert after[:len(before)] == before  # the finished rows are kept as they were
    assert "batch size 8:" in done.stdout and "rule:" in done.stdout


def test_python_api_with_notebook_style_factories(tmp_path):
    import normlab

    def net():  # defined here: no import path reaches it, so it runs in this process
        return make_net()

    def data():
        return make_data(96, 48)

    result = normlab.study(net, data, tmp_path / "nb", norms=["as-is", "layer"],
                           batch_sizes=[8], lrs=[0.1], seeds=2, steps=3, progress=False)
    assert len(result["rows"]) == 4 and result["counts"]["ran"] == 4
    assert result["advice"]["regimes"][0]["batch_size"] == 8
    assert (tmp_path / "nb" / "index.html").is_file()
    with pytest.raises(StudyError, match="--workers: a factory defined where no import"):
        normlab.study(net, data, tmp_path / "nb2", seeds=2, steps=3, workers=2)


# --- bad input: one clear line naming the argument ----------------------------------------------

_GOOD = ["--model", f"{HERE}:make_net", "--data", f"{HERE}:make_data"]
_BAD = [
    (["--model", "nosuch_pkg.models:f", "--data", f"{HERE}:make_data"],
     r"--model nosuch_pkg.models:f: cannot import module 'nosuch_pkg.models'"),
    (["--model", f"{HERE}:missing", "--data", f"{HERE}:make_data"],
     r"--model tests.test_userstudy:missing: module 'tests.test_userstudy' has no attribute"),
    (["--model", "make_net", "--data", f"{HERE}:make_data"],
     r"--model: expected an import path 'package.module:name', got 'make_net'"),
    (["--model", f"{HERE}:not_a_model", "--data", f"{HERE}:make_data"],
     r"--model tests.test_userstudy:not_a_model: the factory returned int, expected a "
     r"torch.nn.Module"),
    (["--model", f"{HERE}:make_net", "--data", f"{HERE}:make_net"],
     r"--data: the data factory must return \(train, test\)"),
    (_GOOD + ["--norms", "as-is,bogus"], r"--norms: unknown norm 'bogus'; expected one of"),
    (_GOOD + ["--norms", "layer:3"], r"--norms: 'layer:3': only group, ghost, renorm take"),
    (_GOOD + ["--norms", "group,group"], r"--norms: a norm is given twice"),
    (_GOOD + ["--norms", "as-is@after,as-is@after"], r"--norms: a norm is given twice"),
    (_GOOD + ["--norms", "group:4@after,group:04@after"],
     r"--norms: a norm is given twice: group:4@after,group:04@after \('group:4@after' and "
     r"'group:04@after' are the same arm\)"),
    (_GOOD + ["--norms", "as-is@middle"], r"--norms: 'as-is@middle': expected @after or "
                                          r"@before \(the norms after or before their "
                                          r"activation\), got @middle"),
    (_GOOD + ["--norms", "none@after"], r"--norms: 'none@after': 'none' has no norm to place"),
    (_GOOD + ["--norms", "bogus@after"], r"--norms: unknown norm 'bogus'"),
    (_GOOD + ["--norms", "layer:3@after"], r"--norms: 'layer:3': only group, ghost, renorm"),
    (_GOOD + ["--batch-sizes", "0"], r"--batch-sizes: expected positive int values, got 0"),
    (_GOOD + ["--batch-sizes", "4,x"], r"--batch-sizes: expected comma-separated int"),
    (_GOOD + ["--batch-sizes", "100000"], r"--batch-sizes: 100000 is larger than the training"),
    (_GOOD + ["--lr", "0.1,-1"], r"--lr: expected positive float values, got -1.0"),
    (_GOOD + ["--lr", "nan"], r"--lr: expected positive float values, got nan"),
    (_GOOD + ["--val-fraction", "0.9"], r"--val-fraction: expected a number in"),
    (_GOOD + ["--metric", f"{HERE}:make_net"], r"--better: with --metric"),
]


@pytest.mark.parametrize("args, message", _BAD, ids=[m[:40] for _, m in _BAD])
def test_bad_input_is_one_clear_line(args, message, capsys, tmp_path):
    from normlab.cli import main

    assert main(["study", *args, "--out", str(tmp_path / "s"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("normlab study: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "s" / "results.jsonl").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda_is_refused(capsys, tmp_path):
    from normlab.cli import main

    assert main(["study", *_GOOD, "--device", "cuda", "--out", str(tmp_path / "s")]) == 2
    assert "--device cuda: CUDA is not available here" in capsys.readouterr().err


def test_advise_on_a_folder_without_rows(capsys, tmp_path):
    from normlab.cli import main

    assert main(["advise", str(tmp_path)]) == 2
    assert "no results.jsonl here" in capsys.readouterr().err


# --- the advice on synthetic rows whose answer is known by construction --------------------------

def _row(bs, arm, lr, seed, val, test, *, status="ok", error=None, spp=0.01, metric="acc",
         better="higher"):
    cfg = {"study": 1, "claim": "study", "metric_name": metric, "better": better,
           "batch_size": bs, "arm": arm, "norm": arm, "lr": lr, "seed": seed, "steps": 10}
    final = {} if status == "error" else {f"val_{metric}": val, f"test_{metric}": test}
    return {"kind": "run", "key": f"{bs}-{arm}-{lr}-{seed}", "claim": "study", "config": cfg,
            "status": status, "error": error, "final": final, "seconds_per_step": spp}


def _arm_rows(bs, arm, lr, vals, tests, **kw):
    return [_row(bs, arm, lr, s, v, t, **kw) for s, (v, t) in enumerate(zip(vals, tests,
                                                                             strict=True))]


def _t_interval(diffs):
    """scipy's t interval, the oracle for the advice's interval."""
    from scipy import stats

    mean = sum(diffs) / len(diffs)
    return stats.t.interval(0.95, len(diffs) - 1, loc=mean, scale=stats.sem(diffs))


def _synthetic():
    rows = []
    # batch 4: group beats as-is decisively; layer ties; none loses. as-is's lr 0.01 has the
    # best *test* accuracy but the worse validation: the rate must be chosen on validation
    rows += _arm_rows(4, "as-is", 0.1, [.80, .81, .79], [.70, .72, .71])
    rows += _arm_rows(4, "as-is", 0.01, [.60, .60, .60], [.90, .90, .90])
    rows += _arm_rows(4, "group", 0.1, [.85, .86, .84], [.76, .79, .75], spp=0.02)
    rows += _arm_rows(4, "group", 0.01, [.50, .50, .50], [.99, .99, .99], spp=0.02)
    rows += _arm_rows(4, "layer", 0.1, [.82, .82, .82], [.72, .70, .73])
    rows += _arm_rows(4, "none", 0.1, [.60, .60, .60], [.50, .52, .49])
    # batch 32: nothing beats as-is (a tie); as-is's lr 1.0 diverged on one seed: not chosen
    rows += _arm_rows(32, "as-is", 0.1, [.90, .90, .90], [.90, .91, .92])
    rows += _arm_rows(32, "as-is", 1.0, [.99, .99], [.99, .99])
    rows.append(_row(32, "as-is", 1.0, 2, float("nan"), float("nan"), status="diverged"))
    rows += _arm_rows(32, "group", 0.1, [.90, .90, .90], [.91, .90, .93])
    # batch 1: batch norm cannot run; group has the best validation accuracy, layer the next
    rows += [_row(1, "as-is", 0.1, s, None, None, status="error",
                  error="train: at step 1: ValueError: Expected more than 1 value per channel")
             for s in range(3)]
    rows += _arm_rows(1, "group", 0.1, [.70, .70, .70], [.60, .62, .61])
    rows += _arm_rows(1, "layer", 0.1, [.50, .50, .50], [.55, .56, .54])
    return rows


def test_advice_on_synthetic_rows():
    advice = advise(_synthetic())
    four = _regime(advice, 4)
    assert _arm(four, "as-is")["lr"] == 0.1 and _arm(four, "group")["lr"] == 0.1
    group = _arm(four, "group")
    diffs = [.76 - .70, .79 - .72, .75 - .71]
    assert group["effect"] == pytest.approx(sum(diffs) / 3)
    assert group["ci"] == pytest.approx(list(_t_interval(diffs)))
    assert group["verdict"] == "wins"
    assert _arm(four, "layer")["verdict"] == "ties"
    assert _arm(four, "none")["verdict"] == "loses"
    # 3 seeds: the 3 of 27 resamples that repeat one seed are undecided, the rest agree
    assert _arm(four, "none")["stability"] == pytest.approx(24 / 27)
    assert four["decision"] == "switch" and four["use"] == "group"
    assert "decisive" in four["text"] and "2.00x as-is" in four["text"]
    thirty_two = _regime(advice, 32)
    assert _arm(thirty_two, "as-is")["lr"] == 0.1  # lr 1.0 lost a seed to divergence
    assert thirty_two["decision"] == "keep" and thirty_two["use"] == "as-is"
    assert "a tie within the noise" in thirty_two["text"]
    one = _regime(advice, 1)
    assert one["decision"] == "replace" and one["use"] == "group"
    assert _arm(one, "as-is")["status"] == "error"
    assert "Expected more than 1 value per channel" in _arm(one, "as-is")["reason"]
    assert _arm(one, "group")["against"] == "layer"
    assert _arm(one, "group")["ci"] == pytest.approx(list(_t_interval([.05, .06, .07])))
    text = "\n".join(advice_lines(advice))
    assert "rule: Per batch size" in text and "cannot run: train: at step 1" in text


def test_advice_never_from_fewer_than_two_seeds():
    rows = [r for r in _synthetic() if r["config"]["seed"] == 0]
    for reg in advise(rows)["regimes"]:
        assert reg["decision"] == "undecided" and reg["use"] is None, reg
        assert "fewer than 2" in reg["text"]


def test_advice_when_lower_is_better():
    rows = _arm_rows(8, "as-is", 0.1, [1.0, 1.1, 0.9], [1.0, 1.2, 1.1], metric="mse",
                     better="lower")
    rows += _arm_rows(8, "rms", 0.1, [0.5, 0.6, 0.4], [0.5, 0.6, 0.7], metric="mse",
                      better="lower")
    reg = _regime(advise(rows), 8)
    assert reg["use"] == "rms" and _arm(reg, "rms")["effect"] == pytest.approx(0.5)


def test_the_interrupt_message_names_the_command_that_runs():
    """Ctrl-C during a study says ``normlab study: interrupted``, during the lab ``normlab
    lab: interrupted`` (the engine is the same)."""
    import io

    from normlab.lab.engine import _Interrupts

    for todo, command in (([{"claim": "study"}] * 2, "normlab study"),
                          ([{"claim": "placement"}], "normlab lab")):
        stream = io.StringIO()
        interrupts = _Interrupts(stream, "stop them now", todo)
        interrupts.count = 1
        interrupts.tell(3, 2)
        assert stream.getvalue().startswith(f"\n{command}: interrupted: 3 run(s) not started "
                                            "are cancelled; waiting for the 2 in flight"), \
            stream.getvalue()
