"""Synthetic faces: an embedded FER benchmark with a lab-like and a wild-like domain.

It lets the whole pipeline run, and be tested, without any licensed dataset.
"""

from clup.data.synthetic.domains import DOMAINS, DomainStyle, Nuisance
from clup.data.synthetic.face import PROTOTYPES, Actions, Identity, render_face
from clup.data.synthetic.generate import generate_domain

__all__ = [
    "DOMAINS",
    "PROTOTYPES",
    "Actions",
    "DomainStyle",
    "Identity",
    "Nuisance",
    "generate_domain",
    "render_face",
]
