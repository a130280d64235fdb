"""The plumbing of the benchmarks that train (their measurements are not CI's business)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from benchmarks.bench_small_recipe import fixed_split, run_name, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cliques(n):
    return {f"work{i:03d}": [f"work{i:03d}/v{j}.wav" for j in range(4)] for i in range(n)}


def test_fixed_split_keeps_the_held_out_works_whatever_the_training_size():
    every = cliques(20)
    small, large = fixed_split(every, 5, 3, 4), fixed_split(every, 13, 3, 4)
    assert small["test"] == large["test"] and small["valid"] == large["valid"]
    assert sorted(large["test"]) == [f"work{i:03d}" for i in range(16, 20)]
    assert sorted(large["valid"]) == ["work013", "work014", "work015"]
    assert sorted(small["train"]) == [f"work{i:03d}" for i in range(5)]
    assert not set(large["train"]) & (set(large["valid"]) | set(large["test"]))
    assert large["train"]["work003"] == every["work003"]  # every version kept


def test_fixed_split_refuses_more_works_than_there_are():
    with pytest.raises(ValueError, match="22 works asked, 21 available"):
        fixed_split(cliques(21), 15, 3, 4)


def test_table_gives_gains_and_mean_over_seeds():
    rows = []
    for seed, (before, after) in enumerate([(0.1, 0.3), (0.1, 0.5)]):
        row = {"run": run_name("config/small-clews.yaml", seed, [], None), "seed": seed}
        row["train_seconds"] = 600
        row.update(untrained_track=before, untrained_20s=before, trained_track=after)
        row.update(trained_20s=after)
        rows.append(row)
    text = table(rows)
    assert "small-clews-s0" in text and "small-clews-s1" in text
    assert "small-clews (2 seeds): trained MAP track 0.400 +-0.141" in text
    assert "gain track 0.300 +-0.141" in text
    other = dict(rows[0], run=run_name("config/small-dvinetp.yaml", 0, [], None))
    other.update(trained_track=0.2, trained_20s=0.35)
    paired = table(rows + [other]).splitlines()[-1]
    assert "small-clews - small-dvinetp, paired by seed (1 seed)" in paired
    assert "track 0.100 +-n/a, 20 s -0.050 +-n/a" in paired
    assert run_name("config/small-clews.yaml", 1, ["a=1"], None) != run_name(
        "config/small-clews.yaml", 1, ["a=2"], None
    )


def test_demo_seeds_table_gives_mean_and_range():
    from benchmarks.bench_demo_seeds import table as seeds_table

    def summary(before, after):
        levels = {"track": after, "20 s windows": after - 0.1}
        return {
            "results": {
                "untrained": {lv: {"MAP": {"mean": before}} for lv in levels},
                "trained": {lv: {"MAP": {"mean": v}} for lv, v in levels.items()},
            },
            "seconds": {"training": 180.0},
        }

    text = seeds_table({0: summary(0.2, 0.6), 1: summary(0.3, 0.8)})
    last = text.splitlines()[-1]
    assert last.startswith("mean")
    assert "0.250 [0.200, 0.300]" in last and "0.700 [0.600, 0.800]" in last
    assert "0.600 [0.500, 0.700]" in last


def test_pitch_class_baselines_ignore_transposition_and_where_a_passage_plays():
    import torch

    from benchmarks.bench_pitch_class_baseline import fft2d_distances, mean_chroma_distances

    gen = torch.Generator().manual_seed(0)
    passage = torch.rand(12, 75, generator=gen)  # one patch long
    piece, other = passage.repeat(1, 4), torch.rand(12, 300, generator=gen)
    transposed = torch.roll(piece, 5, dims=0)
    chroma = mean_chroma_distances([piece, transposed, other])
    assert chroma[0, 1] < 1e-6 < chroma[0, 2]
    # transposed and started 30 frames later: every patch a circular shift of the passage's
    later = torch.roll(transposed, 30, dims=1)
    fft = fft2d_distances([piece, later, other])
    assert fft[0, 1] < 1e-6 and fft[0, 2] > 0.01
    assert fft.shape == (3, 3) and torch.allclose(fft, fft.T)


def test_pitch_class_baselines_cut_each_track_to_its_span(tmp_path):
    # a partial corpus's spans.json: each track read only where it plays its work
    from benchmarks.bench_pitch_class_baseline import DEFAULT_CONF, scores, track_pitch_classes
    from lib.audio import load_audio
    from lib.config import load_run_config
    from lib.metadata import load_metadata
    from lib.model_base import build_model
    from tests.corpus import folder_corpus

    # tracks longer than the config's 20 s shingles, all of which are read
    root = folder_corpus(tmp_path, works=3, versions=2, seconds=30, seed=0, split="0,0,1")
    info, splits = load_metadata(root / "meta.pt")
    files = sorted(song["filename"] for song in info.values())
    spans = {f: {"start": 1.0 + i % 2, "end": 4.0 + i % 2 * 3} for i, f in enumerate(files)}
    conf = load_run_config(DEFAULT_CONF)
    model = build_model(conf.model, sr=conf.data.samplerate).eval()
    rate = conf.data.samplerate
    _, whole = track_pitch_classes(model, info, splits, root / "audio", "test", rate)
    _, cut = track_pitch_classes(model, info, splits, root / "audio", "test", rate, spans)
    keys = [k for keys in splits["test"].values() for k in keys]
    for key, full, part in zip(keys, whole, cut):
        filename = info[key]["filename"]
        track = len(load_audio(root / "audio" / filename, samplerate=rate)) / rate
        seconds = spans[filename]["end"] - spans[filename]["start"]
        # every frame of the track (not only its first shingle's), then the span's share of them
        assert full.shape[-1] == pytest.approx(track * 216 / 20, abs=2)
        assert part.shape[-1] == pytest.approx(seconds * 216 / 20, abs=2)
    result = scores(root / "meta.pt", root / "audio", "test", spans=spans)
    assert result["2D-FFT"]["n_queries"] == 6
    del spans[files[0]]
    with pytest.raises(ValueError, match=f"{files[0]}: not in the spans file"):
        scores(root / "meta.pt", root / "audio", "test", spans=spans)


def test_ssl_labels_split_keeps_held_out_works_and_adds_unlabelled_ones():
    from benchmarks.bench_ssl_labels import split_by_number
    from benchmarks.bench_ssl_labels import table as ssl_table

    every = cliques(20)
    labelled, pretraining = split_by_number(every, 10, 4, 2, 3)
    assert sorted(labelled["train"]) == [f"work{i:03d}" for i in range(10)]
    assert sorted(pretraining["train"]) == [f"work{i:03d}" for i in range(14)]
    assert labelled["valid"] == pretraining["valid"] and labelled["test"] == pretraining["test"]
    assert sorted(labelled["test"]) == ["work017", "work018", "work019"]
    assert sorted(labelled["valid"]) == ["work015", "work016"]
    with pytest.raises(ValueError, match="21 works asked"):
        split_by_number(every, 12, 4, 2, 3)
    rows = [
        {"arm": "scratch", "fraction": 0.1, "seed": s, "track": t, "20s": t - 0.1, "seconds": 60}
        for s, t in ((0, 0.4), (1, 0.6))
    ]
    rows.append({"arm": "clews (no labels)", "fraction": None, "seed": 0, "track": 0.3,
                 "20s": 0.2, "seconds": 120})
    lines = ssl_table(rows).splitlines()
    assert lines[1].split()[:4] == ["clews", "(no", "labels)", "none"]
    assert "0.500 +-0.141" in lines[2] and "10%" in lines[2] and lines[2].endswith("2.0")


def test_pitch_class_baselines_read_each_track_at_its_filename(tmp_path):
    # a DVI2 metadata file keys versions by id, not by path: the baseline reads ``filename``
    from benchmarks.bench_pitch_class_baseline import scores
    from lib.metadata import load_metadata, save_metadata
    from tests.corpus import folder_corpus

    root = folder_corpus(tmp_path, works=3, versions=2, seconds=8, seed=0, split="0,0,1")
    info, splits = load_metadata(root / "meta.pt")
    ids = {key: f"V-{i:07d}" for i, key in enumerate(sorted(info))}
    save_metadata(
        root / "by-id.pt",
        {ids[k]: song for k, song in info.items()},
        {s: {c: [ids[k] for k in keys] for c, keys in p.items()} for s, p in splits.items()},
    )
    result = scores(root / "by-id.pt", root / "audio", "test")
    assert set(result) == {"mean chroma", "2D-FFT"}
    for agg in result.values():
        assert agg["n_queries"] == 6 and 0 < agg["MAP"][0] <= 1


def test_paper_benchmark_runs_end_to_end_and_reuses_finished_runs(tmp_path):
    # a smoke run: 4 training, 2 validation and 3 test works of the weak-label corpus, CLEWS for
    # one epoch; then the same command again reuses the run
    from benchmarks import bench_paper
    from tests.corpus import run_script

    out, results = tmp_path / "out", tmp_path / "results"
    cmd = [
        sys.executable, "-m", "benchmarks.bench_paper", f"--out={out}", f"--results={results}",
        "--corpora", "partial", "--models", "clews", "--seeds", "0", "--ablations", "none",
        "--query_lengths", "10", "30", "--train_works=4", "--valid_works=2", "--test_works=3",
        "--versions=2", "--njobs=2", "--epochs=1", "--lr_factors", "1", "4", "--lr_extend=1",
    ]
    first = run_script(cmd)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = sorted(p.name for p in results.glob("*.json"))
    assert rows == [
        "analysis.json", "partial-clews-s0.json", "partial-excerpts.json",
        "partial-pitch-classes.json", "partial-shingle-pairs.json", "tuning.json",
    ]
    # tuning: both rates judged on the validation works, then one more beyond the better one (an
    # end of the grid), the main run at the best of the three
    tuning = json.loads((results / "tuning.json").read_text())["clews"]
    score = bench_paper.validation_score
    better = "1" if score(tuning["1"]) >= score(tuning["4"]) else "4"  # ties: the first
    assert sorted(tuning, key=float) == (["0.25", "1", "4"] if better == "1" else ["1", "4", "16"])
    assert set(tuning["4"]) == {"track", "q10", "q30"}
    chosen = max(tuning, key=lambda f: score(tuning[f]))
    lr_override = bench_paper.lr_overrides("clews", float(chosen))
    facts = json.loads((results / "partial-excerpts.json").read_text())
    assert list(facts) == ["10", "20", "30", "60", "90"]
    assert facts["10"]["same"] <= facts["60"]["same"] and facts["90"]["one"] > 0.5
    pairs = json.loads((results / "partial-shingle-pairs.json").read_text())
    assert pairs["excerpt"] == 60 and [pairs[s]["n"] for s in ("10", "20")] == [6, 3]
    assert sum(pairs["10"]["shares"]) == pytest.approx(1.0)
    row = json.loads((results / "partial-clews-s0.json").read_text())
    assert row["overrides"] == ["data.audiolen=60", *lr_override] and row["epochs"] == 1
    assert (results / "untuned" / "partial-clews-s0.json").is_file() == (chosen != "1")
    # the tuning run at the chosen rate is the main run of seed 0 (renamed, not trained again)
    for factor in set(tuning) - {"1"}:
        tuning_run = out / "partial" / "runs" / f"partial-clews-lr{factor}x-s0"
        assert tuning_run.is_dir() == (factor != chosen)
    assert row["steps_per_epoch"] is None and row["train_seconds"] > 0
    for which in ("untrained", "trained"):
        assert set(row[which]) == {"track", "q10", "q30"}
        for level in row[which].values():
            assert 0 < level["MAP"][0] <= 1 and level["MAP"][1] > 0 and level["MR1"][0] >= 1
    floor = json.loads((results / "partial-pitch-classes.json").read_text())
    assert set(floor) == {"mean chroma", "2D-FFT", "mean chroma (work only)", "2D-FFT (work only)"}
    spans = json.loads((out / "partial" / "audio" / "spans.json").read_text())
    assert len(spans) == 9 * 2
    text = (results / "tables.txt").read_text()
    assert "partial corpus: track level" in text and "untrained CLEWS" in text and "2D-FFT" in text
    assert "learning rates tried" in text
    assert "60 s: one holds music of its work" in text
    assert " 10 s shingles (6 per excerpt): 0: " in text
    assert "| CLEWS | 1 | " in (results / "tables.md").read_text()  # the README's tables
    assert (results / "map_vs_query_length.png").stat().st_size > 0
    # reused: nothing is trained or tested again (no new log), the same tables
    logs = sorted((out / "partial" / "logs").iterdir())
    again = run_script(cmd)
    assert again.returncode == 0 and sorted((out / "partial" / "logs").iterdir()) == logs
    assert (results / "tables.txt").read_text() == text
    # other settings under the same results are refused, not mixed in
    args = bench_paper.parse_args([c for c in cmd[3:] if c != "--epochs=1"] + ["--epochs=2"])
    with pytest.raises(SystemExit, match="partial-clews-s0.json ran 1 epochs"):
        bench_paper.train_and_test(args, "partial", "clews", None, [], 0, "audio", "meta.pt")
    assert bench_paper.main(["--table", f"--results={results}"]) == 0
    # the run's analysis, made by the benchmark while its checkpoint was there, re-computes
    # test.py's MAP from the cached embeddings; the table ignores it
    from benchmarks import paper_analysis

    kept = json.loads((results / "analysis.json").read_text())
    # (and the run at the config rate too when another rate was chosen: set aside in untuned/)
    untuned = {"untuned/partial-clews-s0"} if chosen != "1" else set()
    assert set(kept) == {"partial-clews-s0"} | untuned
    assert kept["partial-clews-s0"]["row"] == bench_paper.fingerprint(row)
    analysed = kept["partial-clews-s0"]["lengths"]
    assert sorted(analysed) == ["10", "30"]
    for length, result in analysed.items():
        assert result["all windows"] == pytest.approx(row["trained"][f"q{length}"]["MAP"][0])
        assert 0 < result["clip in work"] <= 1 and 0 < result["clip outside"] <= 1
        assert len(result["pairs"]["shared"]) + len(result["pairs"]["none"]) == 3 * 2
        assert result["reductions"]["bpwr-5"] == pytest.approx(result["all windows"])
    # a later session, without the run's folder, reports the kept analysis
    analysis_args = [f"--out={out}", f"--results={results}", "--corpora", "partial"]
    shutil.rmtree(out / "partial" / "runs" / "partial-clews-s0")
    assert paper_analysis.main(analysis_args) == 0
    assert json.loads((results / "analysis.json").read_text()) == kept
    assert "relevant test pairs" in (results / "analysis.txt").read_text()
    assert (results / "analysis-partial.png").stat().st_size > 0
    # a row with neither a checkpoint nor a kept analysis is named, exit status 1
    other = {**row, "run": "partial-clews-s1", "seed": 1, "train_seconds": 1.0}
    (results / "partial-clews-s1.json").write_text(json.dumps(other))
    result = run_script([sys.executable, "-m", "benchmarks.paper_analysis", *analysis_args])
    assert result.returncode == 1 and "left out of the analysis: partial-clews-s1" in result.stderr
    (results / "partial-clews-s1.json").unlink()
    # the benchmark trains such a run again (train.py is deterministic on a CPU), checks that it
    # gives its row's MAP, and analyses it: the same analysis as the first time
    (results / "analysis.json").unlink()
    reproduced = run_script(cmd)
    assert reproduced.returncode == 0, reproduced.stdout[-3000:] + reproduced.stderr[-3000:]
    assert "[analysis 1/1] partial-clews-s0" in reproduced.stdout
    again = json.loads((results / "analysis.json").read_text())["partial-clews-s0"]
    assert again["row"] == kept["partial-clews-s0"]["row"]
    for length, result in again["lengths"].items():
        first = kept["partial-clews-s0"]["lengths"][length]
        assert result["all windows"] == pytest.approx(first["all windows"])
        assert result["clip in work"] == pytest.approx(first["clip in work"])
    assert bench_paper.main(["--table", f"--results={results}"]) == 0
    assert (results / "tables.txt").read_text() == text


def paper_row(model, seed, maps, variant=None, corpus="partial"):
    """A bench_paper row whose trained MAP is ``maps`` = {level: MAP} (untrained: half)."""
    from benchmarks.bench_paper import run_name

    def levels(scale):
        return {k: {"MAP": [v * scale, 0.05], "MR1": [3.0, 0.5], "ARP": [10.0, 1.0]}
                for k, v in maps.items()}

    return {"run": run_name(corpus, model, variant, seed), "corpus": corpus, "model": model,
            "variant": variant, "seed": seed, "epochs": 2, "steps_per_epoch": 50, "overrides": [],
            "train_seconds": 60 + seed * 60,
            "trained": levels(1.0), "untrained": levels(0.5)}


def test_paper_tables_give_mean_sd_paired_differences_and_ablations():
    from benchmarks.bench_paper import plan, parse_args, tables

    rows = [
        paper_row("clews", 0, {"track": 0.5, "q10": 0.3, "q20": 0.4}),
        paper_row("clews", 1, {"track": 0.7, "q10": 0.5, "q20": 0.6}),
        paper_row("dvinetp", 0, {"track": 0.4, "q10": 0.1, "q20": 0.2}),
        paper_row("dvinetp", 1, {"track": 0.4, "q10": 0.2, "q20": 0.2}),
        paper_row("clews", 0, {"track": 0.2, "q10": 0.1, "q20": 0.1}, variant="pos-max"),
    ]
    floors = {"partial": {"2D-FFT": {"track": {"MAP": [0.11, 0.02], "MR1": [9.0, 1.0],
                                               "ARP": [30.0, 2.0]}}}}
    text = tables(rows, floors)
    lines = text.splitlines()
    clews = next(line for line in lines if line.startswith("CLEWS  "))
    assert "0.600 +-0.141" in clews and "+-0.050" in clews  # MAP over seeds, mean run c.i.
    assert clews.split()[-2:] == ["100", "1.5"]  # steps, mean training minutes
    # a run whose training time was not recorded (an adopted tuning run) is left out of the mean
    rows[0] = dict(rows[0], train_seconds=None)
    timed = next(line for line in tables(rows, floors).splitlines() if line.startswith("CLEWS  "))
    assert timed.split()[-2:] == ["100", "2.0"]
    rows[1] = dict(rows[1], train_seconds=None)
    timed = next(line for line in tables(rows, floors).splitlines() if line.startswith("CLEWS  "))
    assert timed.split()[-2:] == ["100", "-"]
    assert any(line.strip().startswith("untrained CLEWS") and "0.300 +-0.071" in line
               for line in lines)
    assert any("2D-FFT" in line and "0.110 +-n/a" in line for line in lines)
    # segment level: a column per query length; CLEWS - DVINet+ paired by seed
    seg = lines[lines.index(next(x for x in lines if "segment level" in x)) + 1]
    assert seg.split() == ["model", "seeds", "track", "10", "s", "20", "s"]
    paired = next(line for line in lines if "CLEWS - DVINet+" in line)
    assert "track 0.200 +-0.141" in paired and "q10 0.250 +-0.071" in paired
    assert "q20 0.300 +-0.141" in paired
    assert any(line.startswith("CLEWS (pos-max)") for line in lines)  # the ablation table
    ablation = lines[lines.index(next(x for x in lines if "ablations" in x)):]
    assert not any(line.startswith("DVINet+") for line in ablation)
    assert any("CLEWS - CLEWS (pos-max) (1 seeds): track 0.300" in line for line in ablation)
    assert not any("CLEWS (pos-max)" in line for line in lines[: len(lines) - len(ablation)])
    # the same tables in markdown, for the README
    markdown = tables(rows, floors, markdown=True).splitlines()
    assert "| model | seeds | MAP | run c.i. | MR1 | NAR (%) | steps | train min |" in markdown
    segment_head = markdown.index("| model | seeds | track | 10 s | 20 s |")
    assert markdown[segment_head + 1] == "|---" * 5 + "|"
    assert "| DVINet+ | 2 | 0.400 +-0.000 | 0.150 +-0.071 | 0.200 +-0.000 |" in markdown
    assert "| *floors (no training):* |  |  |  |  |  |  |  |" in markdown
    assert "| 2D-FFT | - | 0.110 +-n/a | +-0.020 | 9.0 +-n/a | 30.00 +-n/a |  |  |" in markdown
    assert any(line.startswith("- CLEWS - CLEWS (pos-max) (1 seeds): ") for line in markdown)
    # the plan: seed by seed, every model, then the ablations of the weak-label corpus
    args = parse_args(["--corpora", "partial", "--models", "clews", "move", "--seeds", "0", "1",
                       "--ablations", "gamma-2"])
    jobs = plan(args)
    tuning = [(c, m) for c, m, _, _, _ in jobs[:2]]  # the learning rates first, one job a model
    assert tuning == [("tune", "clews"), ("tune", "move")]
    order = [(m, v, s) for _, m, v, _, s in jobs[2:]]
    assert order == [("clews", None, 0), ("move", None, 0), ("clews", None, 1), ("move", None, 1),
                     ("clews", "gamma-2", 0), ("clews", "gamma-2", 1)]
    with pytest.raises(SystemExit):
        parse_args(["--ablations", "pos-median"])


def test_paper_chance_level_follows_the_test_set_the_rows_were_run_with():
    from benchmarks.bench_paper import chance_map, parse_args

    # the corpus's 40 test works x 4 versions: 3 relevant among 159 candidates, about 0.048
    assert chance_map(parse_args([]), "partial") == pytest.approx(0.0478, abs=5e-4)
    # 3 works x 2 versions: 1 relevant among 5, at rank 1..5 alike: (1 + 1/2 + ... + 1/5) / 5
    small = parse_args(["--test_works=3", "--versions=2"])
    assert chance_map(small, "partial") == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 5)


def test_paper_budget_scales_with_the_excerpts_per_step():
    from benchmarks.bench_paper import ABLATIONS, budget, excerpts_per_step

    assert excerpts_per_step("clews") == 32
    assert excerpts_per_step("clews", ABLATIONS["batch-16"]) == 64
    assert excerpts_per_step("clews", ABLATIONS["batch-16x2"]) == 32
    (e, s), (e16, s16) = budget("partial", "clews"), budget("partial", "clews", None,
                                                            ABLATIONS["batch-16"])
    assert 0.45 < (e16 * s16) / (e * s) < 0.55  # twice the excerpts, half the steps
    assert budget("partial", "clews", None, ABLATIONS["batch-16x2"]) == (e, s)


@pytest.mark.parametrize("variant, shingles", [("shingles-20", 3), ("shingles-60", 1)])
def test_paper_shingle_ablations_train_and_embed_on_the_weak_label_excerpts(variant, shingles):
    """The ablations that change CLEWS's shingles fit the weak-label corpus's training excerpts:
    as train.py gets them, 3 shingles (or 1) per excerpt go through the model and its loss, and
    a 10 s query window, shorter than a shingle, still gives one embedding."""
    import torch

    from benchmarks.bench_paper import ABLATIONS, excerpt_overrides
    from lib.config import load_config
    from lib.extract import window_embeddings
    from lib.model_base import build_model

    overrides = excerpt_overrides("partial", "clews") + ABLATIONS[variant]
    conf = load_config(["jobname=t", "conf=config/small-clews.yaml", *overrides])
    torch.manual_seed(0)
    model = build_model(conf.model, sr=conf.data.samplerate)
    x = 0.1 * torch.randn(4, int(conf.data.audiolen * conf.data.samplerate))
    labels = torch.tensor([0, 0, 1, 1])
    z, extra = model.embed(model.prepare(x))
    assert z.shape[:2] == (4, shingles)
    loss, _ = model.loss(labels, torch.arange(4), z, extra)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    z = window_embeddings(model.eval(), x[0, : 20 * conf.data.samplerate], 10, 5, "cpu")
    assert z.shape[0] == 3 and torch.isfinite(z).all()


def test_paper_other_budgets_are_variants_with_a_table_of_their_own():
    from benchmarks.bench_paper import budget, parse_args, plan, tables

    args = parse_args(["--corpora", "partial", "--models", "clews", "--seeds", "0",
                       "--ablations", "gamma-2", "--budget_min", "30"])
    assert [(m, v) for _, m, v, _, _ in plan(args)][1:] == [("clews", "30min"),
                                                        ("clews", "gamma-2-30min")]
    (e10, s10), (e30, s30) = budget("partial", "clews"), budget("partial", "clews", 30)
    assert 2.9 < (e30 * s30) / (e10 * s10) < 3.1
    rows = [
        paper_row("clews", 0, {"track": 0.5, "q10": 0.3}),
        paper_row("dvinetp", 0, {"track": 0.4, "q10": 0.1}),
        paper_row("clews", 0, {"track": 0.6, "q10": 0.45}, variant="30min"),
    ]
    lines = tables(rows, {}).splitlines()
    start = lines.index(next(x for x in lines if "other training budgets" in x))
    longer = lines[start:]
    assert any(x.startswith("CLEWS (30min)") and "0.450" in x for x in longer)
    assert any(x.startswith("CLEWS  ") for x in longer)  # next to the corpus's budget
    assert not any(x.startswith("DVINet+") for x in longer)  # no longer run of its own
    assert not any("30min" in x for x in lines[:start])  # not among the main rows or pairs
    with pytest.raises(SystemExit):
        parse_args(["--budget_min", "0"])


def test_excerpt_overlap_counts_excerpts_that_hold_the_same_passage():
    from benchmarks.bench_paper import excerpt_overlap

    # work000: both versions are the work for their first 30 s (the same 30 s of it) in 60 s
    # tracks: a whole-track excerpt always holds it, a 10 s one when it starts before 30 s
    half = {"start": 0.0, "end": 30.0, "duration": 60.0, "work_start": 0.0, "work_end": 30.0}
    spans = {"work000/v0.wav": half, "work000/v1.wav": dict(half)}
    keys = list(spans)
    whole = excerpt_overlap(spans, keys, excerpt_s=60.0)
    assert whole == {"one": 1.0, "both": 1.0, "same": 1.0}
    short = excerpt_overlap(spans, keys, excerpt_s=10.0, draws=4000)
    assert short["one"] == pytest.approx(0.6, abs=0.03)  # a start in [0, 30) of [0, 50)
    assert short["both"] == pytest.approx(0.36, abs=0.03)
    assert short["same"] < short["both"]
    # other parts of the work: music of the work in both excerpts, never the same passage
    other = dict(half, work_start=30.0, work_end=60.0)
    spans["work000/v1.wav"] = other
    apart = excerpt_overlap(spans, keys, excerpt_s=60.0)
    assert apart == {"one": 1.0, "both": 1.0, "same": 0.0}


def test_matching_shingle_pairs_counts_disjoint_segment_pairs_of_one_passage():
    from benchmarks.bench_paper import matching_shingle_pairs

    # both versions are the same 30 s of the work at the start of 60 s tracks: a 60 s excerpt
    # (always from 0 s) cut in 10 s shingles pairs shingles 0-2 of one with 0-2 of the other
    half = {"start": 0.0, "end": 30.0, "duration": 60.0, "work_start": 0.0, "work_end": 30.0}
    spans = {"work000/v0.wav": half, "work000/v1.wav": dict(half)}
    keys = list(spans)
    same = matching_shingle_pairs(spans, keys, excerpt_s=60.0, shingle_s=10.0)
    assert same == {"n": 6, "shares": [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]}
    # v1 plays the work's 15-45 s: its shingle 0 (work 15-25 s) shares 5 s with v0's shingles 1
    # and 2, its shingle 1 (25-35 s) 5 s with v0's shingle 2; only 2 of them are disjoint
    spans["work000/v1.wav"] = dict(half, work_start=15.0, work_end=45.0)
    shifted = matching_shingle_pairs(spans, keys, excerpt_s=60.0, shingle_s=10.0)
    assert shifted["shares"] == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    # ... and none when 6 s in common are asked for; 20 s shingles: v0's work 0-20 s and 20-30 s
    # both share 5 s or more with v1's 15-35 s, nothing with its 35-45 s: one disjoint pair
    strict = matching_shingle_pairs(spans, keys, excerpt_s=60.0, shingle_s=10.0, passage_s=6.0)
    assert strict["shares"][0] == 1.0
    longer = matching_shingle_pairs(spans, keys, excerpt_s=60.0, shingle_s=20.0)
    assert longer == {"n": 3, "shares": [0.0, 1.0, 0.0, 0.0]}


def test_paper_training_seconds_of_a_resumed_run_add_up_every_call_of_its_log(tmp_path):
    # two train.py calls, as when a session ended inside a run: the first logged epochs until
    # 100 s after it began, the second until 50 s; a run folder without a log spans nothing
    import time

    from torch.utils.tensorboard import SummaryWriter

    from benchmarks.bench_paper import logged_training_seconds

    for call, span in enumerate((100.0, 50.0)):
        writer = SummaryWriter(str(tmp_path), filename_suffix=f".call{call}")
        start = time.time()
        for step, at in enumerate((0.0, span / 2, span)):
            writer.add_scalar("train/l_main", 1.0, step, walltime=start + at)
        writer.close()
    assert logged_training_seconds(str(tmp_path)) == pytest.approx(150.0, abs=1.0)
    assert logged_training_seconds(str(tmp_path / "missing")) == 0.0


def test_paper_scores_corpus_command_renders_partial_versions_of_real_compositions():
    # rendering itself: tests/test_score_corpus.py (the same command line)
    import subprocess

    from benchmarks.bench_paper import scores_command

    cmd = scores_command("out/scores/audio", 170, 4, 2, 90.0)
    assert cmd[1:3] == ["-m", "lib.score_corpus"]
    args = cmd[3:]
    assert args == ["--out=out/scores/audio", "--works=170", "--versions=4", "--seed=0",
                    "--samplerate=8000", "--variation=partial", "--work_seconds=90", "--njobs=2"]
    help_text = subprocess.run(  # every option is one of the module's
        [sys.executable, "-m", "lib.score_corpus", "--help"], capture_output=True, text=True
    ).stdout
    for option in ("--out", "--works", "--versions", "--seed", "--samplerate", "--variation",
                   "--work_seconds", "--njobs"):
        assert option in help_text


def test_paper_budget_fills_the_same_minutes_for_every_model():
    from benchmarks.bench_paper import (CORPORA, MODELS, STEP_OVERHEAD, STEP_SECONDS, budget,
                                        excerpt_overrides, step_seconds)

    for name, spec in CORPORA.items():
        for model in MODELS:
            epochs, per_epoch = budget(name, model)
            seconds = epochs * per_epoch * STEP_SECONDS[spec["excerpt"]][model] * STEP_OVERHEAD
            assert seconds == pytest.approx(spec["budget_min"] * 60, rel=0.05), (name, model)
            assert per_epoch <= 100
    # whole-excerpt models embed the 60 s excerpt at once; CLEWS keeps its 10 s shingles
    assert excerpt_overrides("partial", "dvinetp") == [
        "data.audiolen=60", "model.shingling.len=60", "model.shingling.hop=60"]
    assert excerpt_overrides("partial", "clews") == ["data.audiolen=60"]
    assert excerpt_overrides("arrangement", "move")[0] == "data.audiolen=20"
    assert 0 < step_seconds("move", 20, repeats=1) < 60  # --measure_steps times a real step


def test_paper_analysis_places_windows_and_shared_passages():
    from benchmarks.paper_analysis import shared_work_seconds, window_overlaps

    span = {"start": 25.0, "end": 47.0, "work_start": 10.0, "work_end": 40.0}
    assert window_overlaps(span, 10, 6).tolist() == [0, 0, 5, 10, 7, 0]
    assert window_overlaps(span, 60, 2).tolist() == [22, 0]
    assert shared_work_seconds(span, {"work_start": 35.0, "work_end": 80.0}) == 5.0
    assert shared_work_seconds(span, {"work_start": 45.0, "work_end": 80.0}) == 0.0


def test_paper_analysis_ranks_relevant_pairs_against_irrelevant_candidates():
    import torch

    from benchmarks.paper_analysis import one_window, pair_ranks
    from lib.retrieval import Embeddings

    # tracks 0, 1 (work 0) share 20 s of it, track 2 (work 0) none; tracks 3, 4 are work 1
    spans = {i: {"work_start": a, "work_end": b} for i, (a, b) in
             enumerate([(0, 30), (10, 40), (60, 90), (0, 30), (0, 30)])}
    emb = Embeddings(torch.tensor([0, 0, 0, 1, 1]), torch.arange(5), torch.zeros(5, 1, 2), None)
    dist = torch.tensor([[0.0, 1, 5, 2, 9]]).repeat(5, 1)
    ranks = pair_ranks(dist, emb.subset(slice(0, 1)), emb, spans)
    assert ranks == {"shared": [1.0], "none": [0.5]}  # 1 is nearer than 2 and 9; 5 than 9 only
    picked = one_window(Embeddings(emb.cliques, emb.ids, torch.arange(30.0).view(5, 3, 2), None),
                        [2, 0, 1, 1, 0])
    assert picked.z.shape == (5, 1, 2) and picked.z[0, 0].tolist() == [4.0, 5.0]


def test_paper_tuning_picks_the_best_validation_rate_and_sets_aside_other_rows(tmp_path):
    from benchmarks import bench_paper

    args = bench_paper.parse_args([f"--out={tmp_path / 'out'}", f"--results={tmp_path / 'res'}",
                                   "--lr_factors", "0.25", "1", "4"])

    def levels(value):
        return {"track": {"MAP": [value, 0.1]}, "q20": {"MAP": [value + 0.1, 0.1]}}

    assert bench_paper.chosen_factor(args, "clews") == 1.0  # nothing tried yet
    bench_paper.record_tuning(args, "clews", 1.0, levels(0.2))
    bench_paper.record_tuning(args, "clews", 4.0, levels(0.3))
    assert bench_paper.chosen_factor(args, "clews") == 1.0  # 0.25x not tried yet
    bench_paper.record_tuning(args, "clews", 0.25, levels(0.1))
    # 4x, an end of the grid, is the best: 16x is tried before anything is chosen
    assert bench_paper.chosen_factor(args, "clews") == 1.0
    assert bench_paper.next_factor(bench_paper.read_tuning(args)["clews"], [0.25, 1, 4], 2) == 16
    bench_paper.record_tuning(args, "clews", 16.0, levels(0.25))
    assert bench_paper.chosen_factor(args, "clews") == 4.0
    assert bench_paper.lr_overrides("clews", 4.0) == ["training.optim.lr=0.008"]
    assert bench_paper.lr_overrides("clews", 1.0) == []
    # a row (and its run folder) at the config's rate is set aside; one at the chosen rate stays
    results = tmp_path / "res"
    stale = paper_row("clews", 0, {"track": 0.5})
    fresh = dict(paper_row("clews", 1, {"track": 0.5}), overrides=["training.optim.lr=0.008"])
    other = paper_row("dvinetp", 0, {"track": 0.5})
    for row in (stale, fresh, other):
        (results / f"{row['run']}.json").write_text(json.dumps(row))
    (tmp_path / "out" / "partial" / "runs" / "partial-clews-s0").mkdir(parents=True)
    bench_paper.set_aside_untuned(args, "clews")
    assert sorted(p.name for p in results.glob("partial-*.json")) == [
        "partial-clews-s1.json", "partial-dvinetp-s0.json"
    ]
    assert (results / "untuned" / "partial-clews-s0.json").is_file()
    assert (tmp_path / "out" / "partial" / "runs" / "untuned" / "partial-clews-s0").is_dir()
    assert not (tmp_path / "out" / "partial" / "runs" / "partial-clews-s0").exists()
    # the tuning run at the chosen rate becomes the main run of seed 0 on the tuning corpus only
    runs = tmp_path / "out" / "partial" / "runs"
    (runs / "partial-clews-lr4x-s0").mkdir()
    (runs / "partial-clews-lr4x-s0" / "checkpoint_last.ckpt").write_bytes(b"")
    (runs / "partial-clews-lr4x-s0" / bench_paper.TRAIN_SECONDS_FILE).write_text(
        json.dumps({"train_seconds": 512.5}))
    assert bench_paper.adopt_tuning_run(args, "partial", "clews", None, 0, 1.0) == (False, None)
    assert bench_paper.adopt_tuning_run(args, "partial", "clews", None, 1, 4.0) == (False, None)
    assert bench_paper.adopt_tuning_run(args, "arrangement", "clews", None, 0, 4.0) == (False, None)
    ablation = bench_paper.adopt_tuning_run(args, "partial", "clews", "gamma-2", 0, 4.0)
    assert ablation == (False, None)
    assert bench_paper.adopt_tuning_run(args, "partial", "clews", None, 0, 4.0) == (True, 512.5)
    assert (runs / "partial-clews-s0" / "checkpoint_last.ckpt").is_file()
    assert not (runs / "partial-clews-lr4x-s0").exists()
    assert bench_paper.adopt_tuning_run(args, "partial", "clews", None, 0, 4.0) == (False, None)
    text = bench_paper.tables(bench_paper.load_rows(str(results))[0], {}, None,
                              bench_paper.read_tuning(args))
    clews = next(line for line in text.splitlines() if line.startswith("CLEWS   "))
    assert clews.split() == ["CLEWS", "2e-03", "0.150", "0.250", "0.350*", "0.300"]
    with pytest.raises(SystemExit):
        bench_paper.parse_args(["--lr_factors", "0.5", "2"])


def test_paper_tuning_at_the_config_rate_is_the_main_run_while_its_checkpoint_is_there(tmp_path):
    from benchmarks import bench_paper

    args = bench_paper.parse_args([f"--out={tmp_path / 'out'}", f"--results={tmp_path / 'res'}"])
    name = bench_paper.tuning_run_name
    assert name(args, "move", 4.0) == "partial-move-lr4x-s0"
    assert name(args, "move", 1.0) == "partial-move-s0"  # no row yet: trained and tested
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "partial-move-s0.json").write_text(json.dumps(paper_row("move", 0, {})))
    # the row is kept from a session whose runs are gone: validation needs a run of its own
    assert name(args, "move", 1.0) == "partial-move-lr1x-s0"
    run = tmp_path / "out" / "partial" / "runs" / "partial-move-s0"
    run.mkdir(parents=True)
    (run / "checkpoint_last.ckpt").write_bytes(b"")
    assert name(args, "move", 1.0) == "partial-move-s0"


def test_paper_tuning_grid_grows_beyond_an_end_that_scores_best():
    from benchmarks.bench_paper import best_factor, next_factor, tuning_grid

    def tried(**scores):  # {"f0_25": 0.1} -> {"0.25": validation levels}
        return {k[1:].replace("_", "."): {"track": {"MAP": [v, 0.1]}} for k, v in scores.items()}

    grid = (0.25, 1.0, 4.0)
    assert next_factor({}, grid, 2) == 0.25  # the grid first, ascending
    inside = tried(f0_25=0.1, f1=0.3, f4=0.2)
    assert tuning_grid(inside, grid, 2) == [0.25, 1, 4] and best_factor(inside, grid, 2) == "1"
    low = tried(f0_25=0.3, f1=0.2, f4=0.1)
    assert next_factor(low, grid, 2) == 0.0625 and best_factor(low, grid, 2) is None
    assert best_factor(low, grid, 0) == "0.25"  # no extension asked for
    lower = {**low, **tried(f0_0625=0.4)}
    assert next_factor(lower, grid, 2) == 0.015625  # still the best end: one step more
    lowest = {**lower, **tried(f0_015625=0.5)}
    assert next_factor(lowest, grid, 2) is None  # at most 2 more
    assert best_factor(lowest, grid, 2) == "0.015625"
    back = {**lower, **tried(f0_015625=0.35)}
    assert best_factor(back, grid, 2) == "0.0625"
    assert next_factor(tried(f1=0.1, f4=0.2), (1.0, 4.0), 1) == 16  # the grid's ratio at that end


def test_paper_analysis_table_gives_each_model_and_variant_per_query_length():
    from benchmarks.paper_analysis import reduction_table, table

    def result(value):
        return {"all windows": value, "clip in work": 2 * value, "clip outside": 0.05,
                "pairs": {"shared": [0.7, 0.8], "none": [0.5]}, "coverage": 0.9,
                "reductions": {"min": value, "bpwr-5": value, "bpwr-10": value, "mean": 0.04}}

    analysed = {
        ("clews", "30min"): [{10: result(0.2)}],
        ("dvinetp", None): [{10: result(0.1)}, {10: result(0.3)}],
        ("clews", None): [{10: result(0.1)}, {10: result(0.2)}],
    }
    lines = table("partial", analysed, (10, 20)).splitlines()[2:]
    assert [line.split("  ")[0] for line in lines] == ["CLEWS", "CLEWS (30min)", "DVINet+"]
    assert lines[0].split()[1:6] == ["10s", "2", "0.150+-0.071", "0.300+-0.141", "0.050+-0.000"]
    assert lines[0].split()[6:] == ["0.750+-0.000", "0.500+-0.000", "0.90"]
    # a test set with no pair of a kind (a tiny one) shows "-" there
    alone = result(0.2)
    alone["pairs"]["none"] = []
    line = table("partial", {("move", None): [{10: alone}]}, (10,)).splitlines()[2]
    assert line.split()[6:] == ["0.750+-0.000", "-", "0.90"]
    by_redux = reduction_table("partial", analysed, (10,)).splitlines()
    assert by_redux[1].split()[3:] == ["min", "bpwr-5", "bpwr-10", "mean"]
    assert by_redux[2].split()[3:] == ["0.150+-0.071"] * 3 + ["0.040+-0.000"]


def test_paper_analysis_reads_the_test_works_cache_not_the_validation_one(tmp_path):
    # bench_paper's tuning caches the validation works' embeddings of the same checkpoint with
    # the same windows: the analysis must not take those for the test works'
    import numpy as np

    from benchmarks.paper_analysis import cached_entries
    from lib import store

    for name, partition in (("a", "valid"), ("b", "test"), ("c", "valid")):
        manifest = {"settings": {"slen": 20.0, "shop": 5.0},
                    "parts": {"checkpoint": "abc", "partition": partition}}
        store.write(str(tmp_path / name), np.zeros((2, 1, 3)), np.zeros((2, 1)), manifest)
    assert cached_entries(str(tmp_path)) == {("abc", 20.0, 5.0): str(tmp_path / "b")}
    assert cached_entries(str(tmp_path), "valid") == {("abc", 20.0, 5.0): str(tmp_path / "c")}


def test_paper_kept_analysis_is_reused_only_for_the_very_run_it_was_made_of(tmp_path):
    # a row set aside in untuned/ keeps its analysis there; the run of the same name trained
    # again (another rate, another training time) does not take it
    from benchmarks.bench_paper import ANALYSIS_FILE, fingerprint, kept_result, read_analysis

    first = paper_row("clews", 0, {"q10": 0.1})
    again = {**first, "overrides": ["training.optim.lr=0.008"], "train_seconds": 99.0}
    entry = {"corpus": "partial", "row": fingerprint(first), "lengths": {"10": {"x": 1}}}
    (tmp_path / ANALYSIS_FILE).write_text(json.dumps({"untuned/partial-clews-s0": entry}))
    kept = read_analysis(str(tmp_path))
    assert kept_result(kept, first) == {10: {"x": 1}}
    assert kept_result(kept, again) is None
    # an entry without its run's fingerprint (the first format) is not reused
    (tmp_path / ANALYSIS_FILE).write_text(json.dumps({"partial-clews-s0": {"10": {"x": 1}}}))
    assert read_analysis(str(tmp_path)) == {}


def test_scratch_folders_go_when_the_benchmark_ends_even_by_an_error(tmp_path):
    # a benchmark writes gigabytes (full-size checkpoints, exports); none may stay behind
    code = (
        "import os, sys\n"
        "from benchmarks.common import scratch_folder\n"
        "folder = scratch_folder('bench_test_')\n"
        "open(os.path.join(folder, 'big.bin'), 'wb').write(b'x' * 1000)\n"
        "print(folder, flush=True)\n"
        "raise RuntimeError('the benchmark failed')\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1 and "the benchmark failed" in done.stderr
    folder = done.stdout.strip()
    assert folder.startswith(str(tmp_path)) and not os.path.exists(folder)
    assert list(tmp_path.iterdir()) == []
