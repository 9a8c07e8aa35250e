from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clup.config import CANONICAL_CLASSES
from clup.data.datamodule import load_image
from clup.data.manifest import UNLABELLED, read_manifest
from clup.errors import ManifestError

CLASSES = list(CANONICAL_CLASSES)


def _manifest(tmp_path: Path, text: str, images: tuple[str, ...] = ("a", "b", "c", "d")
              ) -> Path:
    path = tmp_path / "data" / "manifest.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    for name in images:
        (path.parent / f"{name}.png").write_bytes(b"")
    return path


def test_ids_names_synonyms_and_unlabelled_rows(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "path,label,split\na.png,3,train\nb.png,angry,train\n"
                               "c.png,Surprised,test\nd.png,,train\n")
    splits = read_manifest(path, CLASSES)
    assert splits["train"].labels.tolist() == [3, 5, UNLABELLED]
    assert splits["test"].labels.tolist() == [0]
    assert splits["train"].paths[0] == (tmp_path / "data" / "a.png").resolve()
    assert not splits["train"].has_labels
    assert splits["test"].has_labels


def test_without_split_column_everything_is_train(tmp_path: Path) -> None:
    splits = read_manifest(_manifest(tmp_path, "path,label\na.png,1\nb.png,2\n"), CLASSES)
    assert len(splits["train"]) == 2
    assert len(splits["test"]) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\na.png,1\n", "manifest.csv:1: header must be path,label"),
        ("path,label\na.png,1\nb.png,7\n", "manifest.csv:3: label 7 is outside 0..6"),
        ("path,label\na.png,grumpy\n", "manifest.csv:2: label 'grumpy' is neither"),
        ("path,label,split\na.png,1,val\n", "manifest.csv:2: split must be one of"),
        ("path,label\n../../etc/passwd,1\n", "manifest.csv:2: path '../../etc/passwd' escapes"),
        ("path,label\n,1\n", "manifest.csv:2: empty path"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_manifest(_manifest(tmp_path, text), CLASSES)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "none.csv", CLASSES)


def test_images_load_as_rgb_and_bad_files_are_named(tmp_path: Path) -> None:
    Image.fromarray(np.full((5, 4), 7, np.uint8), mode="L").save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png").shape == (5, 4, 3)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ManifestError, match="broken.png cannot be read"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(ManifestError, match="missing.png does not exist"):
        load_image(tmp_path / "missing.png")


def test_missing_images_are_reported_together_with_their_lines(tmp_path: Path) -> None:
    text = "path,label\na.png,1\nx.png,2\nb.png,3\ny.png,4\n"
    with pytest.raises(ManifestError) as err:
        read_manifest(_manifest(tmp_path, text, images=("a", "b")), CLASSES)
    message = str(err.value)
    assert message.startswith("2 images listed in")
    assert "manifest.csv:3: x.png" in message and "manifest.csv:5: y.png" in message


def test_ids_of_another_class_order_are_mapped_by_name(tmp_path: Path) -> None:
    # A prepared dataset's ids are canonical; an experiment may order or name classes its way.
    own = ["neutral", "happy", "sad", "angry", "surprised", "fear", "disgust"]
    path = _manifest(tmp_path, "path,label\na.png,6\nb.png,3\nc.png,0\nd.png,happy\n")
    labels = read_manifest(path, own, id_names=CANONICAL_CLASSES)["train"].labels
    assert labels.tolist() == [0, 1, 4, 1]


def test_a_class_the_experiment_lacks_stops_the_run(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "path,label\na.png,6\n")
    with pytest.raises(ManifestError, match=r"\['Neutral'\] are not among"):
        read_manifest(path, CLASSES[:6], id_names=CANONICAL_CLASSES)
