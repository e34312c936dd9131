"""Training commands of this project: the bundled faces generator and its perceptual network."""
