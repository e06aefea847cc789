"""The ``deepfashion_upgpt`` TFDS builder (see :mod:`.deepfashion_upgpt_dataset_builder`)."""
from data.deepfashion_upgpt.deepfashion_upgpt_dataset_builder import DeepfashionUpgpt

__all__ = ["DeepfashionUpgpt"]
