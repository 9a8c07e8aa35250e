"""The baselines' settings as their official code sets them, per official setup.

Each preset is named after the setup of the official code it comes from (`digits`,
`office31`, `office-home`, `visda`; docs/methods.md has the full table with every file
and line). The schema checks `sfda.preset` against `PRESETS`, and clup/presets.py fills
an experiment's unset `sfda` values from `TABLE`; this module imports neither.

Citations are `repository path:line` at the commits read: tim-learn/SHOT f7d555a,
Albert0147/NRC_SFDA e5e3bfa, Albert0147/AaD_SFDA cb5567c, DequanWang/tent e9e926a.
"""

from __future__ import annotations

from typing import Any

PRESETS = ("digits", "office31", "office-home", "visda")

AUTO_SIZES = ((3_000, "office31"), (20_000, "office-home"))
"""`auto` by target train images: below 3,000 `office31` (Office-31's domains hold 498 to
2,817 images), below 20,000 `office-home` (2,427 to 4,439 per domain; Art, the smallest,
falls under `office31`), else `visda` (55,388 target images). `digits` is never chosen by
size: its sets (MNIST 60,000, USPS 7,291, SVHN 73,257) overlap the others'."""

# Every script of the three codebases sets SGD momentum 0.9 with Nesterov and batch 64
# (SHOT object/image_target.py:27-29, :307; NRC train_tar.py:32-39, :378; AaD
# tar_adaptation.py:32-39, :419).
_SGD = {"batch_size": 64, "momentum": 0.9}
# SHOT's lr_scheduler sets weight decay 1e-3 on every call (object/image_target.py:27-29);
# NRC's and AaD's copies of it do the same, so wherever their schedule runs so does 1e-3.
_DECAY = {"lr_decay": True, "weight_decay": 1e-3}

_SHOT_OFFICE = {**_SGD, **_DECAY, "lr": 1e-2,  # object/image_target.py:310
                "backbone_lr_scale": 0.1,  # object/image_target.py:319 (lr_decay1)
                "epochs": 15,  # object/image_target.py:305
                "beta": 0.3,  # object/image_target.py:317; object/run.sh:3, :7
                "augment": True,  # image_train, object/image_target.py:32-44
                "pseudo_label_from_epoch": 0}

# NRC has no digits setup and no Office-31 script: its Office-31 values are the comments of
# office-home/train_tar.py (:245, :365, :387-388, :223).
_NRC_OFFICE31 = {**_SGD, **_DECAY, "lr": 1e-3, "backbone_lr_scale": 0.1, "epochs": 50,
                 "k": 2, "kk": 3, "k_late": 0, "kk_late": 0, "augment": True}
# AaD has no digits setup either.
_AAD_OFFICE31 = {**_SGD, "lr": 1e-3,  # office-home/office31_tar.py:402
                 "backbone_lr_scale": 0.1,  # office31_tar.py:237-243
                 "weight_decay": 5e-4, "lr_decay": False,  # office31_tar.py:244-246, :307
                 "epochs": 50,  # office31_tar.py:396
                 "k": 3, "k_late": 0,  # office31_tar.py:405, no switch (:285-287)
                 "alpha0": 1.0, "alpha_decay": 1.0,  # office31_tar.py:302; office31_tar.sh
                 "augment": True}

_TENT = {"epochs": 1,  # one online pass: steps 1, episodic False (conf.py:70, :39)
         "batch_size": 200,  # cfgs/tent.yaml:4-5
         "tent_lr": 1e-3,  # Adam, cfgs/tent.yaml:31, :33-35
         "augment": False}  # the test stream as it is (cifar10c.py)

TABLE: dict[str, dict[str, dict[str, Any]]] = {
    "shot": {
        "digits": {**_SGD, **_DECAY, "lr": 1e-2,  # digit/uda_digit.py:420
                   "backbone_lr_scale": 1.0,  # digit/uda_digit.py:284-287
                   "epochs": 30,  # digit/uda_digit.py:416
                   "beta": 0.1,  # digit/digit.sh:1-3 (argparse 0.3, :422)
                   "augment": False,  # digit/uda_digit.py:47-53, :76-80, :98-102
                   "pseudo_label_from_epoch": 0},
        "office31": _SHOT_OFFICE,
        "office-home": _SHOT_OFFICE,
        "visda": {**_SHOT_OFFICE, "lr": 1e-3,  # object/run.sh:11
                  # The pseudo-label term is multiplied by 0 over the first interval, one
                  # epoch (object/image_target.py:194-195, :306).
                  "pseudo_label_from_epoch": 1},
    },
    "nrc": {
        "digits": _NRC_OFFICE31,
        "office31": _NRC_OFFICE31,
        "office-home": {**_SGD, "lr": 1e-3,  # office-home/train_tar.py:383
                        "backbone_lr_scale": 0.1,  # office-home/train_tar.py:163-181
                        "weight_decay": 5e-4,  # office-home/train_tar.py:182-184
                        "lr_decay": False,  # office-home/train_tar.py:245-246, commented out
                        "epochs": 40,  # office-home/train_tar.py:364-365
                        "k": 3, "kk": 2,  # office-home/train_tar_oh.sh:1-23
                        "k_late": 5, "kk_late": 4,  # office-home/train_tar.py:223-226
                        "augment": True},
        "visda": {**_SGD, **_DECAY, "lr": 1e-3,  # train_tar.py:388; schedule :232-233
                  "backbone_lr_scale": 0.1,  # train_tar.py:169-178
                  "epochs": 15,  # train_tar.py:373
                  "k": 5, "kk": 5, "k_late": 0, "kk_late": 0,  # train_tar.py:395-396
                  "augment": True},
    },
    "aad": {
        "digits": _AAD_OFFICE31,
        "office31": _AAD_OFFICE31,
        "office-home": {**_SGD, "lr": 1e-3,  # office-home/train_tar.py:365
                        "backbone_lr_scale": 0.1,  # office-home/train_tar.py:180-186
                        "weight_decay": 5e-4,  # office-home/train_tar.py:187-189
                        "lr_decay": False,  # --lr_decay off, office-home/train_tar.py:390
                        "epochs": 40,  # office-home/train_tar.py:358
                        "k": 3, "k_late": 2,  # train_tar_oh.sh:3-25; train_tar.py:233-235
                        # --alpha 1 without --alpha_decay: constant (train_tar.py:250-253)
                        "alpha0": 1.0, "alpha_decay": 0.0,
                        "augment": True},
        "visda": {**_SGD, **_DECAY, "lr": 1e-3,  # tar_adaptation.py:422; :307-308
                  "backbone_lr_scale": 0.1,  # tar_adaptation.py:237-252
                  "epochs": 15,  # tar_adaptation.py:417
                  "k": 5, "k_late": 0,  # tar_adaptation.py:427
                  "alpha0": 1.0, "alpha_decay": 5.0,  # tar_adaptation.py:437-438
                  "augment": True},
    },
    "tent": {preset: _TENT for preset in PRESETS},
}
