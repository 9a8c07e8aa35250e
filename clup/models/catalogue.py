"""What an experiment may name for its network: the backbones and the ResNet-18 stems.

Apart from clup/models/backbones.py, which builds them, so that the schema can check
`backbone.name` and `backbone.stem` against these tables without importing torch.
"""

RESNET18, SMALL_CNN = "resnet18", "small_cnn"
BACKBONES = (RESNET18, SMALL_CNN)
"""`BackboneConfig.name`: torchvision's ResNet-18, or the small CNN of the CPU demo."""

STEMS = {"small": (3, 1), "reference": (7, 2)}
"""`BackboneConfig.stem` -> (kernel, padding) of the stride-1 first convolution."""
