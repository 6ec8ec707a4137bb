"""The lab: data, the verdict rule, overrides, determinism, resume, CLI errors, end to end."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from normlab.cli import main
from normlab.lab import data
from normlab.lab.claims import BASE, CLAIMS
from normlab.lab.study import LabError, parse_overrides, plan_study
from normlab.lab.train import train_run
from normlab.results.stats import claim_verdict, metric, paired_effect

# --------------------------------------------------------------------------------------------
# data


@pytest.mark.parametrize("name", ["digits", "digits_rgb", "tabular"])
def test_datasets_are_deterministic_and_well_formed(name):
    a, b = data.load(name, 0), data.load(name, 0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert len(a.x_train) + len(a.x_test) == {"digits": 1797, "digits_rgb": 1797,
                                              "tabular": 569}[name]
    assert set(a.y_train.unique().tolist()) == set(range(a.num_classes))
    if name != "tabular":
        assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    c = data.load(name, 1)
    assert not torch.equal(a.y_test, c.y_test)  # another seed, another split


@pytest.mark.slow
def test_mnist1d_generated_offline():
    d = data.load("mnist1d", 0)
    assert d.x_train.shape == (4000, 1, 40) and d.x_test.shape == (1000, 1, 40)
    assert d.num_classes == 10


def test_shifts():
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(data.shifted(x, "inverted"), 1 - x)
    torch.testing.assert_close(data.shifted(x, "contrast"), 0.3 * x + 0.35)
    assert torch.equal(data.shifted(x, "none"), x)


# --------------------------------------------------------------------------------------------
# the verdict rule, on synthetic rows whose answer is known


def _row(claim, arm, seed, acc, x=None, status="ok", evals=None, steps=100):
    return {"kind": "run", "claim": claim, "status": status,
            "config": {"arm": arm, "seed": seed, "x": x, "steps": steps, "eval_every": 10},
            "final": {"test_acc": acc, "train_acc": acc + 0.1}, "evals": evals or []}


SPEC = {"id": "c", "title": "t", "effect": {"metric": "final:test_acc", "arm": "a",
                                            "baseline": "b", "better": "higher"}}


def test_paired_effect_by_hand():
    # d = [1, 2, 3]: mean 2, sd 1, t(0.975, 2) = 4.3027, half = 4.3027 / sqrt(3) = 2.4841
    out = paired_effect([1.0, 2.0, 3.0])
    assert out["effect"] == pytest.approx(2.0)
    assert out["ci"] == pytest.approx([2 - 2.4841, 2 + 2.4841], abs=1e-3)
    assert out["verdict"] == "inconclusive"
    assert paired_effect([1.0, 1.1, 0.9])["verdict"] == "reproduced"
    assert paired_effect([-1.0, -1.1, -0.9])["verdict"] == "not reproduced"
    assert paired_effect([0.5])["verdict"] == "inconclusive"
    assert paired_effect([])["n_seeds"] == 0


def test_claim_verdict_directions():
    rows = [_row("c", "a", s, 0.9 + 0.01 * s) for s in range(3)] + \
           [_row("c", "b", s, 0.5) for s in range(3)]
    v = claim_verdict(SPEC, rows)
    assert v["verdict"] == "reproduced" and v["effect"] == pytest.approx(0.41)
    lower = {**SPEC, "effect": {**SPEC["effect"], "better": "lower"}}
    v = claim_verdict(lower, rows)
    assert v["verdict"] == "not reproduced" and v["effect"] == pytest.approx(-0.41)
    # unpaired seeds are left out
    v = claim_verdict(SPEC, rows[:3] + [_row("c", "b", 5, 0.5)])
    assert v["n_seeds"] == 0 and v["verdict"] == "inconclusive"


def test_error_rows_count_with_their_last_evaluation():
    rows = [_row("c", "a", s, 0.9) for s in range(3)] + \
           [_row("c", "b", s, 0.3, status="error") for s in range(3)]
    assert claim_verdict(SPEC, rows)["effect"] == pytest.approx(0.6)


def test_at_max_x_compares_at_the_largest_x():
    spec = {**SPEC, "effect": {**SPEC["effect"], "at_max_x": True}}
    rows = []
    for s in range(3):
        rows += [_row("c", "a", s, 0.5, x=0.1), _row("c", "b", s, 0.9, x=0.1),
                 _row("c", "a", s, 0.8 + 0.01 * s, x=3.0), _row("c", "b", s, 0.1, x=3.0)]
    v = claim_verdict(spec, rows)
    assert v["verdict"] == "reproduced" and v["effect"] == pytest.approx(0.71)


def test_metrics():
    evals = [{"step": 0, "test_acc": 0.1}, {"step": 10, "test_acc": 0.6},
             {"step": 20, "test_acc": 0.75}]
    r = _row("c", "a", 0, 0.75, evals=evals, steps=20)
    assert metric(r, "steps_to:test_acc:0.7") == 20
    assert metric(r, "steps_to:test_acc:0.9") == 30  # censored: last step + one interval
    assert metric(r, "gap") == pytest.approx(0.1)
    r["final"]["test_acc_contrast"] = 0.5
    assert metric(r, "drop:contrast") == pytest.approx(0.25)
    probe = [{"step": 0, "probe": [[-1.0, 0.0, 1.0]]}, {"step": 10, "probe": [[-1, 0.5, 2]]},
             {"step": 20, "probe": [[-1, -1.0, 1]]}]
    assert metric({"evals": probe}, "drift:0") == pytest.approx(0.5)  # |-1 - 0| / (1 - -1)


# --------------------------------------------------------------------------------------------
# configs and overrides


def test_overrides_are_typed_and_checked():
    assert parse_overrides(["--lr=0.1", "--steps=50", "--hidden=64,32", "--probe=true"]) == \
        {"lr": 0.1, "steps": 50, "hidden": [64, 32], "probe": True}
    with pytest.raises(LabError, match=r"--lr=abc: expected float \(the default is 0.05\)"):
        parse_overrides(["--lr=abc"])
    with pytest.raises(LabError, match=r"--lrr: unknown setting"):
        parse_overrides(["--lrr=1"])
    with pytest.raises(LabError, match="unknown claim id nope"):
        plan_study(only=["nope"])


DEFAULT_IDS = [c["id"] for c in CLAIMS if "default" in c.get("presets", ("default",))]


def test_plan_has_every_claim_and_enough_seeds():
    chosen, plans, settings = plan_study()
    assert [c["id"] for c in chosen] == DEFAULT_IDS
    assert "style-contrast" not in DEFAULT_IDS  # --full only (or --only)
    assert [c["id"] for c in plan_study("full")[0]] == [c["id"] for c in CLAIMS]
    assert [c["id"] for c in plan_study(only=["style-contrast"])[0]] == ["style-contrast"]
    assert settings["seeds"] >= 3
    for runs in plans.values():
        assert {r["seed"] for r in runs} == set(range(settings["seeds"]))
        assert all(set(BASE) <= set(r) for r in runs)


def test_a_run_is_deterministic():
    cfg = {**BASE, "data": "tabular", "norm": "batch", "steps": 20, "eval_every": 10,
           "seed": 3, "claim": "x", "arm": "batch", "x": None}
    a, b = train_run(cfg), train_run(cfg)
    assert a["evals"] == b["evals"] and a["status"] == "ok"
    c = train_run({**cfg, "seed": 4})
    assert c["evals"] != a["evals"]


def test_batch_norm_at_batch_size_one_stops_with_the_clear_error():
    cfg = {**BASE, "data": "tabular", "norm": "batch", "batch_size": 1, "steps": 5,
           "seed": 0, "claim": "x", "arm": "b", "x": None}
    out = train_run(cfg)
    assert out["status"] == "error"
    assert "Expected more than 1 value per channel when training" in out["error"]


# --------------------------------------------------------------------------------------------
# CLI: bad input is one line and exit 2


@pytest.mark.parametrize("args,message", [
    (["lab", "--only", "nope"], "unknown claim id nope"),
    (["lab", "--lr=abc"], "--lr=abc: expected float"),
    (["lab", "--bogus=1"], "--bogus: unknown setting"),
])
def test_lab_bad_input(args, message, tmp_path, capsys):
    assert main(args + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_lab_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["lab", "--only", "placement", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot write there" in err and "Traceback" not in err


def test_report_of_a_non_lab_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no claims.json here" in capsys.readouterr().err


def _lab_cmd(out, *extra):
    return [sys.executable, "-m", "normlab", "lab", "--out", str(out), "--no-progress",
            "--quick", "--only", "placement", *extra]


def _rows(out):
    from normlab.results import read_rows

    return read_rows(Path(out) / "results.jsonl")[0]


@pytest.mark.slow
def test_resume_after_kill(tmp_path):
    """Kill a run mid-way; the rerun keeps the finished rows and trains only the rest."""
    out = tmp_path / "lab"
    proc = subprocess.Popen(_lab_cmd(out, "--seeds", "10", "--workers", "1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _rows(out)
    assert 2 <= len(before) < 20, "the kill should land mid-study"
    with open(results, "a") as f:
        f.write('{"kind": "run", "key": "cut sh')  # a line cut short by the kill
    r = subprocess.run(_lab_cmd(out, "--seeds", "10", "--workers", "1"), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"results.jsonl line {len(before) + 1}: not valid JSON" in r.stderr  # named
    assert f"{20 - len(before)} runs trained, {len(before)} already done" in r.stdout
    after = _rows(out)
    keys = [row["key"] for row in after]
    assert len(keys) == len(set(keys)) == 20
    assert after[:len(before)] == before  # nothing finished was lost or rewritten


@pytest.mark.slow
def test_config_change_reruns_only_what_it_touches(tmp_path):
    out = tmp_path / "lab"
    subprocess.run(_lab_cmd(out, "--seeds", "2"), check=True, capture_output=True)
    r = subprocess.run(_lab_cmd(out, "--seeds", "3"), check=True, capture_output=True,
                       text=True)
    assert "2 runs trained, 4 already done" in r.stdout
    r = subprocess.run(_lab_cmd(out, "--seeds", "3", "--momentum=0.5"), check=True,
                       capture_output=True, text=True)
    assert "6 runs trained, 0 already done" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["claims"][0]["n_seeds"] == 3  # only the current config's rows count


# --------------------------------------------------------------------------------------------
# the setup line states the settings of the runs shown


def _settings(page: str, claim: str) -> str:
    section = page.split(f'<section id="{claim}">', 1)[1].split("</section>", 1)[0]
    return section.split("Settings of the runs shown: ", 1)[1].split("</p>", 1)[0]


@pytest.mark.slow
def test_setup_line_states_the_settings_that_ran(tmp_path):
    """A preset's scaled steps and an override (--lr=0.2) are what the page states; a claim's
    own values (higher-learning-rates sets lr per run, momentum 0) stay its own; the terminal's
    summary and summary.json carry the same line."""
    out, preset, steps = tmp_path / "lab", "--quick", 6  # 15% of --steps=40
    assert main(["lab", "--out", str(out), preset, "--only", "placement,higher-learning-rates",
                 "--seeds", "1", "--workers", "1", "--no-progress", "--data=tabular",
                 "--hidden=8,4", "--steps=40", "--eval_every=5", "--lr=0.2"]) == 0
    page = (out / "index.html").read_text()
    placement = _settings(page, "placement")
    assert placement.startswith("model mlp, data tabular, hidden 8-4, activation relu, "
                                "placement before (before); after (after), optimizer sgd, "
                                "lr 0.2, momentum 0.9, batch size 64, ")
    n = len(data.load("tabular", 0).x_train)
    assert placement.endswith(f"steps {steps}, epochs {round(steps * 64 / n, 2):g}, "
                              "eval every 5, 1 seed.")
    lr = _settings(page, "higher-learning-rates")
    assert "lr = x (0.03, 0.3, 1, 3), momentum 0, " in lr and "lr 0.2" not in lr
    assert "steps 45, " in lr  # the claim's own 300, scaled by the preset
    summary = json.loads((out / "summary.json").read_text())
    assert [c["settings"] + "." for c in summary["claims"]] == [
        html_unescape(_settings(page, c["id"])) for c in summary["claims"]]


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


def test_setup_line_by_hand():
    from normlab.results.setup import setup_line

    def row(arm, x, seed, **cfg):
        return {"config": {"arm": arm, "x": x, "seed": seed, **cfg}, "epochs": 1.5}

    rows = [row("a", 0.1, 0, lr=0.1, data="d", hidden=[8, 8], spans=[[2, 4], [8, 9]]),
            row("a", 1.0, 1, lr=1.0, data="d", hidden=[8, 8], spans=[[2, 4], [8, 9]]),
            row("b", 0.1, 0, lr=0.1, data="e", hidden=[8, 8], spans=[[2, 4], [8, 9]])]
    assert setup_line(rows, ["data", "lr", "hidden", "spans", "epochs", "missing"]) == (
        "data d (a); e (b), lr = x (0.1, 1), hidden 8-8, spans 2-4 or 8-9, epochs 1.5, "
        "2 seeds")
    assert setup_line([], ["lr"]) == "" and setup_line(rows, None) == ""


# --------------------------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "report"
    r = subprocess.run([sys.executable, "-m", "normlab", "lab", "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out, r


@pytest.mark.slow
def test_lab_quick_end_to_end(quick_report):
    out, r = quick_report
    for name in ("index.html", "results.jsonl", "summary.json", "claims.json", "config.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    ids = [c["id"] for c in summary["claims"]]
    assert ids == [c["id"] for c in CLAIMS if "quick" in c.get("presets", ("quick",))]
    for c in summary["claims"]:
        assert set(c) >= {"id", "title", "verdict", "effect", "ci", "n_seeds", "rule", "paper"}
        assert c["verdict"] in ("reproduced", "not reproduced", "inconclusive")
        # every seed paired, unless one where neither arm reached a steps_to target was left
        # out (the note says so; with none left the claim is 'not measured', effect None)
        assert c["n_seeds"] == 2 or "reached" in (c["note"] or ""), c
        assert c["effect"] is not None or c["verdict"] == "inconclusive"
    claims = json.loads((out / "claims.json").read_text())["claims"]
    planned = sum(len(c["run_keys"]) for c in claims)
    assert len(_rows(out)) == planned
    assert "ETA" in r.stderr  # the progress line
    for c in summary["claims"]:
        assert c["id"] in r.stdout and c["verdict"] in r.stdout  # the terminal table
    # the report re-renders from the rows alone, to the same verdicts
    assert main(["report", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text()) == summary


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        for d in os.environ.get("PATH", "").split(os.pathsep):
            if os.access(os.path.join(d, name), os.X_OK):
                return os.path.join(d, name)
    return None


_PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
const _ce = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); };
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const out = {n: imgs.length, bad: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
               errors: window.__errors,
               sections: [...document.querySelectorAll('section')].map(s => s.id)};
  document.body.setAttribute('data-probe', btoa(JSON.stringify(out)));
});
</script>"""


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"),
                    reason="no chromium here (.ci/run installs it)")
def test_report_in_a_real_browser(quick_report, tmp_path):
    out, _ = quick_report
    page = (out / "index.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + _PROBE, 1))
    r = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path}/u",
                        "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
                       capture_output=True, text=True, timeout=120)
    import base64
    import re

    m = re.search(r'data-probe="([^"]+)"', r.stdout)
    assert m, r.stderr[-2000:]
    probe = json.loads(base64.b64decode(m.group(1)))
    assert probe["errors"] == []
    assert probe["n"] >= len(DEFAULT_IDS) + 6 and probe["bad"] == 0
    assert set(probe["sections"]) >= set(DEFAULT_IDS) | {"explain"}


# --------------------------------------------------------------------------------------------
# explain


def test_explain_groups_match_the_definitions():
    from normlab.report import describe, group_ids

    shape = (2, 6, 3, 3)
    counts = {"batch": 6, "layer": 2, "instance": 12, "group": 4, "rms": 2, "adain": 12}
    for kind, n_groups in counts.items():
        ids = group_ids(kind, shape, groups=2)
        assert ids.shape == shape and ids.max() + 1 == n_groups
        assert (torch.bincount(torch.from_numpy(ids).flatten()) == math.prod(shape)
                // n_groups).all()
    ids = group_ids("batch", shape)
    assert (ids[:, 0] == ids[0, 0, 0, 0]).all()  # channel 0 of every sample, every position
    assert describe("batch").startswith("batch norm: for each channel c, the mean and variance "
                                        "over all N samples and all 3 x 3 positions")


def test_explain_cli_writes_a_picture(tmp_path, capsys):
    png = tmp_path / "g.png"
    assert main(["explain", "group", "--shape", "2,8,4,4", "--groups", "4", "--out",
                 str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "8 groups of 32 values each" in capsys.readouterr().out  # 2 samples x 4 groups
    with pytest.raises(SystemExit):
        main(["explain", "group", "--shape", "2,6,3", "--groups", "4"])


# --------------------------------------------------------------------------------------------
# the lab's arms are the library's layers


def test_lab_ghost_and_renorm_arms_are_the_library_layers():
    import normlab.nn as nl
    from normlab.lab.models import MLP, RENORM

    ghost, renorm = (MLP(40, 10, hidden=(8,), norm=n).net[2] for n in ("ghost:4", "renorm:2"))
    assert type(ghost) is nl.GhostBatchNorm and ghost.virtual_batch_size == 4
    assert type(renorm) is nl.BatchRenorm and renorm.virtual_batch_size == 2
    assert (renorm.r_max, renorm.d_max, renorm.momentum, renorm.warmup_steps) == (
        RENORM["r_max"], RENORM["d_max"], RENORM["momentum"], RENORM["warmup_steps"])
    torch.manual_seed(0)
    x = torch.randn(12, 8, dtype=torch.float64) * 3 + 1
    ghost = ghost.double()
    ref = torch.nn.BatchNorm1d(8, dtype=torch.float64)  # batch norm on each chunk, in order
    torch.testing.assert_close(ghost(x), torch.cat([ref(c) for c in x.split(4)]))
    torch.testing.assert_close(ghost.running_mean, ref.running_mean)


def test_style_contrast_measurement_on_a_tiny_configuration():
    pytest.importorskip("skimage")
    from normlab.style.feedforward import train_stylizer

    batch = train_stylizer("batch", 0, steps=20, size=32, batch=2)
    inst = train_stylizer("instance", 0, steps=20, size=32, batch=2)
    # instance norm removes a contrast change of the content up to eps; batch norm does not
    assert inst["final"]["contrast_change"] < 0.01
    assert batch["final"]["contrast_change"] > 10 * inst["final"]["contrast_change"]
    assert set(inst["images"]) == {"content", "low_contrast_content", "output",
                                   "output_low_contrast"}


# --------------------------------------------------------------------------------------------
# sequences


@pytest.mark.slow
def test_sequence_data_resampled_padded_and_deterministic():
    d = data.sequences(((8, 12), (36, 40)), ((60, 80),))
    assert d is data.sequences(((8, 12), (36, 40)), ((60, 80),))  # cached: same arguments
    lengths = d.len_train
    assert d.x_train.shape == (4000, int(lengths.max()), 1)
    assert ((lengths >= 8) & (lengths <= 12) | (lengths >= 36) & (lengths <= 40)).all()
    assert 0.3 < (lengths <= 12).float().mean() < 0.7  # half from each span
    pad = torch.arange(d.x_train.shape[1])[None, :] >= lengths[:, None]
    assert (d.x_train[..., 0][pad] == 0).all()
    # the resampled signal keeps the original's end points
    base = data.load("mnist1d", 0)
    i = 5
    assert d.x_train[i, 0, 0] == pytest.approx(float(base.x_train[i, 0, 0]), abs=1e-6)
    assert d.x_train[i, lengths[i] - 1, 0] == pytest.approx(float(base.x_train[i, 0, -1]),
                                                            abs=1e-6)
    x_long, y_long, len_long = d.extra["long"]
    assert len_long.min() >= 60 and torch.equal(y_long, d.y_test)


def test_masked_sequence_cnn_does_not_depend_on_padding():
    from normlab.lab.models import SeqCNN

    torch.manual_seed(0)
    lengths = torch.tensor([3, 9, 5, 9])
    x = torch.randn(4, 9, 1) * (torch.arange(9)[None, :, None] < lengths[:, None, None])
    outs = {}
    for masked in (True, False):
        model = SeqCNN(1, 4, channels=(6, 6), kernel_size=3, mask_norm=masked)
        model(x, lengths).sum().backward()  # one training step's statistics
        model.eval()
        with torch.no_grad():
            padded = model(x, lengths)[0]
            alone = model(x[:1, :3], lengths[:1])[0]  # the first sequence without padding
        outs[masked] = (padded, alone)
    torch.testing.assert_close(outs[True][0], outs[True][1])
    assert not torch.allclose(outs[False][0], outs[False][1], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_recurrent_lab_runs(norm):
    cfg = {**BASE, "data": "mnist1d_seq", "model": "rnn", "norm": norm, "optimizer": "adam",
           "lr": 0.003, "batch_size": 8, "steps": 4, "eval_every": 2, "rnn_hidden": 8,
           "long_lengths": [[50, 60]], "seed": 0, "claim": "x", "arm": norm, "x": None}
    out = train_run(cfg)
    assert out["status"] == "ok"
    assert {"test_acc", "test_acc_long", "train_acc"} <= set(out["final"])
    one = train_run({**cfg, "batch_size": 1})
    if norm == "batch":
        assert one["status"] == "error" and "more than 1 value" in one["error"]
    else:
        assert one["status"] == "ok"


@pytest.mark.slow
def test_padding_claim_measures_changed_predictions():
    cfg = {**BASE, "data": "mnist1d_seq", "model": "seqcnn", "norm": "batch",
           "seq_lengths": [[8, 12], [36, 40]], "channels": [8, 8], "batch_size": 16,
           "steps": 10, "eval_every": 10, "eval_unpadded": True, "seed": 0, "claim": "x",
           "arm": "a", "x": None}
    masked = train_run({**cfg, "mask_norm": True})["final"]
    unmasked = train_run({**cfg, "mask_norm": False})["final"]
    assert masked["changed_unpadded"] == 0.0
    assert masked["test_acc_unpadded"] == pytest.approx(masked["test_acc"], abs=1e-6)
    assert unmasked["changed_unpadded"] > 0.0
