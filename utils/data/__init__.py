"""Stage 01 — data: where the images come from and what a patient is.

``images`` reads one file robustly; ``phantom`` draws procedural chest X-rays with lung and lesion masks;
``patients`` keys patients from Kermany file names; ``sources`` loads a Kermany folder, PneumoniaMNIST or
the phantoms into one :class:`DataBundle`; ``splits`` carves validation by patient and guards against
leaks; ``augment`` perturbs training batches on the device; ``fixture`` builds a folder in the official
Kaggle layout from the real file names with synthetic pixels.
"""
from utils.data.bundle import SPLITS, DataBundle, Split, fingerprint
from utils.data.patients import patient_id_from_name, patient_key_evidence, shared_patients_by_rule, subtype_from_name
from utils.data.sources import decode_cached, image_sizes, load_data, load_folder, patient_key_report, scan_folder
from utils.data.splits import (
                               LeakageError,
                               LeakReport,
                               check_no_leaks,
                               duplicate_groups,
                               duplicate_table,
                               file_level_leak,
                               find_leaks,
                               patient_split,
)

__all__ = [
                               "SPLITS",
                               "DataBundle",
                               "LeakReport",
                               "LeakageError",
                               "Split",
                               "check_no_leaks",
                               "decode_cached",
                               "duplicate_groups",
                               "duplicate_table",
                               "file_level_leak",
                               "find_leaks",
                               "fingerprint",
                               "image_sizes",
                               "load_data",
                               "load_folder",
                               "patient_id_from_name",
                               "patient_key_evidence",
                               "patient_key_report",
                               "patient_split",
                               "scan_folder",
                               "shared_patients_by_rule",
                               "subtype_from_name",
]
