"""Every public name the model modules had before they were split is still importable from its old module, and the
renamed classes and constants are the same objects under both names."""
from __future__ import annotations

import importlib

import pytest

OLD_NAMES = {
    "model.equivariant": [
        "FieldAvgPool2d", "FieldBatchNorm", "FieldNonlinearity", "FieldTensor", "FieldType", "FieldUpsample",
        "GroupElement", "MOMENT_GROUPS", "MomentConv2d", "N_ANGULAR", "UPSAMPLE_MODES", "VECTOR_NONLINEARITIES",
        "act", "act_field", "block_terms", "cat_fields", "exact_arithmetic", "fold_conv_norm", "moment_dictionary",
        "radial_grid", "vector_matrix", "_FieldBatchNormFn", "_NormReLUFn"],
    "model.equivariantUnet": [
        "EqUnetVariant", "FieldAvgPool2d", "FieldBatchNorm", "FieldNonlinearity", "FieldType", "FieldUpsample",
        "MOMENT_GROUPS", "MomentConv2d", "MomentDown", "MomentTwoConv", "MomentUNet", "MomentUpCat", "UNetBase",
        "cat_fields", "fold_conv_norm", "level_channels"],
    "model.escnnUnet": [
        "AntialiasedMaxPool2d", "AntialiasedPool2d", "BACKENDS", "CONTINUOUS_GROUPS", "EscnnUNet", "ExportedEscnnUNet",
        "ExportedUp", "FIELDS", "FieldBatchNorm2d", "FieldNormPool", "FourierReLU", "GROUPS", "GroupMaxPool", "INITS",
        "IrrepBatchNorm2d", "NORMS", "POOLS", "UPSAMPLE_MODES", "escnnUnetVariant", "group_name", "group_order",
        "he_init_", "level_fields", "parse_group", "_invariant_projector", "_backend", "_gspace", "_copy_into"],
    "model.field_layers": [
        "AntialiasedMaxPool2d", "AntialiasedPool2d", "FieldBatchNorm2d", "FieldNormPool", "FourierReLU",
        "GroupMaxPool", "IrrepBatchNorm2d"],
    "model.equivariance": [
        "GROUPS", "GroupElement", "NORMS", "act", "act_inverse", "calibrate_batchnorm", "central_disk",
        "disk_on_canvas", "equivariance_error", "flip", "group_elements", "max_error", "mean_rotation_errors",
        "rot90", "rotate", "smooth_noise"],
    "model.unet": ["Down", "NORMS", "POOLS", "TwoConv", "UNet", "UPSAMPLE_MODES", "UnetVariant", "UpCat", "make_norm"],
}


@pytest.mark.parametrize("module", sorted(OLD_NAMES))
def test_old_names_importable(module):
    mod = importlib.import_module(module)
    missing = [n for n in OLD_NAMES[module] if not hasattr(mod, n)]
    assert not missing, f"{module} lost {missing}"
    assert all(hasattr(mod, n) for n in getattr(mod, "__all__", []))


def test_renamed_names_are_aliases():
    from model import equivariance, equivariant, escnnUnet, field_layers, groups, moment, unet
    from model.escnn_backend import invariant_projector
    from model.moment.norm import _ScalarVectorBatchNormFn

    assert equivariant.FieldBatchNorm is moment.ScalarVectorBatchNorm
    assert equivariant._FieldBatchNormFn is _ScalarVectorBatchNormFn
    assert field_layers.FieldBatchNorm2d is field_layers.RegularFieldBatchNorm2d is escnnUnet.FieldBatchNorm2d
    assert escnnUnet._invariant_projector is invariant_projector
    assert escnnUnet.NORMS is escnnUnet.FIELD_NORMS and unet.NORMS is unet.NORM_LAYERS
    assert equivariance.NORMS is equivariance.ERROR_NORMS
    assert equivariance.GROUPS is escnnUnet.GROUPS is groups.GROUPS
    assert equivariant.MOMENT_GROUPS is groups.MOMENT_GROUPS
