"""Reading users' images and writing results atomically: the names of
:mod:`brgm_pyro.image_files` (reading images and masks, conversions to and from model tensors) and
:mod:`brgm_pyro.atomic` (atomic files, :class:`OutputDir`, Ctrl-C held back while writing), kept here
under one name for the many callers of ``brgm_pyro.io``.
"""

from brgm_pyro.atomic import *  # noqa: F401,F403
from brgm_pyro.atomic import MARKER, OutputDir, atomic_path, check_writable_dir, save_json, save_png  # noqa: F401
from brgm_pyro.atomic import sigint_deferred, stems, write_text_atomic  # noqa: F401
from brgm_pyro.image_files import *  # noqa: F401,F403
from brgm_pyro.image_files import (IMAGE_HINT, MASK_HINT, LoadedImage, alpha_mask, center_crop_resize,  # noqa: F401
                                   check_not_constant, default_mask, from_model, match_channels, read_image,
                                   read_mask, sha256, to_model, to_uint8)
