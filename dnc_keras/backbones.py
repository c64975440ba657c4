"""Backbones and the embedding head: images -> (pooled feature f, embedding z = W f + b).

The encoder takes float32 images in [0, 1] of shape [batch, H, W, C]; any normalisation a
backbone needs (ResNet-50's caffe preprocessing) happens inside it, so every caller, export
included, feeds the same thing.
"""

import keras
import tensorflow as tf

from dnc_keras_cli.options import NORMALIZATIONS


@keras.saving.register_keras_serializable(package="dnc_keras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training-mode forward and gradient are one
    fused TensorFlow kernel each.

    Keras 3 builds training-mode batch normalization from separate ops (moments, then scale and
    shift), each a pass over the activation with its own gradient; in the Conv-4 train step on
    CPU they cost about a fifth of the step (docs/performance.md). For 4-D float32
    channels-last inputs in training mode (no mask or synchronisation) this layer runs
    `FusedBatchNormV3` instead, with the same arithmetic: normalisation by the biased batch
    variance, and moving statistics updated with it; with `renorm=True` Keras's own renorm
    correction (r, d, held constant in the gradient) is folded into the kernel's scale and
    offset.
    Every other case, inference included, is Keras's own code, so variables, configs,
    checkpoints and exported graphs are unchanged.
    """

    def call(self, inputs, training=None, mask=None):
        if (not (training and self.trainable) or mask is not None
                or self.synchronized or len(inputs.shape) != 4 or self.axis not in (-1, 3)
                or inputs.dtype != tf.float32 or self.compute_dtype != "float32"):
            return super().call(inputs, training=training, mask=mask)
        ones = tf.ones_like(self.moving_mean)
        gamma = self.gamma if self.scale else ones
        beta = self.beta if self.center else tf.zeros_like(ones)
        if self.renorm:
            # Renorm's correction (r, d: constants in the gradient) folded into the kernel's
            # scale and offset, gamma r and gamma d + beta, from the batch's moments taken
            # first: those need no gradient, where the correction applied after the kernel
            # was one more pass over the activation forward and three backward.
            mean, variance = tf.nn.moments(inputs, axes=[0, 1, 2])
            r, d, _, _ = self._renorm_correction_and_moments(mean, variance)
            scale, offset = self._compose_transforms(r, d, gamma, beta, inputs.dtype)
            self._update_renorm_statistics(mean, variance)
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset, epsilon=self.epsilon, data_format="NHWC",
                is_training=True)
            return outputs
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        variance = _biased(variance, inputs)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum
                                    + variance * (1.0 - momentum))
        return outputs


def _biased(variance, inputs):
    """The kernel returns the variance with Bessel's correction; Keras tracks the biased one."""
    count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
    return variance * (count - 1.0) / tf.maximum(count, 1.0)


def conv4(input_shape, weights=None, width=64, name="conv4", normalization="batch"):
    """The Conv-4 of the few-shot literature: 4 x (conv 3x3, BatchNorm, ReLU, max-pool 2).

    It trains from scratch: `weights` must be None.

    Args:
        normalization: `"batch"`: BatchNorm normalises a training batch by its own statistics.
            `"renorm"`: batch renormalisation (Ioffe, 2017; Keras's `renorm=True`, unclipped):
            a training batch is normalised by the moving statistics, as inference is, with
            the gradient of the batch's own. DnC draws each batch from one cluster, whose
            statistics are not the data's: with `"batch"` a learner trains on features that
            inference never computes, and the train steps' features cannot stand in for a
            full embedding pass at re-clustering. Defaults to `"batch"`.
    """
    if weights is not None:
        raise ValueError(f"conv4 has no pretrained weights; it trains from scratch. Received: "
                         f"weights={weights!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}. Received: "
                         f"normalization={normalization!r}")
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for i in range(4):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = FusedBatchNormalization(renorm=normalization == "renorm", name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if x.shape[1] > 1 and x.shape[2] > 1:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    return keras.Model(inputs, x, name=name)


def resnet50(input_shape, weights="imagenet"):
    """keras.applications ResNet-50 (v1, caffe preprocessing) without its classifier.

    Args:
        weights: `"imagenet"` (downloaded by Keras), a path to a local weights file, or `None`.
    """
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Rescaling(255.0, name="to_0_255")(inputs)
    x = CaffePreprocess(name="caffe_preprocess")(x)
    net = keras.applications.ResNet50(include_top=False, weights=weights,
                                      input_shape=tuple(input_shape))
    return keras.Model(inputs, net(x), name="resnet50")


@keras.saving.register_keras_serializable(package="dnc_keras")
class CaffePreprocess(keras.layers.Layer):
    """RGB in [0, 255] -> BGR minus the ImageNet mean: what keras.applications' ResNet-50
    weights expect (`keras.applications.resnet50.preprocess_input`). A registered layer,
    unlike a `Lambda` around that function, saves to and loads from `.keras` files."""

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, inputs):
        bgr = keras.ops.flip(inputs, axis=-1)
        return bgr - keras.ops.convert_to_tensor(self.MEAN_BGR, dtype=bgr.dtype)


def build_backbone(name, input_shape, weights=None, **kwargs):
    """Builds a backbone by its name in the registry (`dnc_keras_cli.options.BACKBONES`);
    `kwargs` go to its builder (conv4's `normalization`)."""
    from dnc_keras_cli.options import BACKBONES as REGISTRY
    from dnc_keras_cli.options import resolve

    return resolve(REGISTRY, name, "backbone")(input_shape, weights=weights, **kwargs)


@keras.saving.register_keras_serializable(package="dnc_keras")
class FrozenStatistics(keras.layers.Layer):
    """Runs a backbone in inference mode always: BatchNorm uses and keeps its moving
    statistics while its scale and shift still train (PyTorch's `bn.eval()`).

    Keras 3 functional models override an inner `training=False` with the outer call's
    `training`, so the freeze has to live in a layer whose `call` takes no `training`.
    """

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, inputs):
        return self.backbone(inputs, training=False)

    def compute_output_shape(self, input_shape):
        return self.backbone.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config["backbone"] = keras.saving.serialize_keras_object(self.backbone)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def build_encoder(backbone, embedding_dim=128, dropout=0.01, freeze_bn_stats=True):
    """Wraps a backbone into images -> [f, z], the encoder that DnCModel trains.

    f is the global-average-pooled backbone output (what re-clustering uses by default),
    z = W dropout(f) + b the embedding of width `embedding_dim` (method.md, section 1).

    Args:
        backbone: a Keras model mapping images to a feature map [b, h, w, c] or vector [b, c].
        embedding_dim: d. Defaults to `128` (CVPR; TPAMI uses 512).
        dropout: dropout before the linear embedding. Defaults to `0.01`.
        freeze_bn_stats: run the backbone in inference mode (`FrozenStatistics`), so BatchNorm
            uses (and keeps) its moving statistics while its scale and shift still train, as
            the papers do with ImageNet weights. Set `False` for a backbone trained from scratch (the Conv-4).
            Defaults to `True`.
    """
    inputs = keras.Input(shape=backbone.input_shape[1:], name="images")
    x = FrozenStatistics(backbone, name="frozen_bn")(inputs) if freeze_bn_stats \
        else backbone(inputs)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    features = keras.layers.Identity(name="features")(x)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(features)
    z = keras.layers.Dense(embedding_dim, name="embedding")(x)
    return keras.Model(inputs, [features, z], name="encoder")
