"""Robustness and honesty of `fruitlab evaluate`: corruptions, distribution shift, copies of training photos.

Real photos throughout (scikit-image's, as in tests/data/copies.py), a real MLflow store, a tiny logged model whose
run records the image folder it was "trained" on, so the copy check can find its training images again.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fruitlab.config import DataConfig
from fruitlab.data.registry import load_dataset
from fruitlab.errors import FruitlabError
from fruitlab.evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupt, parse_corruptions, parse_severities
from fruitlab.names import corruption_key
from fruitlab.tracking import runs, tags
from tests.data.copies import COPIES, photo, save, small
from tests.test_cli import assert_clean_error, run
from tests.tracking.helpers import logged_run

# The model's data: distinct scenes, none a copy of another (tests/data/test_duplicates.py checks that).
TRAIN = {"cat": ["astronaut", "chelsea", "rocket"], "coffee": ["coffee", "hubble_deep_field", "immunohistochemistry"]}
VAL = {"cat": ["retina"], "coffee": ["camera"]}
# Photos "from elsewhere": three copies of training photos (renamed, turned, mirrored, cropped, re-encoded), a copy
# of a val photo (not a training one) and a stranger.
OTHER = {
    "cat": [("IMG_0001", "astronaut", "rotate45"), ("IMG_0002", "chelsea", "hflip"), ("IMG_0003", "coins", None)],
    "coffee": [("IMG_0004", "coffee", "crop"), ("IMG_0005", "rocket", "reencode"), ("IMG_0006", "camera", "hflip")],
}
TRAIN_COPIES = 4  # astronaut, chelsea, coffee and rocket (a copy whatever its label); not camera (val), not coins


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    names = {n for group in (TRAIN, VAL) for names in group.values() for n in names} | {"coins"}
    return {name: small(photo(name), 256) for name in names}


def test_every_corruption_changes_the_image_and_more_severe_changes_more(photos):
    image = photos["chelsea"]
    for name in CORRUPTIONS:
        change = []
        for severity in SEVERITIES:
            out = corrupt(image, name, severity, "cat/a.png")
            assert out.shape == image.shape and out.dtype == np.uint8, name
            change.append(np.abs(out.astype(float) - image).mean())
            assert change[-1] > 0.5, f"{name} {severity}: mean change {change[-1]:.2f} of 255"
        if name in ("gaussian_noise", "gaussian_blur", "jpeg", "brightness", "contrast", "colour_shift"):
            assert change == sorted(change), f"{name}: {change}"
        assert change[-1] > change[0], name


def test_corruptions_are_seeded_by_the_image_name_only(photos):
    image = photos["coffee"]
    for name in ("gaussian_noise", "rotation", "crop"):
        a, b = corrupt(image, name, 3, "x/1.png"), corrupt(image.copy(), name, 3, "x/1.png")
        np.testing.assert_array_equal(a, b)
    noisy = [corrupt(image, "gaussian_noise", 3, key) for key in ("x/1.png", "x/2.png")]
    assert not np.array_equal(*noisy)  # another image gets other noise


def test_bad_corruption_options_are_one_line_errors():
    assert parse_corruptions(None) == list(CORRUPTIONS) and parse_corruptions("jpeg, crop") == ["jpeg", "crop"]
    assert parse_severities(None) == [1, 3, 5] and parse_severities("5,1") == [1, 5]
    with pytest.raises(FruitlabError, match="did you mean 'jpeg'"):
        parse_corruptions("jpg")
    for bad in ("0", "6", "x", ""):
        with pytest.raises(FruitlabError, match=r"from 1 \(mild\) to 5"):
            parse_severities(bad)


def test_the_corruption_sample_keeps_class_shares_and_ignores_order():
    from fruitlab.inference.evaldata import EvalData
    from fruitlab.inference.robustness import stratified_sample

    paths = [f"{c}/{i}.jpg" for c in ("a", "b") for i in range(30 if c == "a" else 10)]
    labels = np.array([0] * 30 + [1] * 10)
    data = EvalData("d", "val", paths, paths, {"class": labels}, "fp", "")
    keep = stratified_sample(data, 8)
    assert list(labels[keep]).count(0) == 6 and list(labels[keep]).count(1) == 2
    reverse = EvalData("d", "val", paths[::-1], paths[::-1], {"class": labels[::-1]}, "fp", "")
    assert sorted(paths[i] for i in keep) == sorted(paths[::-1][i] for i in stratified_sample(reverse, 8))


# ------------------------------------------------------------------------------------------------ end to end
def _folder(root: Path, layout: dict[str, list[str]], photos: dict[str, np.ndarray]) -> None:
    for cls, names in layout.items():
        for name in names:
            save(photos[name], root / cls / f"{name}.png")  # JPEG bytes in a .png name, as in the fruit data


@pytest.fixture(scope="module")
def store(tmp_path_factory, photos):
    """A logged model whose run's config names its image folder, and a folder of other photos with copies."""
    work = tmp_path_factory.mktemp("robustness")
    data_dir = work / "data-dir"
    own = work / "own"
    _folder(own / "train", TRAIN, photos)
    _folder(own / "val", VAL, photos)
    other = work / "other"
    for cls, entries in OTHER.items():
        for new_name, source, how in entries:
            image = COPIES[how](photos[source]) if how else photos[source]
            save(image, other / cls / f"{new_name}.jpg")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("FRUITLAB_DATA_DIR", str(data_dir))
        fingerprint = load_dataset(DataConfig(dataset="image_folder", root=str(own)), seed=42).fingerprint
        model = logged_run(uri, "robust", {"val_best/class/acc": 0.5}, fingerprint=fingerprint)
        config = f"data: {{dataset: image_folder, root: '{own}'}}\nmodel: {{backbone: test_efficientnet}}\n"
        runs.client_for(uri).log_text(model, config, runs.CONFIG_ARTIFACT)
    return SimpleNamespace(work=work, uri=uri, model=model, own=own, other=other, data_dir=data_dir)


@pytest.fixture(scope="module")
def evaluated(store):
    """The same evaluation twice (batches of 4 and of 32): corruptions, shift and the copy check."""
    from fruitlab.inference.evaluate import evaluate

    results = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(store.work)
        mp.setenv("FRUITLAB_DATA_DIR", str(store.data_dir))
        for batch_size in (4, 32):
            results.append(
                evaluate(
                    store.model,
                    str(store.other),
                    out=store.work / f"out{batch_size}",
                    device="cpu",
                    uri=store.uri,
                    batch_size=batch_size,
                    corruptions=list(CORRUPTIONS),
                    severities=[1, 5],
                    shift=True,
                )
            )
    return results


def test_corruption_figures_are_logged_under_their_names_and_reproducible(store, evaluated):
    client = runs.client_for(store.uri)
    logged = [client.get_run(r.run_id).data.metrics for r in evaluated]
    expected = {corruption_key(n, s) for n in CORRUPTIONS for s in (1, 5, "mean")} | {"corrupt/mean/acc"}
    assert {k for k in logged[0] if k.startswith("corrupt/")} == expected
    assert {k: v for k, v in logged[0].items() if k.startswith("corrupt/")} == {
        k: v for k, v in logged[1].items() if k.startswith("corrupt/")
    }  # another batch size, the same pixels and figures
    table = evaluated[0].report["robustness"]["table"]
    cells = [table[n][s]["acc"] for n in CORRUPTIONS for s in (1, 5)]
    assert logged[0]["corrupt/mean/acc"] == pytest.approx(np.mean(cells))
    assert logged[0]["corrupt/jpeg/5/acc"] == table["jpeg"][5]["acc"]
    params = client.get_run(evaluated[0].run_id).data.params
    assert params["corruption_severities"] == "1,5" and params["corruptions"] == ",".join(CORRUPTIONS)
    assert "mean corruption accuracy" in evaluated[0].summary()


def test_the_report_shows_the_corruption_table_beside_clean_accuracy(evaluated):
    html = evaluated[0].report_path.read_text()
    section = html[html.index('<section id="robustness">') : html.index('<section id="per-class">')]
    values = dict(re.findall(r"data-metric='(corrupt/[^']+)' data-value='([^']+)'", section))
    assert set(values) == {f"corrupt/{n}/{s}/acc" for n in CORRUPTIONS for s in (1, 5, "mean")} | {
        "corrupt/clean/acc",
        "corrupt/mean/acc",
    }
    assert float(values["corrupt/mean/acc"]) == evaluated[0].report["robustness"]["mean"]["acc"]
    assert "severity 5" in section and "JPEG quality: 25, 7" in section


def test_copies_of_training_photos_get_a_loud_warning_with_the_exact_count(store, evaluated, caplog):
    copies = evaluated[0].report["copies"]
    assert copies["count"] == TRAIN_COPIES and copies["n"] == 6
    copied = {Path(a).stem: Path(b).stem for a, b in copies["examples"]}
    assert copied == {"IMG_0001": "astronaut", "IMG_0002": "chelsea", "IMG_0004": "coffee", "IMG_0005": "rocket"}
    warning = f"WARNING: {TRAIN_COPIES} of 6 evaluation images are near-copies of training images"
    html = evaluated[0].report_path.read_text()
    assert warning in html and "class='leak'" in html
    run = runs.client_for(store.uri).get_run(evaluated[0].run_id)
    assert run.data.tags[tags.TRAIN_COPIES] == str(TRAIN_COPIES) and run.data.metrics["train_copies"] == TRAIN_COPIES


def test_shifted_figures_sit_beside_the_in_distribution_ones(store, evaluated):
    shift = evaluated[0].report["shift"]
    assert shift["in_distribution"]["n"] == 2 and shift["shifted"]["n"] == 6
    assert "val" in shift["in_distribution"]["data"] and str(store.other) in shift["shifted"]["data"]
    run = runs.client_for(store.uri).get_run(evaluated[0].run_id)
    own_acc = shift["in_distribution"]["tasks"]["class"]["acc"]
    assert run.data.metrics["shift/in_distribution/class/acc"] == own_acc
    shifted_acc = evaluated[0].evaluation["tasks"]["class"]["acc"]
    assert run.data.metrics["shift/drop/class/acc"] == pytest.approx(own_acc - shifted_acc)
    html = evaluated[0].report_path.read_text()
    section = html[html.index('<section id="shift">') : html.index('<section id="robustness">')]
    assert "in-distribution" in section and "distribution shift" in section and "<td>6</td>" in section
    assert "distribution shift: accuracy" in evaluated[0].summary()


def test_the_cli_runs_it_and_explains_bad_options(store):
    env = {"MLFLOW_TRACKING_URI": store.uri, "FRUITLAB_DATA_DIR": str(store.data_dir)}
    args = ["evaluate", "--model", store.model, "--data", str(store.other), "--out", str(store.work / "cli")]
    sample = ["--corruption-severities", "2", "--corruption-images", "4"]
    result = run(*args, "--corruptions", *sample, cwd=store.work, env=env)  # all of them, on 4 of the 6 images
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"WARNING: {TRAIN_COPIES} of 6 evaluation images are near-copies" in result.stderr
    assert "corruption jpeg" in result.stderr and "corruption contrast" in result.stderr
    assert "mean corruption accuracy" in result.stdout
    assert "on 4 of the images" in Path(re.search(r"report (\S+)", result.stdout).group(1)).read_text()
    bad = run(*args, "--corruptions", "--corruption-names", "jpeg,gausian_blur", cwd=store.work, env=env)
    assert_clean_error(bad, "did you mean 'gaussian_blur'")
    own = ["evaluate", "--model", store.model, "--data", str(store.own), "--shift"]
    assert_clean_error(run(*own, "--no-copy-check", cwd=store.work, env=env), "is the model's own dataset")
