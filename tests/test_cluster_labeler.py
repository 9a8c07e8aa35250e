"""Stage 1's predict pass stores what the source classifier reads, whatever its head."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clup.clustering import features
from clup.clustering.pseudo_labels import normalize_embeddings
from clup.config import BackboneConfig, ClusterLabelerConfig
from clup.models.backbones import build_backbone
from clup.models.checkpoint import Classifier
from clup.stages.cluster_labeler import ClusterLabeler

NUM_CLASSES = 3
NUM_IMAGES = 10


def _projected_classifier(head: str) -> Classifier:
    """A classifier whose head reads a projection of the backbone's embedding."""
    torch.manual_seed(0)
    model = Classifier(build_backbone(BackboneConfig("small_cnn", width=4)), NUM_CLASSES, head)
    if head == "shot":
        model.bottleneck[1].running_mean.uniform_()
    else:
        # A custom projection as wide as the embedding, so only the values tell them apart.
        width = model.backbone.out_dim
        model.bottleneck = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        model.head = nn.Linear(width, NUM_CLASSES)
    return model.eval()


def _stage1_features(model: Classifier, images: torch.Tensor, folder: Path
                     ) -> tuple[np.ndarray, np.ndarray]:
    labeler = ClusterLabeler(model, ClusterLabelerConfig(num_clusters=2), seed=0,
                             feature_dir=folder, num_samples=len(images))
    data = TensorDataset(images, torch.zeros(len(images), dtype=torch.long),
                         torch.arange(len(images)))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.predict(labeler, dataloaders=DataLoader(data, batch_size=4),
                    return_predictions=False)
    assert labeler.features_complete
    stored, probs = features.load(folder)
    return np.asarray(stored, dtype=np.float32), probs


@pytest.mark.parametrize("head", ["shot", "linear"], ids=["shot head", "custom projection"])
def test_stage1_clusters_the_classifiers_input_not_the_backbone_output(
    tmp_path: Path, head: str
) -> None:
    model = _projected_classifier(head)
    images = torch.randn(NUM_IMAGES, 3, 16, 16)
    stored, probs = _stage1_features(model, images, tmp_path)
    with torch.no_grad():
        embedding = model.backbone(images)
        classifier_input = model.bottleneck(embedding)
        logits = model.head(classifier_input)
    expected = normalize_embeddings(classifier_input.numpy())
    assert stored.shape == (NUM_IMAGES, model.feature_dim + 1) == expected.shape
    np.testing.assert_allclose(stored, expected, atol=2e-3)  # stored as float16
    np.testing.assert_allclose(probs, logits.softmax(dim=1).numpy(), rtol=1e-5, atol=1e-6)
    backbone_rows = normalize_embeddings(embedding.numpy())
    assert backbone_rows.shape != stored.shape or np.abs(stored - backbone_rows).max() > 0.1
