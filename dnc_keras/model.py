"""DnCModel: a keras.Model whose train_step routes each batch to its learner's subspace."""

import keras
import numpy as np
import tensorflow as tf

from dnc_keras import progress
from dnc_keras.layers import SubspaceMasks
from dnc_keras.preprocessing import Preprocessing


@keras.saving.register_keras_serializable(package="dnc_keras")
class DnCModel(keras.Model):
    """Divide-and-conquer metric learning model: encoder -> embedding z -> learner subspaces.

    Batches are `({"images": x, "learner": k}, labels)` (what `ClusterBatchSampler.as_dataset`
    yields) or plain `(x, labels)`, which trains learner 0. Each batch trains one learner: the
    compiled loss sees normalize(mask_k * z); after `conquer()` it sees the full normalize(z),
    the masks freeze and the overlap penalty stops. `predict` returns the inference embedding
    (normalize(z) by default), `evaluate` the loss on it.

    Metrics given to `compile(metrics=...)` take (labels, embeddings), as the losses do: a
    Keras metric or a function `metric(y_true, y_pred)` returning a value per batch (averaged
    over the epoch). They see the inference embedding (what `predict` returns) of each batch,
    in `fit` (the global batch under `tf.distribute`) and in `evaluate`, and appear in the logs
    and `History` under their names (`val_<name>` on validation data).

    Args:
        encoder: a Keras model images -> [f, z] (see `dnc_keras.backbones.build_encoder`).
        subspaces: a `SubspaceMasks` layer over z.
        mask_lr_multiplier: learned masks train with this multiple of the base learning rate
            (TPAMI: 1e-3 for masks against 1e-5). Defaults to `100.0`.
        weight_decay: coupled L2 added to the gradient of encoder weights, as PyTorch's Adam
            `weight_decay` does in the official code (not Keras's decoupled weight decay).
            Defaults to `0.0`; the official preset is `1e-4`.
        mask_weight_decay: coupled L2 added to the gradient of learned masks (TPAMI's masks
            sit in an Adam group with weight decay). Defaults to `0.0`.
        preprocessing: the `Preprocessing` record (or its dict) that makes this model's input
            from image files, saved with the model so that an export serves exactly what
            was trained. Defaults to `None`.
        learned_beta: the starting value of learned margin-loss betas (`margin_betas`), or
            `None` for none. `compile` with `MarginLoss(learn_beta=True)` sets it from the
            loss when it is None; it is in the config so that a saved model loads its betas
            even uncompiled. Defaults to `None`.

    Example:
    ```python
    encoder = build_encoder(conv4((28, 28, 1)), embedding_dim=128, freeze_bn_stats=False)
    model = DnCModel(encoder, SubspaceMasks(128, max_learners=4))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=TripletHardLoss())
    model.fit(sampler.as_dataset(x_train), epochs=10, callbacks=dnc_callbacks(sampler, x_train))
    ```
    """

    def __init__(self, encoder, subspaces, mask_lr_multiplier=100.0, weight_decay=0.0,
                 preprocessing=None, mask_weight_decay=0.0, learned_beta=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(subspaces, SubspaceMasks):
            raise TypeError(f"subspaces must be a SubspaceMasks layer; got {type(subspaces)}")
        self.encoder = encoder
        self.subspaces = subspaces
        self.mask_lr_multiplier = float(mask_lr_multiplier)
        self.weight_decay = float(weight_decay)
        self.mask_weight_decay = float(mask_weight_decay)
        self.preprocessing = None if preprocessing is None else \
            Preprocessing.from_dict(preprocessing)
        self.conquered = self.add_weight(name="conquered", shape=(), dtype="int32",
                                         initializer="zeros", trainable=False)
        self.mask_optimizer = None
        self.learned_beta = None
        self.margin_betas = None
        self.beta_optimizer = None
        if learned_beta is not None:
            self._add_margin_betas(learned_beta)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.overlap_tracker = keras.metrics.Mean(name="overlap")
        # Steps of the epoch whose embeddings, loss or gradients were not finite: divergence
        # shows here at the step it starts (dnc_keras.callbacks.DivergenceGuard stops on it).
        self.nonfinite_tracker = keras.metrics.Sum(name="nonfinite")
        # Every variable lives in the (already built) encoder and subspaces; nothing is left
        # for a symbolic call to create, and save_weights needs a built model.
        self.built = True

    # -- Keras plumbing --------------------------------------------------------------------
    def call(self, inputs, training=False):
        _, z = self.encoder(_images(inputs), training=training)
        return self.subspaces(z)

    def compile(self, optimizer="adam", loss=None, mask_optimizer=None, **kwargs):
        """Compiles with the learner loss; learned masks get their own optimizer.

        Args:
            loss: a metric-learning loss taking (labels, embeddings), e.g. `MarginLoss()`.
            metrics: (in kwargs) metrics taking (labels, embeddings), reported in fit's and
                evaluate's logs; computed on the inference embedding (see the class docs).
            mask_optimizer: optimizer of the learned masks. Defaults to a copy of `optimizer`
                with `mask_lr_multiplier` times its learning rate.

        A `MarginLoss(learn_beta=True)` gets its beta learned here: `margin_betas` holds one
        per learner slot and one (the last) for the conquered embedding, all starting at the
        loss's `beta` (unless the model has them already), trained by `beta_optimizer` (a copy
        of `optimizer`, same learning rate, no weight decay). A dividing learner's children
        inherit its beta. Compiled with another loss, the model keeps its betas unused.

        Under the `"mixed_float16"` policy (float16 compute), Keras wraps `optimizer` in a
        `keras.optimizers.LossScaleOptimizer`, and the mask optimizer is wrapped likewise.
        """
        if loss is None:
            raise ValueError("DnCModel.compile needs a metric-learning loss, e.g. "
                             "dnc_keras.losses.MarginLoss()")
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        self.learner_loss = keras.losses.get(loss)
        if self.subspaces.mode == "learned":
            self.mask_optimizer = mask_optimizer or _scaled_copy(self.optimizer,
                                                                 self.mask_lr_multiplier)
            if self.dtype_policy.name == "mixed_float16" and not _loss_scaled(
                    self.mask_optimizer):
                # As Keras's compile does for `optimizer`: float16 gradients need loss scaling.
                self.mask_optimizer = keras.optimizers.LossScaleOptimizer(
                    self.mask_optimizer, name="mask_loss_scale_optimizer")
            # Built here, in the strategy scope compile runs in: fit's replicas cannot create
            # its slots, and fit only builds `optimizer` ahead of the first step.
            self.mask_optimizer.build([self.subspaces.masks])
        if getattr(self.learner_loss, "learn_beta", False):
            if self.distribute_strategy.num_replicas_in_sync > 1:
                raise ValueError("A learned beta is not supported under a multi-replica "
                                 "strategy")
            if self.margin_betas is None:
                self._add_margin_betas(self.learner_loss.beta)
            self.beta_optimizer = _scaled_copy(self.optimizer, 1.0)
            self.beta_optimizer.build([self.margin_betas])

    def _add_margin_betas(self, beta):
        """One beta per learner slot and one for the conquered embedding, all at `beta`."""
        self.learned_beta = float(beta)
        self.margin_betas = self.add_weight(
            name="margin_betas", shape=(self.subspaces.max_learners + 1,),
            initializer=keras.initializers.Constant(beta), dtype="float32")

    def compile_from_config(self, config):
        """Restores compile() on keras.saving.load_model, so the loaded model trains on."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.encoder.trainable_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under tf.distribute, Keras 3's fit pulls one batch from a fresh iterator to build the
        # model. With `ClusterBatchSampler.as_dataset` that runs the sampler's generator once
        # more than there are epochs and shifts every epoch's draws, so the run would differ
        # from the same run on one device. A DnCModel is built at construction: only the
        # optimizer is left to build, in the strategy's scope.
        if self._distribute_strategy is None:
            return  # the compiled metrics build when the train/test function is traced
        self._build_compile_metrics()
        if self.optimizer is not None and not self.optimizer.built:
            with self._distribute_strategy.scope():
                self.optimizer.build(self.encoder.trainable_variables)

    def _build_compile_metrics(self):
        # Keras builds `compile(metrics=...)` from a symbolic batch, which the override above
        # skips; their variables must be created in the strategy's scope, not in a replica
        # (DistributedTrainer calls this too).
        compiled = self._compile_metrics
        if compiled is None or compiled.built:
            return
        labels = keras.KerasTensor((None,), "int32")
        embedding = keras.KerasTensor((None, self.subspaces.embedding_dim), "float32")
        with self.distribute_strategy.scope():
            compiled.build(labels, embedding)

    @property
    def metrics(self):
        own = [self.loss_tracker, self.overlap_tracker, self.nonfinite_tracker]
        return own + ([self._compile_metrics] if self._compile_metrics is not None else [])

    def update_compiled_metrics(self, labels, embedding):
        """Updates the metrics of `compile(metrics=...)` with a batch's (labels, embeddings)."""
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(labels, embedding)

    def compute_loss_for_learner(self, labels, z, learner):
        """(learner loss, overlap penalty) for one batch; conquered: loss on normalize(z)."""
        conquered = tf.cast(self.conquered, tf.bool)
        sub = self.subspaces.learner_embedding(z, learner)
        full = tf.math.l2_normalize(tf.cast(z, tf.float32), axis=-1)
        embedding = tf.where(conquered, full, sub)
        loss = self._learner_loss(labels, embedding, self._beta_slot(learner))
        overlap = self.subspaces.overlap_penalty() * (1.0 - tf.cast(conquered, tf.float32))
        return loss, overlap

    def train_step(self, data):
        x, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        learner = _learner(x)
        encoder_vars = self.encoder.trainable_variables
        mask_vars = [self.subspaces.masks] if self.mask_optimizer is not None else []
        beta_vars = [self.margin_betas] if self.beta_optimizer is not None else []
        groups = [(self.optimizer, encoder_vars)]
        if mask_vars:
            groups.append((self.mask_optimizer, mask_vars))
        if beta_vars:
            groups.append((self.beta_optimizer, beta_vars))
        scaled = any(_loss_scaled(optimizer) for optimizer, _ in groups)
        # Each optimizer scales the loss by its own factor, so with loss scaling each group of
        # variables takes its gradient from its own scaled loss (the tape is read twice).
        with tf.GradientTape(persistent=scaled and len(groups) > 1) as tape:
            f, z = self.encoder(_images(x), training=True)
            labels, z = gather_global_batch(labels, z)
            loss, overlap = self.compute_loss_for_learner(labels, z, learner)
            # As Keras does under tf.distribute, each replica's loss is scaled by
            # 1/num_replicas: the optimizer sums the replicas' gradients, and all_gather's
            # gradient sums their embedding gradients, so the update equals one device's on the
            # global batch.
            total = (loss + overlap) / _num_replicas()
            # Under mixed precision, as Keras's own train_step: the LossScaleOptimizer scales
            # the loss before the float16 backward pass and unscales the gradients it applies.
            targets = [optimizer.scale_loss(total) for optimizer, _ in groups] if scaled else []
        if scaled:
            grads = [g for (_, variables), target in zip(groups, targets)
                     for g in tape.gradient(target, variables)]
        else:
            grads = tape.gradient(total, encoder_vars + mask_vars + beta_vars)
        self.nonfinite_tracker.update_state(
            1.0 - tf.cast(_step_finite(z, total, grads, groups), tf.float32))
        self.apply_learner_gradients(grads, encoder_vars, mask_vars, beta_vars, learner)
        bank = self.feature_bank
        if bank is not None and isinstance(x, dict) and "indices" in x and _num_replicas() == 1:
            bank.write(x["indices"], f)
        self.loss_tracker.update_state(loss)
        self.overlap_tracker.update_state(overlap)
        self.update_compiled_metrics(labels, self.subspaces(z))
        return self.get_metrics_result()

    def apply_learner_gradients(self, grads, encoder_vars, mask_vars, beta_vars=(),
                                learner=None):
        """Coupled L2 on encoder weights and masks, then one optimizer step each for encoder,
        masks and learned betas (the batch's `learner`'s); the backbone's step is undone
        while it is frozen (`freeze_backbone`)."""
        n, m = len(encoder_vars), len(mask_vars)
        frozen = self.__dict__.get("_backbone_frozen")
        backbone = self.backbone_variables() if frozen is not None else []
        before = [tf.identity(v) for v in backbone]
        self.optimizer.apply(_coupled_l2(grads[:n], encoder_vars, self.weight_decay),
                             encoder_vars)
        for variable, value in zip(backbone, before):
            variable.assign(tf.where(frozen, value, variable))
        if mask_vars:
            self.mask_optimizer.apply(
                _coupled_l2(grads[n:n + m], mask_vars, self.mask_weight_decay), mask_vars)
        if beta_vars:
            self._apply_beta_gradient(grads[n + m], learner)

    def _learner_loss(self, labels, embedding, beta_slot):
        """The compiled loss; with learned betas, at the beta in `beta_slot`."""
        if self.beta_optimizer is None:
            return self.learner_loss(labels, embedding)
        return self.learner_loss(labels, embedding,
                                 beta=tf.gather(self.margin_betas, beta_slot))

    def _beta_slot(self, learner):
        """The batch's beta: its learner's, or once conquered the last one."""
        return tf.where(tf.cast(self.conquered, tf.bool), self.subspaces.max_learners,
                        tf.cast(learner, tf.int32))

    def _apply_beta_gradient(self, grad, learner):
        """Steps the beta the batch used and no other: as PyTorch's Adam skips a parameter
        without a gradient, the other slots do not drift on their momentum."""
        used = tf.one_hot(self._beta_slot(learner), self.subspaces.max_learners + 1,
                          on_value=True, off_value=False)
        before = tf.identity(self.margin_betas)
        self.beta_optimizer.apply([grad], [self.margin_betas])
        self.margin_betas.assign(tf.where(used, self.margin_betas, before))

    @property
    def backbone_frozen(self):
        """Whether the backbone's learning rate is 0 now (see `freeze_backbone`)."""
        frozen = self.__dict__.get("_backbone_frozen")
        return frozen is not None and bool(frozen.numpy())

    def backbone_variables(self):
        """The encoder's trainable variables before its linear "embedding" layer."""
        try:
            head = {id(v) for v in self.encoder.get_layer("embedding").trainable_variables}
        except ValueError:
            raise ValueError("freeze_backbone needs an encoder whose linear embedding layer is "
                             "named 'embedding' (dnc_keras.backbones.build_encoder)") from None
        return [v for v in self.encoder.trainable_variables if id(v) not in head]

    def freeze_backbone(self, frozen):
        """Sets the backbone's learning rate to 0 (True) or back (False), as TPAMI does on the
        epochs that re-cluster: the embedding layer and the masks still train, and Adam's moments
        of the backbone still update (PyTorch's Adam at lr 0), but its weights stay put."""
        if self.__dict__.get("_backbone_frozen") is None:
            self.backbone_variables()  # fails early on an encoder without an embedding layer
            if self.distribute_strategy.num_replicas_in_sync > 1:
                raise ValueError("freeze_backbone is not supported under a multi-replica "
                                 "strategy")
            # Outside Keras's tracking, like the feature bank: a switch of the schedule, not a
            # weight; a variable, so the traced train step reads its current value.
            self.__dict__["_backbone_frozen"] = tf.Variable(False, trainable=False)
            if self.train_function is not None:
                self.make_train_function(force=True)
        self.__dict__["_backbone_frozen"].assign(bool(frozen))

    def test_step(self, data):
        x, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        embedding = self(x, training=False)
        # The inference embedding: the conquered one's beta, if learned.
        loss = self._learner_loss(labels, embedding, self.subspaces.max_learners)
        self.loss_tracker.update_state(loss)
        self.update_compiled_metrics(labels, embedding)
        results = {"loss": self.loss_tracker.result()}
        if self._compile_metrics is not None:
            results.update(self._compile_metrics.result())
        return results

    # -- divide and conquer ---------------------------------------------------------------
    @property
    def feature_bank(self):
        """The `FeatureBank` the train steps write to, or None (see `attach_feature_bank`)."""
        return self.__dict__.get("_feature_bank")

    def attach_feature_bank(self, bank):
        """From the next `fit`/train step on, each step stores its batch's backbone features
        in `bank` at the batch's `"indices"` (one device only; under a multi-replica strategy
        nothing is stored and re-clustering embeds every image). None detaches."""
        # Kept out of Keras's tracking: the bank is training-set state, not a model weight, and
        # must not enter checkpoints or exports.
        self.__dict__["_feature_bank"] = bank
        # The train function branches on the bank when traced: make a new one (fit reads
        # `train_function` at every step, so this also works from `on_train_begin`).
        if self.train_function is not None:
            self.make_train_function(force=True)

    @property
    def active_learners(self):
        return int(self.subspaces.active_learners.numpy())

    def divide(self):
        """Doubles the learners; the children's masks restart their optimizer slots."""
        k = self.active_learners
        self.subspaces.divide()
        if self.margin_betas is not None:
            inherited = tf.concat([tf.repeat(tf.range(k), 2),
                                   tf.range(2 * k, self.subspaces.max_learners + 1)], 0)
            shape = tuple(self.margin_betas.shape)
            moments = [v for v in (self.beta_optimizer.variables if self.beta_optimizer else [])
                       if tuple(v.shape) == shape]
            for v in [self.margin_betas] + moments:
                v.assign(tf.gather(v, inherited))
        if self.mask_optimizer is not None and self.mask_optimizer.built:
            shape = tuple(self.subspaces.masks.shape)
            for v in self.mask_optimizer.variables:
                if tuple(v.shape) == shape:
                    v.assign(tf.zeros_like(v))
            self.mask_optimizer.iterations.assign(0)

    def conquer(self):
        """From now on the loss sees the full embedding; masks freeze."""
        self.conquered.assign(1)
        if self.mask_optimizer is not None:
            self.mask_optimizer.learning_rate = 0.0

    @property
    def is_conquered(self):
        return bool(self.conquered.numpy())

    def embed(self, images, output="embedding", batch_size=256):
        """L2-normalised `"embedding"` (what predict returns) or backbone `"features"` f.

        A dataset's worth takes a while: a progress bar shows on a terminal (dnc_keras.progress).
        """
        if output not in ("embedding", "features"):
            raise ValueError(f"output must be 'embedding' or 'features'; got {output!r}")
        fn = self._embed_fn(output)
        chunks = []
        with progress.bar(total=len(images), desc=f"embedding ({output})", unit="img") as bar:
            for i in range(0, len(images), batch_size):
                chunks.append(fn(tf.constant(images[i:i + batch_size], tf.float32)).numpy())
                bar.update(len(chunks[-1]))
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)

    def _embed_fn(self, output):
        cache = self.__dict__.setdefault("_embed_fns", {})
        if output not in cache:
            @tf.function(reduce_retracing=True)
            def fn(images):
                f, z = self.encoder(images, training=False)
                if output == "features":
                    return tf.math.l2_normalize(tf.cast(f, tf.float32), axis=-1)
                return self.subspaces(z)
            cache[output] = fn
        return cache[output]

    def get_config(self):
        config = super().get_config()
        config.update(encoder=keras.saving.serialize_keras_object(self.encoder),
                      subspaces=keras.saving.serialize_keras_object(self.subspaces),
                      mask_lr_multiplier=self.mask_lr_multiplier, weight_decay=self.weight_decay,
                      mask_weight_decay=self.mask_weight_decay,
                      learned_beta=self.learned_beta,
                      preprocessing=None if self.preprocessing is None
                      else self.preprocessing.to_dict())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["subspaces"] = keras.saving.deserialize_keras_object(config["subspaces"])
        return cls(**config)


def gather_global_batch(labels, z):
    """Labels and embeddings of the global batch: all replicas' shards, in replica order.

    Metric learning mines pairs and triplets across the whole batch, so under `tf.distribute`
    every replica all-gathers the shards (differentiably) and computes the loss on the global
    batch, as one device would. Outside a multi-replica strategy, returns its inputs.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return labels, z
    # identity places the labels on the replica's device; straight from a multi-worker input
    # pipeline they have none, and all_gather needs one.
    labels = tf.identity(labels)
    return context.all_gather(labels, axis=0), context.all_gather(z, axis=0)


def _coupled_l2(grads, variables, decay):
    """grad + decay * variable (PyTorch's Adam `weight_decay`). The optimizer sums the replicas'
    gradients, so each replica adds its share of the L2."""
    decay = decay / _num_replicas()
    return [g if g is None or not decay else g + decay * v for g, v in zip(grads, variables)]


def _num_replicas():
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def _images(inputs):
    return inputs["images"] if isinstance(inputs, dict) else inputs


def _learner(inputs):
    if isinstance(inputs, dict) and "learner" in inputs:
        return tf.reshape(inputs["learner"], [-1])[0]
    return tf.constant(0, tf.int32)


def _loss_scaled(optimizer):
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def _step_finite(z, total, grads, groups):
    """Whether a step's embeddings, loss and gradients count as finite for `nonfinite`.

    Non-finite embeddings or loss always count. A non-finite gradient of variables whose
    optimizer is a `LossScaleOptimizer` with a loss scale above 1 does not: it is the overflow
    that loss scaling expects now and then, and that optimizer skips the step and halves its
    scale. At a scale of 1 or below the loss was not enlarged, so the gradient itself is
    non-finite, and it counts (after at most log2(initial scale) skipped steps).
    """
    finite = [tf.reduce_all(tf.math.is_finite(tf.cast(z, tf.float32))),
              tf.reduce_all(tf.math.is_finite(total))]
    start = 0
    for optimizer, variables in groups:
        group = [g for g in grads[start:start + len(variables)] if g is not None]
        start += len(variables)
        if not group:
            continue
        group_finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in group])
        if _loss_scaled(optimizer):
            scale = optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale
            group_finite = tf.logical_or(group_finite, tf.convert_to_tensor(scale) > 1.0)
        finite.append(group_finite)
    return tf.reduce_all(finite)


def _scaled_copy(optimizer, multiplier):
    if _loss_scaled(optimizer):
        return keras.optimizers.LossScaleOptimizer(
            _scaled_copy(optimizer.inner_optimizer, multiplier),
            initial_scale=optimizer.initial_scale,
            dynamic_growth_steps=optimizer.dynamic_growth_steps,
            name="mask_loss_scale_optimizer")
    config = optimizer.get_config()
    rate = config["learning_rate"]
    if not isinstance(rate, (int, float)):
        raise ValueError("With a learning-rate schedule, pass mask_optimizer explicitly")
    config.update(learning_rate=rate * multiplier, name="mask_optimizer")
    return optimizer.__class__.from_config(config)
