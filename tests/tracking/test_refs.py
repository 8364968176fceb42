"""Model references are parsed in one place: every form, and one message for what is not a reference."""

from __future__ import annotations

import pytest

from fruitlab.errors import ModelError, ModelRefError, TrackingError
from fruitlab.tracking.refs import ModelRef

RUN = "0123456789abcdef0123456789abcdef"
MODEL_ID = "m-" + "f" * 32


@pytest.mark.parametrize(
    ("text", "kind", "parts"),
    [
        ("models:/fruits@champion", "alias", {"name": "fruits", "alias": "champion"}),
        ("models:/fruits/3", "version", {"name": "fruits", "version": "3"}),
        (f"models:/{MODEL_ID}", "logged_model", {"model_id": MODEL_ID}),
        (MODEL_ID, "logged_model", {"model_id": MODEL_ID}),
        (f"runs:/{RUN}/model", "run", {"run": RUN, "artifact": "model"}),
        (f"runs:/{RUN[:8]}/other", "run", {"run": RUN[:8], "artifact": "other"}),
        (RUN, "run", {"run": RUN}),
        (RUN[:6], "run", {"run": RUN[:6]}),
    ],
)
def test_every_form_parses_without_a_store(text, kind, parts):
    ref = ModelRef.parse(f"  {text} ")
    assert ref.kind == kind and {k: getattr(ref, k) for k in parts} == parts
    assert ref.follows_alias == (kind == "alias")


def test_a_folder_needs_an_mlmodel_file(tmp_path):
    with pytest.raises(ModelRefError, match="not a logged model folder"):
        ModelRef.parse(str(tmp_path))
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    ref = ModelRef.parse(str(tmp_path))
    assert ref.kind == "folder" and ref.path == tmp_path and ref.short == tmp_path.name


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("champion", "unknown model 'champion': expected models:/NAME@ALIAS"),
        ("abc12", "unknown model 'abc12'"),  # too short for a run id prefix
        ("models:/fruits", "give models:/NAME@ALIAS, models:/NAME/VERSION (a number) or models:/m-ID"),
        ("models:/fruits/latest", "(a number)"),
        ("runs:/nope/model", "runs:/ needs a run id"),
    ],
)
def test_what_is_not_a_reference_gets_one_message_listing_the_forms(text, fragment):
    with pytest.raises(ModelRefError, match=None) as error:
        ModelRef.parse(text)
    assert fragment in str(error.value)
    assert isinstance(error.value, ModelError) and isinstance(error.value, TrackingError)  # for every caller
