"""The OCELOT 2023 on-disk format: read, validate, points → masks, download + verify.

Layout (see ``DESIGN.md``)::

    <root>/images/{train,val,test}/{cell,tissue}/<id>.jpg
    <root>/annotations/{train,val,test}/cell/<id>.csv      rows "x,y,class", no header; may be empty
    <root>/annotations/{train,val,test}/tissue/<id>.png    1 background, 2 cancer, 255 unknown
    <root>/metadata.json                                   {"sample_pairs": {<id>: {...}}}

Nothing here assumes a patch size or a resolution: sizes come from the images, the resolution (µm/px) of a
cell patch from ``metadata.json`` (``cell.resized_mpp_x/y`` as in OCELOT, else a per-sample ``mpp``).
Tissue patches are optional (the shipped ``data/brca_m2c`` has none).

CLI::

    python -m util.ocelot validate ROOT [--no-decode]   # every problem at once, exit code 1 when there are any
    python -m util.ocelot download DEST [--url URL] [--sha256 HEX] [--size BYTES]

The package, one job a module (every name is re-exported here): ``classes`` (the cell classes: names,
colours), ``layout`` (paths, ids), ``files``
(CSV, images, tissue masks, the points JSON), ``metadata`` (checked values, µm/px), ``masks`` (points → disks),
``validate`` (a whole folder; the check before training), ``download``, ``cli``.
"""
from util.ocelot.classes import CELL_CLASS_RGB, CELL_CLASS_TITLES, hex_color  # noqa: F401
from util.ocelot.layout import (SPLITS, CELL_CLASSES, TISSUE_LABELS, IMAGE_SUFFIXES, OcelotFormatError, _image_dir,
                                _check_split, list_ids, find_image, cell_csv_path, tissue_png_path)  # noqa: F401
from util.ocelot.files import (Problem, _parse_cells, read_cells_csv, write_cells_csv, read_image, read_tissue_mask,
                               write_points_json, read_points_json)  # noqa: F401
from util.ocelot.metadata import (Metadata, METADATA_FIELDS, _EXPECTED, MPP_PAIRS, MPP_TOLERANCE, _ABSENT,
                                  read_metadata, _show, _entry, _entry_value, _number, sample_mpp, tissue_mpp,
                                  cell_box_in_tissue, metadata_problems)  # noqa: F401
from util.ocelot.masks import radius_px, points_to_mask  # noqa: F401
from util.ocelot.validate import (ValidationReport, _PNG_SIGNATURE, _PNG_END, _image_problems, _mode_size,
                                  _files_by_id, validate_dataset, check_dataset_for_training)  # noqa: F401
from util.ocelot.download import (OCELOT_URL, DownloadError, _file_digest, _fetch_with_resume, _dataset_root_in,
                                  download_ocelot)  # noqa: F401
from util.ocelot.cli import main  # noqa: F401
