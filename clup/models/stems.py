"""The ResNet-18 stems that keep the resolution, by the name `backbone.stem` gives them.

Apart from clup/models/backbones.py, which builds them, so that the schema can check
`backbone.stem` against this table without importing torch.
"""

STEMS = {"small": (3, 1), "reference": (7, 2)}
"""`BackboneConfig.stem` -> (kernel, padding) of the stride-1 first convolution."""
