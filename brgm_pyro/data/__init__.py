"""Datasets made by this project (procedural cartoon faces for the bundled generator)."""

from brgm_pyro.data.faces import (FACE_LATENT_DIM, FACE_RESOLUTION, TEST_SEED, TRAIN_SEED, FaceParams,
                                  FacesDataset, draw_face, face_batch, face_grid, face_image,
                                  face_latent, face_params, make_face_dataset)

__all__ = ["FACE_LATENT_DIM", "FACE_RESOLUTION", "TRAIN_SEED", "TEST_SEED", "FaceParams", "FacesDataset",
           "draw_face", "face_batch", "face_grid", "face_image", "face_latent", "face_params",
           "make_face_dataset"]
