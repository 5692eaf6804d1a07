import pytest
import torch
from torch import nn

from marginkit.checks import (MarginkitWarning, check_box, check_inputs, check_labels, check_logits,
                              check_model_mode, looks_like_probabilities)


def test_inputs_errors_name_the_problem():
    with pytest.raises(ValueError, match="NaN"):
        check_inputs(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="batch dimension"):
        check_inputs(torch.zeros(3))
    with pytest.raises(TypeError, match="floating point"):
        check_inputs(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        check_inputs(torch.zeros(0, 3))


def test_labels_errors():
    with pytest.raises(ValueError, match="only 3 outputs"):
        check_labels(torch.tensor([0, 3]), 2, 3)
    with pytest.raises(ValueError, match="negative"):
        check_labels(torch.tensor([0, -1]), 2, 3)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        check_labels(torch.tensor([0, 1]), 3, 3)
    with pytest.raises(TypeError, match="integer"):
        check_labels(torch.tensor([0.0, 1.0]), 2, 3)


def test_logits_errors():
    with pytest.raises(ValueError, match="non-finite"):
        check_logits(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(ValueError, match="at least 2"):
        check_logits(torch.zeros(4, 1))


def test_train_mode_warns_and_strict_raises():
    m = nn.Linear(2, 2).train()
    with pytest.warns(MarginkitWarning, match="train mode"):
        check_model_mode(m)
    with pytest.raises(ValueError, match="train mode"):
        check_model_mode(m, strict=True)


def test_probabilities_detected():
    assert looks_like_probabilities(torch.softmax(torch.randn(5, 3), 1))
    assert not looks_like_probabilities(torch.randn(5, 3))


def test_box():
    with pytest.raises(ValueError, match="outside the bounds"):
        check_box(torch.tensor([[1.5]]), (0.0, 1.0))


def test_error_classes_and_one_line():
    from marginkit.checks import FileFormatError, InputError, OutputFolderError, one_line

    assert issubclass(FileFormatError, InputError) and issubclass(InputError, ValueError)
    assert issubclass(OutputFolderError, OSError) and str(OutputFolderError("folder x is a file")) == "folder x is a file"
    assert one_line(RuntimeError("the first line, long enough\nsecond line")) == "the first line, long enough"
    assert one_line(KeyError(101)) == "KeyError: 101"
    long = RuntimeError("A" * 50 + ". " + "b" * 300)
    assert one_line(long, limit=80) == "A" * 50 + "."
    assert len(one_line(RuntimeError("c" * 500), limit=80)) == 80
