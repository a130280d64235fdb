"""The plumbing of the benchmarks that train (their measurements are not CI's business)."""

import pytest

from benchmarks.bench_small_recipe import fixed_split, run_name, table


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
