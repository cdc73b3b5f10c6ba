"""Fixtures shared by the evaluation tests."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


@pytest.fixture(scope="session")
def digits():
  """scikit-learn's 8x8 digits as float32 features, split 70/30, stratified and seeded."""
  x, y = load_digits(return_X_y=True)
  x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0,
                                                      stratify=y)
  return x_train.astype(np.float32), y_train, x_test.astype(np.float32), y_test
