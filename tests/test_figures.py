"""Image grids and tables: one picture, images in their places with white lines between."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trilemma import figures


def test_grid_array_places_each_image_between_white_lines_and_fills_empty_places_white():
    images = np.arange(3 * 1 * 2 * 2, dtype=np.uint8).reshape(3, 1, 2, 2)  # values below 255
    grid = figures.grid_array(images, cols=2, padding=1)
    assert grid.shape == (2 * 3 + 1, 2 * 3 + 1, 1)
    for i, image in enumerate(images):
        top, left = 1 + 3 * (i // 2), 1 + 3 * (i % 2)
        assert (grid[top:top + 2, left:left + 2, 0] == image[0]).all()
    assert (grid[4:6, 4:6] == 255).all()  # the fourth place is empty
    assert (grid[[0, 3, 6]] == 255).all() and (grid[:, [0, 3, 6]] == 255).all()  # the lines


def test_image_table_is_one_picture_with_row_labels_column_titles_and_empty_places_white():
    rows = [("3 before", torch.zeros(4, 1, 28, 28, dtype=torch.uint8)),
            ("3 after", torch.zeros(2, 1, 28, 28, dtype=torch.uint8))]
    fig = figures.image_table(rows, titles=["a", "b", "c", "d"], title="steering")
    [ax] = fig.get_axes()  # one axes for the whole table, not one per image
    assert [t.get_text() for t in ax.get_yticklabels()] == ["3 before", "3 after"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d"]
    assert list(ax.get_yticks()) == [2 + 13.5, 2 + 30 + 13.5]  # each label at its row's middle
    table = ax.get_images()[0].get_array()
    assert table.shape == (2 * 30 + 2, 4 * 30 + 2)  # grey, 4 places a row, white lines of 2
    places = [(row, col) for row, n in enumerate((4, 2)) for col in range(n)]
    for row, col in places:  # each image in its place
        assert (table[2 + 30 * row:30 + 30 * row, 2 + 30 * col:30 + 30 * col] == 0).all()
    assert (table[[0, 1, 30, 31]] == 255).all()  # the white lines between rows
    assert (table[30:, 2 * 30 + 2:] == 255).all()  # the short row's empty places
    assert fig.get_suptitle() == "steering"
    figures.pyplot().close(fig)


def test_image_table_places_labels_by_height_and_titles_by_width_for_wide_images():
    rows = [("r0", torch.zeros(3, 1, 10, 40, dtype=torch.uint8)),
            ("r1", torch.zeros(3, 1, 10, 40, dtype=torch.uint8))]
    fig = figures.image_table(rows, titles=["a", "b", "c"])
    [ax] = fig.get_axes()
    assert list(ax.get_yticks()) == [2 + 4.5, 2 + 12 + 4.5]  # rows step by height + line
    assert list(ax.get_xticks()) == [2 + 19.5, 2 + 42 + 19.5, 2 + 84 + 19.5]  # columns by width
    assert ax.get_images()[0].get_array().shape == (2 * 12 + 2, 3 * 42 + 2)
    figures.pyplot().close(fig)


def test_grids_take_uint8_tensors_or_arrays_and_refuse_other_dtypes(tmp_path):
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    figures.save_grid(images, tmp_path / "tensor.png")
    figures.save_grid(images.numpy(), tmp_path / "array.png")
    assert (tmp_path / "tensor.png").read_bytes() == (tmp_path / "array.png").read_bytes()
    with pytest.raises(TypeError, match="uint8.*float32"):
        figures.save_grid(images.float() / 255, tmp_path / "float.png")  # would wrap silently
    assert not (tmp_path / "float.png").exists()
