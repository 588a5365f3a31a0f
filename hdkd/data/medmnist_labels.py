"""Class names of the 2-D MedMNIST datasets (the MedMNIST v2 papers' label tables), used for a
.npz archive whose file name says which dataset it is: dermamnist.npz, dermamnist_224.npz, ..."""
from __future__ import annotations

import os
import re
from typing import Optional

_ORGANS = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
           "liver", "lung-left", "lung-right", "pancreas", "spleen"]

LABELS = {
    "pathmnist": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                  "normal colon mucosa", "cancer-associated stroma",
                  "colorectal adenocarcinoma epithelium"],
    "dermamnist": ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                   "benign keratosis-like lesions", "dermatofibroma", "melanoma",
                   "melanocytic nevi", "vascular lesions"],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal, benign"],
    "bloodmnist": ["basophil", "eosinophil", "erythroblast",
                   "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
                   "lymphocyte", "monocyte", "neutrophil", "platelet"],
    "tissuemnist": ["Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
                    "Glomerular endothelial cells", "Interstitial endothelial cells",
                    "Leukocytes", "Podocytes", "Proximal Tubule Segments",
                    "Thick Ascending Limb"],
    "organamnist": _ORGANS,
    "organcmnist": _ORGANS,
    "organsmnist": _ORGANS,
}


def medmnist_class_names(path: str, num_classes: int) -> Optional[list[str]]:
    """The class names of the MedMNIST dataset that `path` is named after (an optional _SIZE
    suffix allowed), when it has num_classes classes; else None."""
    stem = re.sub(r"_\d+$", "", os.path.splitext(os.path.basename(path))[0].lower())
    names = LABELS.get(stem)
    return list(names) if names is not None and len(names) == num_classes else None
