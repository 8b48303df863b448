"""Moment-kernel equivariant layers and the moment U-Net, exactly equivariant to D4 (or C4) on the pixel grid.

Written from the maths of moment kernels (Schlamowitz, Bennecke & Tward, 2025); no code is copied.

=============================  ==========================================================================
module                         what it holds
=============================  ==========================================================================
:mod:`~model.moment.fields`    ``FieldType`` (scalars, then 2-channel vector fields), ``FieldTensor``, ``cat_fields``
:mod:`~model.moment.action`    how D4 acts on those fields (``vector_matrix``, ``act_field``)
:mod:`~model.moment.basis`     the kernel basis: pixel radii and directions, the dictionary, terms per block
:mod:`~model.moment.conv`      ``MomentConv2d``: kernel assembled from the basis, then one ``conv2d``
:mod:`~model.moment.norm`      ``ScalarVectorBatchNorm`` (old name ``FieldBatchNorm``), hand-written backward
:mod:`~model.moment.activations`  ``FieldNonlinearity``: ReLU on scalars, norm-ReLU or gate on vectors
:mod:`~model.moment.resample`  ``FieldAvgPool2d``, ``FieldUpsample``
:mod:`~model.moment.fold`      ``fold_conv_norm``: a norm folded into its convolution for inference
:mod:`~model.moment.unet`      ``MomentUNet`` and its blocks
=============================  ==========================================================================

Exact D4 equivariance of networks built from these layers needs odd kernels (centred on pixels, zero padding
``k//2``), even spatial sizes at every 2× pooling, and statistics that are invariant (means over batch and all
pixels). All layers here satisfy this. In float32 the only deviations are rounding, which differs between
``f(g·x)`` and ``g·f(x)`` because sums run in another order; equivariance checks therefore run inside
:func:`model.equivariance.exact_arithmetic`.
"""
from .action import act_field, vector_matrix
from .activations import VECTOR_NONLINEARITIES, FieldNonlinearity
from .basis import N_ANGULAR, block_terms, moment_dictionary, radial_grid
from .conv import MomentConv2d
from .fields import FieldTensor, FieldType, cat_fields
from .fold import fold_conv_norm
from .norm import FieldBatchNorm, ScalarVectorBatchNorm
from .resample import UPSAMPLE_MODES, FieldAvgPool2d, FieldUpsample
from .unet import EqUnetVariant, MomentDown, MomentTwoConv, MomentUNet, MomentUpCat

__all__ = ["FieldType", "FieldTensor", "cat_fields", "act_field", "vector_matrix", "N_ANGULAR", "radial_grid",
           "moment_dictionary", "block_terms", "MomentConv2d", "ScalarVectorBatchNorm", "FieldBatchNorm",
           "FieldNonlinearity", "VECTOR_NONLINEARITIES", "FieldAvgPool2d", "FieldUpsample", "UPSAMPLE_MODES",
           "fold_conv_norm", "MomentUNet", "EqUnetVariant", "MomentTwoConv", "MomentDown", "MomentUpCat"]
