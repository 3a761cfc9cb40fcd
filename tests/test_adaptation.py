"""Domain adaptation strategies on a tiny real CNN with BatchNorm (a 2-stage ResNet, 32 px)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers import run_cli


@pytest.fixture(scope="session")
def dark_surfaces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Unlabelled surfaces under a much darker light than the `surfaces` fixture's (a folder of images)."""
    from demo.surfaces import write_surfaces

    root = tmp_path_factory.mktemp("dark") / "images"
    return write_surfaces(root, per_class=6, seed=5, size=40, lighting=-0.8)


def _source_model(tiny_cnn: Path, surfaces: Path) -> Any:
    """A `head` classifier on the tiny CNN trained on the surfaces, with its processor."""
    from training.config import TrainingConfig
    from training.context import TrainContext
    from training.data import split_frames
    from training.modality import create_modality
    from training.strategies import run_strategy

    config = TrainingConfig(base_model=str(tiny_cnn), strategy="head", modality="image")
    modality = create_modality("image", config, surfaces.parent / "home")
    data, _ = modality.load_frames(surfaces, None)
    splits = split_frames(
        data, None, validation_fraction=0.1, test_fraction=0.2, seed=0, source="s", column="image"
    )
    ctx = TrainContext.create(config, splits, modality)
    return run_strategy("head", ctx).model, ctx.processor, modality


def _stem_output(model: Any, processor: Any, inputs: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the first BatchNorm layer's output on ``inputs`` (eval mode)."""
    from training.batch_norm_adaptation import batch_norm_modules

    outputs: list[torch.Tensor] = []
    handle = batch_norm_modules(model)[0][1].register_forward_hook(lambda m, i, o: outputs.append(o))
    model.eval()
    with torch.no_grad():
        model(*processor.encode(inputs))
    handle.remove()
    out = torch.cat(outputs).transpose(0, 1).flatten(1)
    return out.mean(dim=1), out.std(dim=1)


def test_bn_adapt_makes_the_target_normalise_as_the_source_did_in_the_chosen_layers_only(
    tiny_cnn: Path, surfaces: Path, dark_surfaces: Path
) -> None:
    from training.batch_norm_adaptation import adapt_batch_norm, batch_norm_modules, estimate_statistics

    model, processor, modality = _source_model(tiny_cnn, surfaces)
    source = modality.inputs(modality.load_unlabelled(surfaces))
    target = modality.inputs(modality.load_unlabelled(dark_surfaces))
    layers = batch_norm_modules(model)
    assert len(layers) >= 4
    before = {name: (m.running_mean.clone(), m.running_var.clone()) for name, m in layers}
    estimate_statistics(model, processor, target, "all")
    for name, m in layers:  # estimating leaves the model as it was
        assert torch.equal(m.running_mean, before[name][0]) and torch.equal(m.running_var, before[name][1])
    source_out = _stem_output(model, processor, source)
    target_out = _stem_output(model, processor, target)
    gap = (target_out[0] - source_out[0]).abs().mean()

    details = adapt_batch_norm(model, processor, target, source, layers="stem")
    assert details["adapted_layers"] == 1 and details["target_inputs"] == len(target) == 24
    adapted = _stem_output(model, processor, target)
    # The darker target now comes out of the stem as the source did before, channel by channel.
    assert (adapted[0] - source_out[0]).abs().mean() < 0.05 * gap
    torch.testing.assert_close(adapted[1], source_out[1], rtol=0.05, atol=1e-3)
    for name, m in layers[1:]:
        assert torch.equal(m.running_mean, before[name][0])


def test_bn_adapt_to_the_source_itself_changes_nothing(tiny_cnn: Path, surfaces: Path) -> None:
    from training.batch_norm_adaptation import adapt_batch_norm, batch_norm_modules

    model, processor, modality = _source_model(tiny_cnn, surfaces)
    source = modality.inputs(modality.load_unlabelled(surfaces))
    before = {name: (m.running_mean.clone(), m.running_var.clone()) for name, m in batch_norm_modules(model)}
    adapt_batch_norm(model, processor, source, source, layers="all")
    for name, m in batch_norm_modules(model):
        torch.testing.assert_close(m.running_mean, before[name][0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(m.running_var, before[name][1], rtol=1e-4, atol=1e-4)


def test_tent_lowers_the_entropy_of_the_answers_on_the_target_and_trains_only_batch_norm(
    tiny_cnn: Path, surfaces: Path, dark_surfaces: Path
) -> None:
    from training.entropy_adaptation import label_prior, measure_information, minimise_entropy

    model, processor, modality = _source_model(tiny_cnn, surfaces)
    target = modality.inputs(modality.load_unlabelled(dark_surfaces))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "normalization" not in n}
    prior = label_prior(np.array([0, 1, 2, 3]), 4)
    before, _ = measure_information(model, processor, target, prior)
    details = minimise_entropy(model, processor, target, prior, epochs=5, learning_rate=1e-2, batch_size=8)
    assert details["entropy_before"] == pytest.approx(before, abs=1e-4)
    assert details["entropy_after"] < before
    assert details["objective_after"] < details["objective_before"]
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name


def test_bn_adapt_refuses_a_model_without_batch_norm(tiny_vision_model: Path, surfaces: Path) -> None:
    from training.batch_norm_adaptation import adapt_batch_norm

    model, processor, modality = _source_model(tiny_vision_model, surfaces)
    with pytest.raises(ValueError, match="no BatchNorm"):
        inputs = modality.inputs(modality.load_unlabelled(surfaces))
        adapt_batch_norm(model, processor, inputs, inputs)


def test_refit_train_adapts_with_tent_and_records_the_lineage(
    tiny_cnn: Path,
    surfaces: Path,
    dark_surfaces: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training.registry import ModelRegistry

    home = tmp_path / "bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(home))
    base = ["train", str(surfaces), "--name", "tiles", "--base-model", str(tiny_cnn)]
    code, out = run_cli([*base, "--strategy", "head"], capsys, monkeypatch)
    assert code == 0, out
    args = [*base, "--strategy", "tent", "--set", f"target_file={dark_surfaces}", "--set", "target_window=w1"]
    code, out = run_cli(args, capsys, monkeypatch)
    assert code == 0, out
    source, adapted = ModelRegistry(home).versions("tiles")
    lineage = adapted.manifest["adaptation"]
    assert adapted.manifest["strategy"] == "tent" and adapted.manifest["parent_version"] == source.version
    assert lineage["method"] == "tent" and lineage["base_strategy"] == "head"
    assert lineage["target"]["inputs"] == 24 and lineage["target"]["window"] == "w1"
    assert lineage["target"]["fingerprint"].startswith("sha256:")
    entropy = adapted.manifest["details"]["adaptation"]["entropy"]
    assert entropy["objective_after"] < entropy["objective_before"]
    code, out = run_cli(["models", "show", adapted.tag], capsys, monkeypatch)
    fingerprint = lineage["target"]["fingerprint"][:15]
    assert code == 0 and f"tent (from head) to 24 inputs of w1, {fingerprint}" in " ".join(out.split()), out
    for report in ("report.md", "report.html"):  # what a shared report says too
        assert f"tent (from head) to 24 inputs of w1, {fingerprint}" in (adapted.path / report).read_text()
    # The adapted version is a version like any other: it loads and answers.
    from training.artifacts import load_version_model
    from training.inference import predict

    model, processor = load_version_model(adapted)
    probabilities = predict(model, processor, sorted(dark_surfaces.rglob("*.png"))[:4]).probabilities
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_an_adaptation_strategy_without_target_inputs_is_a_clear_error(
    surfaces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    code, out = run_cli(["train", str(surfaces), "--strategy", "bn-adapt"], capsys, monkeypatch)
    assert code != 0 and "target_file" in out


def test_self_train_learns_the_target_inputs_it_is_sure_of_and_only_those(
    tiny_vision_model: Path, surfaces: Path, dark_surfaces: Path
) -> None:
    from training.self_training import pseudo_label

    model, processor, modality = _source_model(tiny_vision_model, surfaces)
    target = modality.load_unlabelled(dark_surfaces)
    inputs = modality.inputs(target)
    labels = ["crack", "free", "scratch", "spot"]
    rows, info = pseudo_label(model, processor, target, inputs, labels, 0.0, augments=True)
    assert info["pseudo_labelled"] == len(rows) == info["confident"] - info["overturned_by_a_view"]
    assert sum(info["per_label"].values()) == len(rows) and set(rows["label"]) <= set(labels)
    none, strict = pseudo_label(model, processor, target, inputs, labels, 1.0, augments=False)
    assert len(none) == strict["pseudo_labelled"] <= strict["confident"]


def _train_adapted_text_model(
    strategy: str, texts: list[str], csv: Path, base_model: Path, settings: list[str], run: Any
) -> Any:
    """`refit train` of ``csv`` with an adaptation ``strategy`` whose target is ``texts``; the version."""
    import pandas as pd

    from training.registry import ModelRegistry

    target = csv.parent / "target.csv"
    pd.DataFrame({"text": texts}).to_csv(target, index=False)
    args = [
        "train", str(csv), "--name", "tiny", "--base-model", str(base_model), "--strategy", strategy,
        "--set", f"target_file={target}", "--set", "max_length=16", *settings,
    ]  # fmt: skip
    code, out = run(args)
    assert code == 0, out
    [version] = ModelRegistry(csv.parent / "bentoml").versions("tiny")
    return version


def test_refit_train_self_trains_a_text_model_on_unlabelled_target_texts(
    tiny_base_model: Path,
    tiny_csv: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pandas as pd

    monkeypatch.setenv("BENTOML_HOME", str(tiny_csv.parent / "bentoml"))
    # The same intents as typed on a phone: lower case, "pls", no punctuation. Fine-tuned as the
    # README's few-labels-and-a-queue command does (`adapt_base=partial`).
    source = pd.read_csv(tiny_csv)
    settings = ["--set", "pseudo_label_threshold=0.3", "--set", "adapt_base=partial", "--set", "epochs=1"]
    version = _train_adapted_text_model(
        "self-train", [f"{t.lower()} pls" for t in source["text"]], tiny_csv, tiny_base_model,
        settings, lambda args: run_cli(args, capsys, monkeypatch),
    )  # fmt: skip
    assert version.manifest["details"]["adaptation"]["base_strategy"] == "partial"
    pseudo = version.manifest["details"]["adaptation"]["pseudo_labels"]
    assert version.manifest["adaptation"]["target"]["inputs"] == len(source)
    assert 0 < pseudo["pseudo_labelled"] <= len(source) and pseudo["overturned_by_a_view"] == 0
    # The saved training split is the labelled source: pseudo labels never pass for real ones.
    assert version.manifest["rows"]["train"] < len(source)


def test_tapt_lowers_the_masked_language_model_loss_on_the_target_texts(
    tiny_base_model: Path, tmp_path: Path
) -> None:
    from training.language_adaptation import continue_pretraining
    from training.model import load_encoder
    from training.processors import load_tokenizer

    # Texts of the target channel, in the tiny vocabulary: repeated, so a few epochs learn them.
    target = ["parcel delivery late today", "reset my password now", "refund the invoice please"] * 12
    out = tmp_path / "pretrained"
    numbers = continue_pretraining(
        str(tiny_base_model), target, out, epochs=10, learning_rate=1e-3, batch_size=8
    )
    assert numbers["mlm_head_initialised"] and numbers["texts"] == 36
    # The same masking before and after: the loss falls for what pretraining did alone.
    assert numbers["mlm_loss_after"] < 0.8 * numbers["mlm_loss_before"], numbers
    encoder = load_encoder(str(out))  # a base model like any other, with its tokenizer
    assert load_tokenizer(str(out)).mask_token == "[MASK]"
    original = load_encoder(str(tiny_base_model))
    moved = [not torch.equal(a, b) for a, b in zip(encoder.parameters(), original.parameters(), strict=True)]
    assert all(moved), "every encoder weight was trained"


def test_refit_train_tapt_pretrains_on_the_target_then_trains_the_head(
    tiny_base_model: Path,
    tiny_csv: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pandas as pd

    monkeypatch.setenv("BENTOML_HOME", str(tiny_csv.parent / "bentoml"))
    source = pd.read_csv(tiny_csv)
    version = _train_adapted_text_model(
        "tapt", [f"{t} please" for t in source["text"]], tiny_csv, tiny_base_model, [],
        lambda args: run_cli(args, capsys, monkeypatch),
    )  # fmt: skip
    assert version.manifest["strategy"] == "tapt" and version.manifest["base_model"] == str(tiny_base_model)
    lineage = version.manifest["adaptation"]
    assert lineage["method"] == "tapt" and lineage["base_strategy"] == "head"
    assert lineage["target"]["inputs"] == len(source)
    mlm = version.manifest["details"]["adaptation"]["mlm"]
    assert mlm["texts"] == len(source) and mlm["mlm_loss_after"] < mlm["mlm_loss_before"], mlm
    # The version carries the pretrained encoder: it loads and answers without the temporary one.
    from training.artifacts import load_version_model, read_labels
    from training.inference import predict

    model, processor = load_version_model(version)
    answer = predict(model, processor, ["reset my password please"]).probabilities.argmax(axis=1)[0]
    assert read_labels(version)[answer] in set(source["label"])


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("tapt", "tapt continues a text encoder's language-model pretraining; for images use bn-adapt"),
        ("spelling", "spelling corrects the words of texts; for images use bn-adapt"),
    ],
)
def test_text_adaptations_are_for_texts(
    strategy: str, message: str, tiny_cnn: Path, surfaces: Path, dark_surfaces: Path
) -> None:
    from training.adaptation import adapt_model
    from training.config import TrainingConfig
    from training.context import TrainContext
    from training.data import split_frames
    from training.modality import create_modality
    from training.strategies import run_strategy

    config = TrainingConfig(
        base_model=str(tiny_cnn), strategy=strategy, modality="image", target_file=dark_surfaces
    )
    modality = create_modality("image", config, surfaces.parent / "home")
    data, _ = modality.load_frames(surfaces, None)
    splits = split_frames(data, None, seed=0, source="s", column="image")
    # Refused by name, with what to use for images instead.
    with pytest.raises(ValueError, match=message):
        adapt_model(strategy, TrainContext.create(config, splits, modality), None, run_strategy)


SPELLING_CASES = [
    ("refnud my payment", "refund my payment"),  # a swap
    ("Pasword reset", "Password reset"),  # a dropped letter, the capital kept
    ("PARCCEL late", "PARCEL late"),  # a doubled letter, upper case kept
    ("tarck my parcel", "track my parcel"),
    ("acct refund", "acct refund"),  # the target's own word (seen 3 times): not a slip
    ("zzqx refund", "zzqx refund"),  # nothing known one edit away: left as it is
    ("my pw", "my pw"),  # too short to correct
    ("refund-me now!", "refund-me now!"),  # punctuation and known words untouched
    ("refunds" * 5_000, "refunds" * 5_000),  # a client's endless run of letters: no edits tried
]


@pytest.mark.parametrize(("text", "expected"), SPELLING_CASES, ids=[text[:20] for text, _ in SPELLING_CASES])
def test_spelling_corrects_words_the_model_cannot_read_to_known_ones(
    text: str, expected: str, tiny_base_model: Path
) -> None:
    from tests.helpers import tiny_rows
    from training.processors import load_tokenizer
    from training.spelling import count_words, fit_spelling

    target = ["acct locked", "my acct", "acct closed", "refnud please"]
    spelling = fit_spelling(count_words(tiny_rows()["text"]), target, load_tokenizer(str(tiny_base_model)))
    assert spelling.correct(text) == expected


def test_spelling_prefers_the_word_the_texts_use_most() -> None:
    from training.spelling import SpellingCorrector

    # "cart" and "card" are both one edit from "carx"; the texts used "card" more.
    spelling = SpellingCorrector({"card": 5, "cart": 2}, vocabulary=["care"])
    assert spelling.correct("my carx") == "my card"
    assert SpellingCorrector({"cart": 1, "card": 1}, []).correct("carx") == "card"  # ties: a-z
    # A tokenizer word is known (left alone) but never a correction: "expire" is not "empire".
    assert SpellingCorrector({"card": 1}, vocabulary=["empire"]).correct("expire empire") == "expire empire"


def test_fitting_spelling_tells_the_target_s_own_words_from_slips(tiny_base_model: Path) -> None:
    from training.processors import load_tokenizer
    from training.spelling import count_words, fit_spelling

    source = ["refund my card"] * 40 + ["card deleted"] * 5
    target = ["refnud my card"] * 3 + ["delete card"] * 3 + ["acct closed"] * 2
    spelling = fit_spelling(count_words(source), target, load_tokenizer(str(tiny_base_model)))
    # Seen 3 times beside 40 of "refund": a slip. Seen 3 times beside 5 of "deleted": a word.
    # Seen twice: too rare to be the channel's own, and nothing in the texts is one edit away.
    assert spelling.correct("refnud delete acct") == "refund delete acct"
    assert "delete" in spelling.counts and "refnud" not in spelling.counts and "acct" not in spelling.counts


def test_refit_train_spelling_makes_typos_read_as_the_words_the_model_learnt(
    tiny_base_model: Path,
    tiny_csv: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pandas as pd

    from service.backends import encode_inputs
    from training.artifacts import load_version_model, load_version_processor
    from training.inference import predict

    monkeypatch.setenv("BENTOML_HOME", str(tiny_csv.parent / "bentoml"))
    source = pd.read_csv(tiny_csv)
    # The same requests, and a few typed in a hurry (each slip seen at most twice: not a word).
    channel = [
        *source["text"],
        "refnud my payment now", "rest my pasword today", "where is my parcle", "pasword reset email",
    ]  # fmt: skip
    version = _train_adapted_text_model(
        "spelling", channel, tiny_csv, tiny_base_model, [], lambda args: run_cli(args, capsys, monkeypatch)
    )
    lineage = version.manifest["adaptation"]
    assert lineage["method"] == "spelling" and lineage["target"]["inputs"] == len(channel)
    # The statistic it moves: the share of the target's words the model cannot read.
    spelling = version.manifest["details"]["adaptation"]["spelling"]
    assert spelling["unknown_word_share_before"] > 0.02, spelling
    assert spelling["unknown_word_share_after"] == 0.0 and spelling["corrected_words"] > 0, spelling
    # The version reads a typo as the word: through torch, and as the service encodes its inputs
    # (for torch and ONNX backends alike).
    model, processor = load_version_model(version)
    clean, typed = ["reset my password now", "track my parcel"], ["rest my pasword now", "track my parcle"]
    np.testing.assert_array_equal(
        predict(model, processor, typed).probabilities, predict(model, processor, clean).probabilities
    )
    served = load_version_processor(version)
    for name, array in encode_inputs(served, typed).arrays.items():
        np.testing.assert_array_equal(array, encode_inputs(served, clean).arrays[name])


def test_refit_train_spelling_names_a_lexicon_that_is_not_a_saved_corrector(
    tiny_base_model: Path,
    tiny_csv: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pandas as pd

    monkeypatch.setenv("BENTOML_HOME", str(tiny_csv.parent / "bentoml"))
    target, lexicon = tiny_csv.parent / "target.csv", tiny_csv.parent / "spelling.json"
    pd.DataFrame({"text": ["refnud my payment"]}).to_csv(target, index=False)
    lexicon.write_text('{"min_length": 3}', encoding="utf-8")
    args = [
        "train", str(tiny_csv), "--name", "tiny", "--base-model", str(tiny_base_model),
        "--set", "max_length=16", "--set", f"spelling_lexicon={lexicon}",
    ]  # fmt: skip
    spelling = ["--strategy", "spelling", "--set", f"target_file={target}"]
    code, out = run_cli([*args, *spelling], capsys, monkeypatch)
    assert code != 0 and f"{lexicon}: expected a spelling corrector's spelling.json" in out, out
    code, out = run_cli([*args, "--strategy", "head"], capsys, monkeypatch)
    assert code != 0 and "spelling_lexicon is read by strategy 'spelling' only" in out, out


@pytest.mark.slow  # a `refit train` child
def test_a_retrain_on_labels_of_a_spelling_version_keeps_its_corrections(
    tiny_base_model: Path,
    tiny_csv: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pandas as pd

    from monitoring.candidate import train_candidate
    from monitoring.feedback import merge_feedback
    from monitoring.retrain import read_rows
    from training.artifacts import load_version_model, load_version_processor
    from training.inference import predict
    from training.registry import ModelRegistry

    monkeypatch.setenv("BENTOML_HOME", str(tiny_csv.parent / "bentoml"))
    channel = [*pd.read_csv(tiny_csv)["text"], "refnud my payment now", "where is my parcle"]
    production = _train_adapted_text_model(
        "spelling", channel, tiny_csv, tiny_base_model, [], lambda args: run_cli(args, capsys, monkeypatch)
    )
    # Feedback from the channel: its slips, and a word of its own ("pls", in three labelled texts).
    feedback = pd.DataFrame(
        {
            "text": ["refnud the invoice pls", "pasword reset pls", "forgot pasword link pls"],
            "label": ["refund", "password", "password"],
        }
    )
    registry = ModelRegistry(tiny_csv.parent / "bentoml")
    version = train_candidate(
        production, merge_feedback(read_rows(production, "train"), feedback), registry, strategy=None,
        timeout_s=300, workdir=tiny_csv.parent, export=False, test=read_rows(production, "test"),
    )  # fmt: skip
    retrained = registry.get(f"tiny:{version}")
    assert retrained.manifest["strategy"] == "spelling"
    assert retrained.manifest["parent_version"] == production.version
    model, processor = load_version_model(retrained)
    spelling = processor.spelling
    assert spelling is not None, "the retrained version lost the corrector"
    # The production corrector's words stay; the channel's own word joins; its slips do not.
    kept = load_version_processor(production).spelling
    assert kept is not None and set(kept.counts) <= set(spelling.counts)
    assert "pls" in spelling.counts and "pasword" not in spelling.counts and "refnud" not in spelling.counts
    clean = ["reset my password now", "refund my payment"]
    typed = ["rest my pasword now", "refnud my payment"]
    np.testing.assert_array_equal(
        predict(model, processor, typed).probabilities, predict(model, processor, clean).probabilities
    )


def test_dann_pulls_the_domains_features_together_and_keeps_the_frozen_layers(
    tiny_cnn: Path, surfaces: Path, dark_surfaces: Path
) -> None:
    from training.adversarial_adaptation import align_domains

    model, processor, modality = _source_model(tiny_cnn, surfaces)
    frame, _ = modality.load_frames(surfaces, None)
    source = modality.inputs(frame)
    labels = np.array([sorted(set(frame["label"])).index(label) for label in frame["label"]])
    target = modality.inputs(modality.load_unlabelled(dark_surfaces))
    stem = {n: p.detach().clone() for n, p in model.named_parameters() if "embedder" in n}
    assert stem, "the tiny ResNet's stem is named embedder"
    details = align_domains(
        model, processor, source, labels, target, layers=1, epochs=8, learning_rate=1e-2, batch_size=8
    )
    assert details["domain_gap_after"] < details["domain_gap_before"], details
    assert 0 < details["trainable_params"] < sum(p.numel() for p in model.parameters())
    for name, param in model.named_parameters():  # below the top layer nothing moved
        if name in stem:
            assert torch.equal(param, stem[name]), name
    assert all(p.requires_grad for p in model.parameters())  # as a saved model expects


def test_refit_train_dann_records_the_alignment(
    tiny_cnn: Path,
    surfaces: Path,
    dark_surfaces: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training.registry import ModelRegistry

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    args = [
        "train", str(surfaces), "--name", "tiles", "--base-model", str(tiny_cnn), "--strategy", "dann",
        "--set", f"target_file={dark_surfaces}", "--set", "adapt_epochs=2",
    ]  # fmt: skip
    code, out = run_cli(args, capsys, monkeypatch)
    assert code == 0, out
    [version] = ModelRegistry(tmp_path / "bentoml").versions("tiles")
    assert version.manifest["adaptation"]["method"] == "dann"
    adversarial = version.manifest["details"]["adaptation"]["adversarial"]
    assert adversarial["epochs"] == 2 and adversarial["temperature"] > 0
    assert 0.0 <= adversarial["domain_accuracy_last_epoch"] <= 1.0
